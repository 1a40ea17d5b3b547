r"""Ensemble heads on cached features (``fit --head bagging|boosting|stacking --strategy linear``).

Fit with scikit-learn, saved without pickles: each fitted model's parameters are exported into the
head's buffers (safetensors, like every head), and the head computes the same probabilities in
torch. A fitted model whose parameters cannot be exported is refused, never pickled.

- ``bagging`` (Breiman 1996): ``BaggingClassifier`` over ``N_BAGS`` logistic regressions, each on a
  bootstrap sample of the training items and ``BAG_FEATURES`` of the features; probabilities are
  the members' mean (``W: (E, K, D)``, zero where a member does not see a feature; a class absent
  from a member's sample gets probability 0 from it, as scikit-learn does). The regularisation is
  the probe's (:func:`~.linear.fit_linear` chooses ``C`` on validation first).
- ``boosting``: ``HistGradientBoostingClassifier`` (gradient-boosted trees, Friedman 2001; LightGBM-
  style histograms), early stopping on the validation split when given. Every tree's nodes
  (feature, threshold, children, leaf value) are exported; the head walks them in torch, so its
  raw scores equal scikit-learn's ``decision_function`` (binary: one tree per round, logits
  ``(0, raw)``).
- ``stacking`` (Wolpert 1992): the linear probe and the boosted trees, combined by a multinomial
  logistic regression on their log-probabilities; the combiner is fit on out-of-fold predictions
  of the training split (5-fold, as scikit-learn's ``StackingClassifier``), the members then on all
  of it.

Every head standardises with the probe's common scale first (see :mod:`.linear`). The forward pass
returns log-probabilities, so ``softmax`` of it is the ensemble's probabilities and the run's
metrics, calibration and report are computed as for any head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Head, as_features, as_labels, register_head

N_BAGS = 10
BAG_FEATURES = 0.5  # of the features per member: bootstrap samples alone make near-identical linear members
BOOST_ROUNDS = 200  # at most; stopped earlier by the validation loss when there is a validation split


class _Resizable(Head):
    """A head whose buffers take the shapes of the ``state_dict`` loaded into it (fitted sizes are not in its config)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name, buf in list(self._buffers.items()):
            incoming = state_dict.get(prefix + name)
            if incoming is not None and buf is not None and incoming.shape != buf.shape:
                self._buffers[name] = torch.empty_like(incoming, dtype=buf.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_head("bagging")
class BaggingHead(_Resizable):
    def __init__(self, in_features: int, num_classes: int, **kw: Any):
        super().__init__(in_features, num_classes, **kw)
        self.register_buffer("weight", torch.zeros(1, num_classes, in_features))
        self.register_buffer("bias", torch.zeros(1, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bd,ekd->bek", self.norm(x), self.weight) + self.bias  # (B, E, K); absent classes: bias -inf
        return torch.log(torch.softmax(z, 2).mean(1).clamp_min(1e-30))


@register_head("boosting")
class BoostingHead(_Resizable):
    """Trees as padded node tables ``(T, N)``: ``feature``, ``threshold``, ``left``, ``right``, ``leaf``, ``value``;
    tree ``t`` adds to class ``tree_class[t]``; ``baseline`` the initial raw score per class."""

    def __init__(self, in_features: int, num_classes: int, **kw: Any):
        super().__init__(in_features, num_classes, **kw)
        for name, dtype in (("feature", torch.long), ("left", torch.long), ("right", torch.long), ("leaf", torch.bool),
                            ("threshold", torch.float64), ("value", torch.float64)):
            self.register_buffer(name, torch.zeros(1, 1, dtype=dtype))
        self.register_buffer("tree_class", torch.zeros(1, dtype=torch.long))
        self.register_buffer("baseline", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("depth", torch.zeros((), dtype=torch.long))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` raw scores (scikit-learn's ``decision_function``; ``R`` 1 for two classes)."""
        z = self.norm(x).double()
        b, t = z.shape[0], self.feature.shape[0]
        node = torch.zeros(b, t, dtype=torch.long, device=z.device)
        trees = torch.arange(t, device=z.device)[None].expand(b, t)
        for _ in range(int(self.depth) + 1):
            leaf = self.leaf[trees, node]
            go_left = z.gather(1, self.feature[trees, node]) <= self.threshold[trees, node]
            node = torch.where(leaf, node, torch.where(go_left, self.left[trees, node], self.right[trees, node]))
        vals = self.value[trees, node]  # (B, T)
        out = self.baseline[None, : int(self.tree_class.max()) + 1 if t else len(self.baseline)].repeat(b, 1)
        return out.index_add(1, self.tree_class, vals)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.raw(x)
        logits = torch.cat([torch.zeros_like(r), r], 1) if r.shape[1] == 1 and self.num_classes == 2 else r
        return torch.log_softmax(logits, 1).float()


@register_head("stacking")
class StackingHead(_Resizable):
    """The probe's linear map and the boosted trees, combined by ``weight @ [log p_linear, log p_trees] + bias``."""

    def __init__(self, in_features: int, num_classes: int, **kw: Any):
        super().__init__(in_features, num_classes, **kw)
        self.linear = nn.Linear(in_features, num_classes)
        self.trees = BoostingHead(in_features, num_classes, **kw)
        self.register_buffer("weight", torch.zeros(num_classes, 2 * num_classes))
        self.register_buffer("bias", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_lin = torch.log_softmax(self.linear(self.norm(x)), 1)
        feats = torch.cat([p_lin, self.trees(x)], 1).clamp_min(np.log(1e-7))
        return torch.log_softmax(feats @ self.weight.T + self.bias, 1)


# ---------------------------------------------------------------------------------------------- fitters

def _probe(X_train, y_train, X_val, y_val, num_classes, seed, class_weight):
    """The linear probe (its standardisation is every ensemble head's), its history and its chosen ``C``."""
    from .linear import fit_linear

    probe, history = fit_linear(X_train, y_train, X_val, y_val, num_classes=num_classes, seed=seed, class_weight=class_weight)
    return probe, history, float(next((r["C"] for r in history if r.get("selected")), 1.0))


def _sample_weight(y: np.ndarray, class_weight: Any, num_classes: int) -> np.ndarray | None:
    from .base import resolve_class_weight

    w = resolve_class_weight(class_weight, y, num_classes)
    return None if w is None else w.numpy()[y]


def fit_bagging(X_train, y_train, X_val=None, y_val=None, *, num_classes: int, seed: int = 0, class_weight: Any = None,
                n_estimators: int = N_BAGS, max_features: float = BAG_FEATURES, **_: Any):
    from sklearn.ensemble import BaggingClassifier
    from sklearn.linear_model import LogisticRegression

    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train").numpy()
    probe, history, c = _probe(X_train, y_train, X_val, y_val, num_classes, seed, class_weight)
    head = BaggingHead(x.shape[1], num_classes)
    head.norm.load_state_dict(probe.norm.state_dict())
    z = head.norm(x).numpy().astype(np.float64)
    bag = BaggingClassifier(LogisticRegression(C=c, max_iter=1000), n_estimators=n_estimators, max_features=max_features,
                            random_state=seed).fit(z, y, sample_weight=_sample_weight(y, class_weight, num_classes))
    export_bagging(bag, head)
    return head.eval(), history + [{"head": "bagging", "n_estimators": n_estimators, "max_features": max_features, "C": c}]


def export_bagging(bag: Any, head: BaggingHead) -> BaggingHead:
    """Copy a fitted ``BaggingClassifier`` of logistic regressions into ``head`` (weights ``(E, K, D)``)."""
    e_n, k, d = len(bag.estimators_), head.num_classes, head.in_features
    w, b = np.zeros((e_n, k, d)), np.full((e_n, k), -np.inf)
    for e, (est, feats) in enumerate(zip(bag.estimators_, bag.estimators_features_)):
        cls = bag.classes_[est.classes_]
        if len(cls) == 2:  # sklearn's binary form: one row, for the second class
            w[e, cls[1], feats], b[e, cls[1]], b[e, cls[0]] = est.coef_[0], est.intercept_[0], 0.0
        else:
            w[e][np.ix_(cls, feats)], b[e, cls] = est.coef_, est.intercept_
    head.weight, head.bias = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return head


def export_trees(clf: Any, head: BoostingHead) -> BoostingHead:
    """Copy a fitted ``HistGradientBoostingClassifier``'s trees into ``head`` (categorical splits are refused)."""
    from ..errors import HeadstartError

    trees = [(k, p) for it in clf._predictors for k, p in enumerate(it)]
    if any(p.nodes["is_categorical"].any() for _, p in trees):
        raise HeadstartError("A boosted tree splits on a categorical feature, which this head cannot export without pickling. Fix: --head bagging or logreg.")
    n = max((len(p.nodes) for _, p in trees), default=1)
    t = max(len(trees), 1)
    tab = {k: np.zeros((t, n), dtype=d) for k, d in (("feature", np.int64), ("left", np.int64), ("right", np.int64), ("threshold", np.float64), ("value", np.float64))}
    leaf = np.ones((t, n), dtype=bool)
    for i, (_, p) in enumerate(trees):
        nodes = p.nodes
        m = len(nodes)
        tab["feature"][i, :m], tab["threshold"][i, :m] = nodes["feature_idx"], nodes["num_threshold"]
        tab["left"][i, :m], tab["right"][i, :m], tab["value"][i, :m] = nodes["left"], nodes["right"], nodes["value"]
        leaf[i, :m] = nodes["is_leaf"].astype(bool)
    for k, v in tab.items():
        setattr(head, k, torch.as_tensor(v))
    head.leaf = torch.as_tensor(leaf)
    head.tree_class = torch.as_tensor([k for k, _ in trees] or [0], dtype=torch.long)
    base = np.zeros(head.num_classes)
    bp = np.asarray(clf._baseline_prediction).reshape(-1)
    base[: len(bp)] = bp
    head.baseline = torch.as_tensor(base)
    head.depth = torch.as_tensor(max((int(p.nodes["depth"].max()) for _, p in trees), default=0))
    return head


def fit_boosting(X_train, y_train, X_val=None, y_val=None, *, num_classes: int, seed: int = 0, class_weight: Any = None, **_: Any):
    from ..errors import HeadstartError

    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train").numpy()
    if len(np.unique(y)) != num_classes:
        raise HeadstartError("The boosting head needs every class in the training split. Fix: add items of the missing class(es), or --head logreg.")
    probe, history, _ = _probe(X_train, y_train, X_val, y_val, num_classes, seed, class_weight)
    head = BoostingHead(x.shape[1], num_classes)
    head.norm.load_state_dict(probe.norm.state_dict())
    clf = _boosted(head.norm(x).numpy(), y, X_val, y_val, head, seed, class_weight, num_classes)
    export_trees(clf, head)
    return head.eval(), history + [{"head": "boosting", "rounds": int(clf.n_iter_), "trees": int(head.feature.shape[0])}]


def _boosted(z: np.ndarray, y: np.ndarray, X_val: Any, y_val: Any, head: Head, seed: int, class_weight: Any, num_classes: int,
             rounds: int = BOOST_ROUNDS) -> Any:
    """``HistGradientBoostingClassifier`` on standardised features; early stopping on the validation split when given."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    kw: dict[str, Any] = dict(max_iter=rounds, learning_rate=0.1, random_state=seed)
    sw = _sample_weight(y, class_weight, num_classes)
    if X_val is None or not len(X_val) or y_val is None:
        return HistGradientBoostingClassifier(early_stopping=False, **kw).fit(z, y, sample_weight=sw)
    # rounds stopped by the validation split's loss (not scikit-learn's default hold-out carved from the training split)
    zv = head.norm(as_features(X_val, "X_val")).numpy()
    return HistGradientBoostingClassifier(early_stopping=True, n_iter_no_change=10, **kw).fit(z, y, sample_weight=sw, X_val=zv, y_val=np.asarray(y_val))


def fit_stacking(X_train, y_train, X_val=None, y_val=None, *, num_classes: int, seed: int = 0, class_weight: Any = None, **_: Any):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from .linear import fit_linear

    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train").numpy()
    head = StackingHead(x.shape[1], num_classes)
    probe, history, c = _probe(X_train, y_train, X_val, y_val, num_classes, seed, class_weight)
    head.norm.load_state_dict(probe.norm.state_dict())
    head.trees.norm.load_state_dict(probe.norm.state_dict())
    z = head.norm(x).numpy()
    folds = int(min(5, np.bincount(y, minlength=num_classes).min()))
    # the members on the whole training split first: the probe's linear map (in the shared standardisation), the trees
    # stopped by validation; the fold copies use the probe's C and the trees' number of rounds
    with torch.no_grad():
        head.linear.weight.copy_(probe.fc.weight)
        head.linear.bias.copy_(probe.fc.bias)
    full = _boosted(z, y, X_val, y_val, head.trees, seed, class_weight, num_classes)
    export_trees(full, head.trees)
    oof = np.zeros((len(y), 2 * num_classes))
    for tr, te in StratifiedKFold(max(folds, 2), shuffle=True, random_state=seed).split(z, y):
        lin, _ = fit_linear(x[tr], y[tr], num_classes=num_classes, seed=seed, class_weight=class_weight, C=c)
        trees = BoostingHead(x.shape[1], num_classes)
        trees.norm.load_state_dict(probe.norm.state_dict())
        export_trees(_boosted(z[tr], y[tr], None, None, trees, seed, class_weight, num_classes, rounds=int(full.n_iter_)), trees)
        with torch.no_grad():
            oof[te, :num_classes] = torch.log_softmax(lin(x[te]), 1).numpy()
            oof[te, num_classes:] = trees(x[te]).numpy()
    oof = np.maximum(oof, np.log(1e-7))
    final = LogisticRegression(C=1.0, max_iter=2000).fit(oof, y, sample_weight=_sample_weight(y, class_weight, num_classes))
    w, b = np.zeros((num_classes, 2 * num_classes)), np.zeros(num_classes)
    if num_classes == 2:
        w[1], b[1] = final.coef_[0], final.intercept_[0]
    else:
        w[final.classes_], b[final.classes_] = final.coef_, final.intercept_
    head.weight, head.bias = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return head.eval(), history + [{"head": "stacking", "members": ["logreg", "boosting"], "folds": max(folds, 2)}]


from .base import register_fitter  # noqa: E402

register_fitter("bagging", fit_bagging)
register_fitter("boosting", fit_boosting)
register_fitter("stacking", fit_stacking)
