"""Classification metrics from saved predictions (never by retraining), via scikit-learn.

Everything but the expected calibration error comes from :mod:`sklearn.metrics`; ECE is written
here because scikit-learn has none (its ``calibration_curve`` gives the bins, not the score).

Classes absent from ``y_true`` (an evaluation folder holding a subset of the classes) are kept in
the per-class table (support 0) and the confusion matrix; threshold metrics that are undefined for
them (one-vs-rest ROC-AUC and PR-AUC need positives) skip them and say so in ``notes``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from .bootstrap import RESAMPLES, SEED, bootstrap_intervals

#: Top-k accuracies reported when there are more than k classes.
TOP_K = (3, 5)
#: Equal-width confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15


def calibration_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy over ``n_bins`` equal-width confidence bins.

    The confidence of an item is its top probability ``max_k p_k``; bin ``b`` holds the items with
    confidence in ``((b-1)/n_bins, b/n_bins]`` (the first bin also holds 0). Empty bins have
    count 0 and NaN confidence and accuracy. Returns ``edges`` (``n_bins + 1``), ``count``,
    ``confidence`` and ``accuracy`` (``n_bins`` each).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(1) if len(proba) else np.zeros(0)
    correct = (proba.argmax(1) == y_true).astype(np.float64) if len(proba) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017).

    .. math::  \\mathrm{ECE} = \\sum_{b=1}^{B} \\frac{|B_b|}{n} \\left|\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)\\right|

    where ``B_b`` are the items whose top probability falls in ``((b-1)/B, b/B]``, ``acc`` the
    fraction of them predicted correctly and ``conf`` their mean top probability. 0 is perfectly
    calibrated; a model that says 0.9 and is right half the time scores 0.4. NaN for no items.

    >>> expected_calibration_error([0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]), n_bins=10)
    0.45
    """
    bins = calibration_bins(y_true, proba, n_bins)
    n = int(bins["count"].sum())
    if n == 0:
        return float("nan")
    used = bins["count"] > 0
    gap = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(round(np.sum(bins["count"][used] / n * gap), 12))


def _one_vs_rest(score_fn, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """``score_fn(y_true == c, p_c)`` for every class with positives and negatives in ``y_true``."""
    scores, skipped = {}, []
    for i, c in enumerate(classes):
        pos = y_true == i
        if pos.all() or not pos.any():
            skipped.append(c)
            continue
        scores[c] = float(score_fn(pos, proba[:, i]))
    return scores, skipped


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, resamples: int = RESAMPLES,
                           seed: int = SEED) -> dict[str, Any]:
    """Every metric of a run from ``y_true`` (class indices) and ``proba`` ``(n, len(classes))``.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy``, ``log_loss``, ``macro_``/``weighted_``
    ``precision``/``recall``/``f1`` (over the classes present in ``y_true`` or predicted, as
    scikit-learn does by default), ``roc_auc`` (binary: of the second class' probability; more
    classes: one-vs-rest macro over the classes present in ``y_true``), ``pr_auc`` (average
    precision, same convention), ``top_3_accuracy``/``top_5_accuracy`` (when there are more
    classes than k), ``ece`` (:func:`expected_calibration_error`), ``per_class`` (precision, recall,
    F1, support, and one-vs-rest ROC-AUC / PR-AUC where defined), ``confusion_matrix`` (rows: true,
    columns: predicted, every class), ``classes`` and ``notes`` (what was skipped and why).
    Binary runs also get ``sensitivity`` (recall of ``classes[1]``, the class whose probability
    ROC-AUC ranks; ``positive_class`` names it) and ``specificity`` (recall of ``classes[0]``).
    ``ci``: seeded 95% bootstrap intervals of accuracy, balanced accuracy and, for binary runs,
    sensitivity, specificity and ROC-AUC (:func:`~.bootstrap.bootstrap_intervals`; ``resamples=0``
    leaves them out). Undefined values are ``None``.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
        top_k_accuracy_score,
    )

    classes = list(classes)
    k = len(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(y_true), k)
    labels = np.arange(k)
    y_pred = proba.argmax(1) if len(y_true) else np.zeros(0, dtype=np.int64)
    notes: list[str] = []
    out: dict[str, Any] = {"n": int(len(y_true)), "classes": classes}
    if len(y_true) == 0:
        out.update({"accuracy": float("nan"), "log_loss": float("nan"), "macro_f1": float("nan"), "notes": ["no items to evaluate"],
                    "per_class": {c: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for c in classes},
                    "confusion_matrix": np.zeros((k, k), dtype=int).tolist()})
        return out

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    clipped = np.clip(proba, 1e-15, 1.0)
    clipped /= clipped.sum(1, keepdims=True)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected on subsets
        warnings.simplefilter("ignore", UserWarning)
        out["accuracy"] = float(accuracy_score(y_true, y_pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred))
    out["log_loss"] = float(log_loss(y_true, clipped, labels=labels))
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(ap), float(ar), float(af)

    absent = [c for i, c in enumerate(classes) if s[i] == 0]
    if absent:
        notes.append(f"{len(absent)} class(es) absent from the evaluated items: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}; "
                     "their recall is undefined (shown as 0) and one-vs-rest ROC-AUC/PR-AUC skip them")
    never = [c for i, c in enumerate(classes) if s[i] > 0 and not (y_pred == i).any()]
    if never:
        notes.append(f"{len(never)} class(es) never predicted: {', '.join(never[:10])}{' ...' if len(never) > 10 else ''} (precision shown as 0)")

    roc, roc_skipped = _one_vs_rest(roc_auc_score, y_true, proba, classes)
    ap_scores, _ = _one_vs_rest(average_precision_score, y_true, proba, classes)
    if k == 2:
        both = len(np.unique(y_true)) == 2
        out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1])) if both else None
        out["pr_auc"] = float(average_precision_score(y_true == 1, proba[:, 1])) if both else None
    else:
        out["roc_auc"] = float(np.mean(list(roc.values()))) if roc else None
        out["pr_auc"] = float(np.mean(list(ap_scores.values()))) if ap_scores else None
    if out["roc_auc"] is None:
        notes.append("ROC-AUC and PR-AUC are undefined: the evaluated items hold a single class")
    for kk in TOP_K:
        if k > kk:
            out[f"top_{kk}_accuracy"] = float(top_k_accuracy_score(y_true, proba, k=kk, labels=labels))
    out["ece"] = expected_calibration_error(y_true, proba)
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
            "roc_auc": roc.get(c), "pr_auc": ap_scores.get(c)}
        for i, c in enumerate(classes)
    }
    if k == 2:
        out["positive_class"], out["sensitivity"], out["specificity"] = classes[1], float(r[1]), float(r[0])
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if resamples:
        out["ci"] = bootstrap_intervals(y_true, proba, resamples=resamples, seed=seed)
    out["notes"] = notes
    return out


#: The headline metrics, in the order reports and comparisons show them: key -> label.
HEADLINE = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "weighted_f1": "weighted F1",
    "macro_precision": "macro precision",
    "macro_recall": "macro recall",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "top_3_accuracy": "top-3 accuracy",
    "top_5_accuracy": "top-5 accuracy",
    "log_loss": "log loss",
    "ece": "ECE",
}
