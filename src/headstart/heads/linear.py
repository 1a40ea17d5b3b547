r"""Linear head and its fitter: multinomial logistic regression on centred, scaled features.

Head: :math:`\text{logits} = W \, \frac{x - \mu}{s} + b`, ``W: (K, D)``, ``b: (K,)``; :math:`\mu` the
training mean of each feature, :math:`s` one common scale, the root-mean-square feature standard
deviation :math:`\sqrt{\frac1D \sum_j \sigma_j^2}` (kept in the :class:`~.base.Standardize` buffers).

Fitter (:func:`fit_linear`): :math:`W, b` minimise scikit-learn's ``LogisticRegression`` objective,
written per sample

.. math::

    \mathcal{L}_C(W, b) = \frac{1}{n} \sum_{i=1}^{n} s_{y_i} \, \mathrm{CE}(W z_i + b,\ y_i)
                          + \frac{1}{2 C n} \lVert W \rVert_F^2

(the intercept is not penalised; :math:`s_k` are the class weights, 1 by default), with full-batch
L-BFGS (strong Wolfe line search) in torch, float32, gradient written out.

Why one common scale, not per-feature standardisation: it keeps the backbone's relative feature
scales (as scikit-learn's ``LogisticRegression()`` on raw features does), so the penalty falls
hardest on the weak, low-variance features, while ``C`` keeps one meaning across backbones.
Measured on EfficientNet-Lite0 features (96 px) of MNIST-5k (1,000 train / 500 val / 3,500 test,
4 seeded splits): per-feature standardisation 0.835-0.897 test accuracy (0.890-0.901 even at the
``C`` best for the test set; on one split, features near-constant in training blown up to unit
variance sent the validation loss to 6.2 and the choice to ``C = 3e-4``), one common scale
0.902-0.908, ``LogisticRegression()`` 0.901-0.906.

Choosing ``C``: the path runs through ``Cs`` (13 half-decades, :math:`10^{-4} \ldots 10^{2}`) from
the strongest penalty to the weakest, each fit warm-started from the previous one, and keeps the
``C`` with the lowest held-out log-loss

.. math::

    \ell(C) = \frac{\sum_i s_{y_i} \, \mathrm{CE}_i(C)}{\sum_i s_{y_i}}

(``F.cross_entropy(logits, y, weight=s)``, the training loop's validation loss); ties go to the
stronger penalty. Held out means:

- the validation split, when every class has at least ``MIN_VAL_PER_CLASS`` = 50 items there
  (``selection="val_logloss"``);
- otherwise (small or no validation split) stratified ``k``-fold cross-validation on the training
  split, ``k = min(5, smallest class)``, folds seeded with ``seed``, :math:`\ell(C)` pooled over all
  out-of-fold predictions, then the whole training split refitted at the chosen ``C``, as
  scikit-learn's ``LogisticRegressionCV`` does (``selection="cv5_logloss"``, ``cv3_...``). The
  folds share the training split's centring (no effect on the optimum: the intercept is free) and
  scale (within a few per cent of a fold's own, against the grid's factor of 3.2).
- With one training item in some class, no choice: ``C = 1`` (``selection="default"``).

The ``k`` fold problems and the whole-split problem advance along the path together, as one
block-diagonal problem (one ``(n, D) @ (D, (k+1)K)`` product per L-BFGS step instead of ``k + 1``
thin ones); each step stops at ``PATH_MAX_ITER`` = 15 iterations or a largest gradient entry of
``PATH_TOL`` = 1e-3, since the path only ranks the ``C``. The kept fit then runs on alone until its
largest gradient entry is below ``tol`` = 1e-4 (up to ``max_iter`` = 1000 iterations; a warning
otherwise).

Why log-loss and not accuracy: accuracy moves in steps of one image and is flat in ``C`` once the
classes separate; on a 10-class set of 225 validation images it chose ``C = 10`` over ``C = 0.01``
for one image (0.831 vs 0.827), handing fine-tuning a head with training loss 0.0005 and validation
loss 1.03 (``C = 0.01``: 0.53). The log-loss sees the over-confidence. A one-standard-error rule
(the strongest penalty whose out-of-fold loss is within one paired standard error of the best) was
measured and not adopted: over 18 cross-validated fits (digits, BreastMNIST, MNIST-5k; EfficientNet
features and raw pixels; 3 splits each) it never raised test accuracy, lowered it in 6 (mean 0.8844
vs 0.8860) and raised the mean test log-loss (0.3160 vs 0.3145).

The selected history row carries ``val_ece``: the expected calibration error (15 equal-width bins
of top-label confidence) of the chosen ``C`` on the validation split, or out of fold when ``C`` was
cross-validated. It is computed here (:func:`_ece`) because ``heads`` sits below ``evaluate`` and
does not import it; it equals :func:`headstart.evaluate.metrics.expected_calibration_error`
(``tests/test_heads.py``).

Cost, measured on 1,000 x 1,280 EfficientNet-Lite0 features (MNIST-5k), 10 classes, on this
project's 2-core CPU while other jobs kept its load average near 6 (so wall time ran at about twice
the CPU time): cross-validated, 4.4-7.4 s CPU (9-18 s wall); with a 500-item validation split,
1.9-2.1 s CPU (4.2-4.5 s wall). Nearly all of it is the two ``(n, D) x (D, (k+1)K)`` products per
L-BFGS step. Not counted: a process's first L-BFGS step imports ``torch._dynamo`` and the first
cross-validation imports scikit-learn (seconds, once).

Example::

    head, history = fit_head("linear", X_train, y_train, X_val, y_val, num_classes=10)
    logits = head(torch.as_tensor(X_test))
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .base import Head, Standardize, as_features, as_labels, create_head, register_head, resolve_class_weight

log = logging.getLogger(__name__)

#: The inverse penalties tried, in half-decades: 1e-4, 3.2e-4, ..., 1e2.
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))
#: A validation split with fewer items than this in some class is too small to choose ``C`` on.
MIN_VAL_PER_CLASS = 50
#: Folds of the cross-validation used otherwise (fewer when the smallest class is smaller).
CV_FOLDS = 5
#: L-BFGS limits along the path (they only rank the ``C``); the kept fit then runs on to ``tol``.
PATH_MAX_ITER, PATH_TOL = 15, 1e-3
#: Equal-width confidence bins of the reported expected calibration error.
ECE_BINS = 15


@torch.no_grad()
def _fit_scale(norm: Standardize, x: torch.Tensor) -> Standardize:
    """Centre every feature; divide all by one scale, the root-mean-square feature standard deviation."""
    var, mean = torch.var_mean(x.double(), dim=0, correction=0)
    s = float(var.mean().sqrt())
    norm.mean.copy_(mean.to(norm.mean.dtype))
    norm.std.fill_(s if s > 1e-12 else 1.0)
    return norm


def _lbfgs(W: torch.Tensor, b: torch.Tensor, z: torch.Tensor, y: torch.Tensor, m: torch.Tensor, lam: torch.Tensor,
           max_iter: int, tol: float) -> int:
    r"""Minimise :math:`\sum_p \sum_i m_{pi} \mathrm{CE}(W_p z_i + b_p, y_i) + \frac{\lambda_p}{2} \lVert W_p \rVert^2`
    from the current ``W`` ``(P*K, D)``, ``b`` ``(P, K)``; ``m`` ``(P, n)``, ``lam`` ``(P,)``. Returns the iterations run.

    The ``P`` problems are independent; solving them as one (block-diagonal) problem costs one
    ``(n, D) @ (D, P*K)`` product per step instead of ``P`` thin ones. The gradient is written out
    (:math:`\partial / \partial \text{logits} = m \, (\mathrm{softmax} - \mathrm{onehot})`).
    """
    n, (P, K) = len(y), b.shape
    rows, mt, lam_rows = torch.arange(n), m.t()[:, :, None], lam.repeat_interleave(K)[:, None]
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=10,
                            tolerance_grad=tol, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure() -> torch.Tensor:
        logp = (z @ W.t()).view(n, P, K).add_(b).log_softmax(-1)
        r = logp.exp()
        r[rows, :, y] -= 1
        r *= mt
        W.grad = torch.addmm(lam_rows * W, r.view(n, P * K).t(), z)
        b.grad = r.sum(0)
        return -(logp[rows, :, y] * mt[..., 0]).sum() + 0.5 * (lam_rows * W.square()).sum()

    opt.step(closure)
    return int(opt.state[W].get("n_iter", 0))


@torch.no_grad()
def _scores(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per item ``(3, n)``: cross-entropy, top-label confidence, and whether the top label is right (0/1)."""
    logp = logits.log_softmax(1)
    top, pred = logp.max(1)
    return torch.stack([-logp.gather(1, y[:, None]).squeeze(1), top.exp(), (pred == y).float()])


def _loss(nll: torch.Tensor, w: torch.Tensor | None) -> float:
    """Mean cross-entropy, weighted by the items' class weights as ``F.cross_entropy(weight=...)`` does."""
    return float(nll.mean()) if w is None else float((nll * w).sum() / w.sum())


def _ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins ``((b-1)/B, b/B]`` of top-label confidence.

    The same number as :func:`headstart.evaluate.metrics.expected_calibration_error`, written on
    (confidence, correctness) pairs because ``heads`` does not import from ``evaluate``.
    """
    b = (conf.double() * n_bins).ceil().long().sub(1).clamp(0, n_bins - 1)
    gap = torch.bincount(b, weights=correct.double(), minlength=n_bins) - torch.bincount(b, weights=conf.double(), minlength=n_bins)
    return float(gap.abs().sum() / len(conf))


def _folds(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Stratified ``k``-fold assignment: the fold (0..k-1) in which each item is held out."""
    from sklearn.model_selection import StratifiedKFold

    fold = torch.empty(len(y), dtype=torch.long)
    for f, (_, held) in enumerate(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())):
        fold[torch.as_tensor(held)] = f
    return fold


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
    max_iter: int = 1000,
    tol: float = 1e-4,
    hidden: int = 256,
    dropout: float = 0.3,
) -> tuple[nn.Module, list[dict]]:
    """Fit a linear head (centring and one common scale + multinomial logistic regression) on feature arrays.

    ``C`` fixes the inverse penalty (``selection="fixed"``). Otherwise ``C`` is chosen from ``Cs``
    by held-out log-loss (ties: the stronger penalty): on ``(X_val, y_val)`` when every class has at
    least ``MIN_VAL_PER_CLASS`` = 50 items there (``"val_logloss"``), else by stratified ``k``-fold
    cross-validation on the training split (``"cv5_logloss"``; ``k = min(5, smallest class)``,
    folds seeded with ``seed``) and a refit on the whole training split; ``"default"`` (``C = 1``)
    when a class has a single training item. See the module docstring. Along the path each L-BFGS
    run stops at ``PATH_MAX_ITER`` iterations or gradient ``PATH_TOL``; the kept fit then runs on
    until its largest gradient entry is below ``tol`` (at most ``max_iter`` more iterations).

    Returns ``(head, history)``: one row per ``C`` (fitted on the whole training split) with ``C``,
    ``iterations``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (``None`` without a
    validation split), ``cv_loss``, ``cv_acc`` (pooled out-of-fold; ``None`` unless
    cross-validated), ``seconds``, ``selection`` (how ``C`` was chosen), ``selected``, and
    ``val_ece`` (selected row only: the ECE, 15 bins, on validation, or out-of-fold when
    cross-validated). Losses are cross-entropy weighted by ``class_weight`` as in the training
    loop's (plain when ``None``), without the penalty.
    """
    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train")
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if has_val:
        xv = as_features(X_val, "X_val")
        yv = as_labels(y_val, len(xv), num_classes, "y_val")
    path = [float(C)] if C is not None else sorted(float(c) for c in Cs)
    if not path or any(not c > 0 for c in path):
        raise ValueError(f"C and Cs must hold positive inverse penalties (e.g. Cs=np.logspace(-4, 2, 13)); got {path}.")
    if len(x) == 0:
        raise ValueError("X_train has no rows; the linear head needs training items.")
    counts = torch.bincount(y, minlength=num_classes)
    present = counts > 0
    smallest = int(counts[present].min())
    folds = 0
    if len(path) == 1:
        selection = "fixed"
    elif has_val and int(torch.bincount(yv, minlength=num_classes)[present].min()) >= MIN_VAL_PER_CLASS:
        selection = "val_logloss"
    elif smallest >= 2:
        folds = min(CV_FOLDS, smallest)
        selection = f"cv{folds}_logloss"
    else:
        log.info("linear head: %d training item in the smallest class, too few to cross-validate; C=1", smallest)
        path, selection = [1.0], "default"

    head = create_head("linear", x.shape[1], num_classes, hidden=hidden, dropout=dropout)
    z = _fit_scale(head.norm, x)(x)
    zv = head.norm(xv) if has_val else None
    cw = resolve_class_weight(class_weight, y, num_classes)
    w = cw[y] if cw is not None else None
    wv = cw[yv] if cw is not None and has_val else None
    # problems solved together along the path: the k folds (their held-out items masked out), then the whole split
    n, K = len(y), num_classes
    fold = _folds(y, folds, seed) if folds else None
    m = torch.ones(folds + 1, n)
    if folds:
        m[:folds][torch.arange(folds)[:, None] == fold] = 0.0
    n_p = m.sum(1)
    m = m / n_p[:, None] * (w if w is not None else 1.0)  # per item: s_y / n_p, 0 where held out
    W = torch.zeros((folds + 1) * K, x.shape[1], requires_grad=True)
    b = torch.zeros(folds + 1, K, requires_grad=True)

    history: list[dict] = []
    best, best_loss, held = 0, float("inf"), None
    for j, c in enumerate(path):
        t0 = time.perf_counter()
        iters = _lbfgs(W, b, z, y, m, 1.0 / (c * n_p), min(max_iter, PATH_MAX_ITER), max(tol, PATH_TOL))
        with torch.no_grad():
            logits = (z @ W.t()).view(n, folds + 1, K) + b
            tr = _scores(logits[:, -1], y)
            va = _scores(zv @ W[-K:].t() + b[-1], yv) if has_val else None
            oof = _scores(logits[torch.arange(n), fold], y) if folds else None
        row = {"C": c, "iterations": iters, "train_loss": _loss(tr[0], w), "train_acc": float(tr[2].mean()),
               "val_loss": _loss(va[0], wv) if has_val else None, "val_acc": float(va[2].mean()) if has_val else None,
               "cv_loss": _loss(oof[0], w) if folds else None, "cv_acc": float(oof[2].mean()) if folds else None,
               "seconds": time.perf_counter() - t0, "selection": selection, "selected": False, "val_ece": None}
        history.append(row)
        crit = row["cv_loss"] if folds else row["val_loss"] if selection == "val_logloss" else 0.0
        if j == 0 or crit < best_loss:  # strict: among ties the stronger penalty, met first, stays
            best, best_loss, held = j, crit, oof if folds else None
            kept = (W[-K:].detach().clone(), b[-1:].detach().clone())

    chosen = history[best]
    Wk, bk = (t.requires_grad_() for t in kept)
    more = _lbfgs(Wk, bk, z, y, m[-1:], torch.tensor([1.0 / (chosen["C"] * n)]), max_iter, tol)
    if more >= max_iter:
        log.warning("linear head: L-BFGS stopped at max_iter=%d before its gradient reached tol=%g (C=%g); raise max_iter", max_iter, tol, chosen["C"])
    with torch.no_grad():
        head.fc.weight.copy_(Wk)
        head.fc.bias.copy_(bk[0])
        tr = _scores(head.fc(z), y)
        va = _scores(head.fc(zv), yv) if has_val else None
    chosen.update(iterations=chosen["iterations"] + more, train_loss=_loss(tr[0], w), train_acc=float(tr[2].mean()), selected=True)
    if has_val:
        chosen.update(val_loss=_loss(va[0], wv), val_acc=float(va[2].mean()))
    if held is not None:
        chosen["val_ece"] = _ece(held[1], held[2])
    elif has_val:
        chosen["val_ece"] = _ece(va[1], va[2])
    log.debug("linear head: C=%g (%s)", chosen["C"], selection)
    return head.eval(), history


@register_head("linear", aliases=("logreg",), fit=fit_linear)
class LinearHead(Head):
    """:class:`~.base.Standardize` (set by :func:`fit_linear` to centring and one common scale) then one
    ``nn.Linear(in_features, num_classes)``; ``hidden``/``dropout`` are unused."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.3):
        super().__init__(in_features, num_classes, hidden=hidden, dropout=dropout)
        self.fc = nn.Linear(self.in_features, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))
