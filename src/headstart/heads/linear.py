r"""Linear head and its fitter: multinomial logistic regression on standardised features.

Head: :math:`\text{logits} = W \, \frac{x - \mu}{\sigma} + b`, ``W: (K, D)``, ``b: (K,)``.

Fitter (:func:`fit_linear`): the standardisation is fitted on ``X_train``, then
:math:`W, b` minimise scikit-learn's ``LogisticRegression`` objective, written per sample

.. math::

    \mathcal{L}(W, b) = \frac{1}{n} \sum_{i=1}^{n} s_{y_i} \, \mathrm{CE}(W z_i + b,\ y_i)
                        + \frac{1}{2 C n} \lVert W \rVert_F^2

(the intercept is not penalised; :math:`s_k` are the class weights, 1 by default), with full-batch
L-BFGS (strong Wolfe line search) in torch, float32. Why torch and not sklearn: on 10k x 1280
features both reach the same optimum in about the same time for one ``C``, but torch needs no
float64 copy, writes straight into the ``nn.Linear``, and warm-starts a path over ``C``: with a
validation set, ``C`` runs through ``Cs`` from strongest to weakest penalty, each fit starting
from the previous optimum (a handful of iterations each), and the ``C`` with the best validation
accuracy (ties: lower validation loss) is kept. Without one, ``C = 1`` (scikit-learn's default).

Example::

    head, history = fit_head("linear", X_train, y_train, X_val, y_val, num_classes=10)
    logits = head(torch.as_tensor(X_test))
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, as_features, as_labels, create_head, register_head, resolve_class_weight

log = logging.getLogger(__name__)

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def _evaluate(fc: nn.Linear, z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = fc(z)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def fit_linear(
    X_train: Any,
    y_train: Any,
    X_val: Any = None,
    y_val: Any = None,
    *,
    num_classes: int,
    seed: int = 0,
    class_weight: Any = None,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 100,
    tol: float = 1e-4,
    hidden: int = 256,
    dropout: float = 0.3,
) -> tuple[nn.Module, list[dict]]:
    """Fit a linear head (standardisation + multinomial logistic regression) on feature arrays.

    ``C`` fixes the inverse penalty; otherwise it is chosen from ``Cs`` on ``(X_val, y_val)`` when
    given, else 1.0. ``max_iter`` and ``tol`` (on the largest gradient entry) bound each L-BFGS
    run. Returns ``(head, history)``: one history row per ``C`` tried, with ``C``, ``iterations``,
    ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``seconds`` and ``selected``
    (losses are plain, unweighted, unpenalised cross-entropy). ``seed`` is accepted for a uniform
    signature; the fit starts from zeros and is deterministic.
    """
    del seed
    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train")
    has_val = X_val is not None and y_val is not None
    if has_val:
        xv = as_features(X_val, "X_val")
        yv = as_labels(y_val, len(xv), num_classes, "y_val")
    if C is not None:
        path = [float(C)]
    elif has_val:
        path = sorted(float(c) for c in Cs)
    else:
        path = [1.0]
    if any(c <= 0 for c in path):
        raise ValueError(f"C must be positive; got {path}.")

    head = create_head("linear", x.shape[1], num_classes, hidden=hidden, dropout=dropout)
    head.norm.fit_(x)
    z = head.norm(x)
    zv = head.norm(xv) if has_val else None
    fc: nn.Linear = head.fc
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    cw = resolve_class_weight(class_weight, y, num_classes)
    sample_w = cw[y] if cw is not None else None
    n = len(y)

    history: list[dict] = []
    best: tuple[float, float] | None = None  # (-val_acc, val_loss)
    best_idx = len(path) - 1
    best_state: dict[str, torch.Tensor] | None = None
    for c in path:
        t0 = time.perf_counter()
        lam = 1.0 / (c * n)
        opt = torch.optim.LBFGS(
            fc.parameters(), lr=1.0, max_iter=max_iter, history_size=10,
            tolerance_grad=tol, tolerance_change=1e-9, line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            ce = F.cross_entropy(fc(z), y, reduction="none")
            data = (ce * sample_w).sum() / n if sample_w is not None else ce.mean()
            loss = data + 0.5 * lam * fc.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        iters = int(opt.state[fc.weight].get("n_iter", 0))
        tr_loss, tr_acc = _evaluate(fc, z, y)
        row = {"C": c, "iterations": iters, "train_loss": tr_loss, "train_acc": tr_acc,
               "val_loss": None, "val_acc": None, "seconds": time.perf_counter() - t0, "selected": False}
        if has_val:
            row["val_loss"], row["val_acc"] = _evaluate(fc, zv, yv)
            key = (-row["val_acc"], row["val_loss"])
            if best is None or key < best:
                best, best_idx = key, len(history)
                best_state = {k: v.detach().clone() for k, v in fc.state_dict().items()}
        history.append(row)
        if iters >= max_iter:
            log.info("L-BFGS reached max_iter=%d at C=%g before converging (tol=%g)", max_iter, c, tol)

    if best_state is not None and len(path) > 1:
        fc.load_state_dict(best_state)
        log.debug("linear head: chose C=%g on validation", history[best_idx]["C"])
    for i, row in enumerate(history):
        row["selected"] = i == best_idx
    return head.eval(), history


@register_head("linear", aliases=("logreg",), fit=fit_linear)
class LinearHead(Head):
    """Standardisation then one ``nn.Linear(in_features, num_classes)``; ``hidden``/``dropout`` are unused."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.3):
        super().__init__(in_features, num_classes, hidden=hidden, dropout=dropout)
        self.fc = nn.Linear(self.in_features, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))
