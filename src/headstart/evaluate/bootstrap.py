"""Bootstrap confidence intervals of a run's headline figures, vectorised over the resamples.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): ``resamples`` sets of ``n`` items drawn with
replacement from the ``n`` evaluated items (seeded), each figure computed on every set, and the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those values reported. The resampled indices
are drawn once, as one ``(resamples, n)`` array, and every figure is computed on all sets at once:

- accuracy and balanced accuracy: per-class hit counts by one ``bincount`` over (set, class);
- binary runs: sensitivity (recall of the positive class, ``classes[1]``, the class whose
  probability ROC-AUC ranks), specificity (recall of ``classes[0]``) and ROC-AUC by the rank-sum
  (Mann-Whitney) formula, ties ranked by their average, on each set's sorted scores.

A set that lacks a class leaves the figures that need it undefined; those sets are dropped for that
figure (``defined`` counts the sets used). 1,000 resamples of 5,000 binary items take about 1 s of
one core here (measured on this project's 2-core CPU, loaded).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Defaults: 1,000 resamples (the usual figure for 95% percentile intervals), seed 0, 95%.
RESAMPLES, SEED, LEVEL = 1000, 0, 0.95


def bootstrap_intervals(y_true: np.ndarray, proba: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> dict[str, Any]:
    """``{"level", "resamples", "seed", "method", <figure>: [low, high], "defined": {figure: sets}}``."""
    y = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    out: dict[str, Any] = {"level": level, "resamples": int(resamples), "seed": int(seed), "method": "percentile bootstrap"}
    if n < 2 or resamples < 1:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    yb, hit = y[idx], (proba.argmax(1) == y)[idx]
    rows = np.arange(resamples)[:, None] * k + yb
    support = np.bincount(rows.ravel(), minlength=resamples * k).reshape(resamples, k)
    hits = np.bincount(rows.ravel(), weights=hit.ravel(), minlength=resamples * k).reshape(resamples, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hits / support  # nan where a set lacks the class
    present = np.isin(np.arange(k), y)
    figures = {"accuracy": hit.mean(1), "balanced_accuracy": np.nanmean(np.where(present, recall, np.nan), 1)}
    if k == 2:
        figures["sensitivity"], figures["specificity"] = recall[:, 1], recall[:, 0]
        figures["roc_auc"] = _rank_auc(proba[:, 1][idx], yb == 1)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    out["defined"] = {}
    for name, v in figures.items():
        v = v[np.isfinite(v)]
        out["defined"][name] = int(len(v))
        out[name] = [float(np.quantile(v, lo)), float(np.quantile(v, hi))] if len(v) else None
    return out


def _rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row: (sum of the positives' ranks − n₁(n₁+1)/2) / (n₁ n₀), average ranks for ties."""
    order = np.argsort(scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, 1)
    pos = np.take_along_axis(positive, order, 1)
    m = s.shape[1]
    ranks = np.broadcast_to(np.arange(1, m + 1, dtype=np.float64), s.shape)
    # Average the ranks within runs of equal scores: each run's first rank carried forward, its last carried back.
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    end = np.ones_like(new)
    end[:, :-1] = new[:, 1:]
    first = np.maximum.accumulate(np.where(new, ranks, 0.0), axis=1)
    last = np.minimum.accumulate(np.where(end, ranks, np.inf)[:, ::-1], axis=1)[:, ::-1]
    avg = (first + last) / 2
    n1 = pos.sum(1).astype(np.float64)
    n0 = m - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((avg * pos).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)
