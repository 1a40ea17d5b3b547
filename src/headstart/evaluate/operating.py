"""The operating point of a binary classifier: the decision threshold on the positive class's probability.

``fit --threshold RULE`` chooses it on the **validation** split (never on test), ``model.json``
stores it (``info.operating_point``), and ``predict``/``evaluate`` decide with it instead of argmax.
The positive class is ``classes[1]``, the class whose probability ROC-AUC ranks; an item is
predicted positive when ``p(classes[1]) >= threshold``. Rules (parsed by
:func:`headstart.settings.parse_threshold_rule`):

- ``youden``: maximise Youden's J = sensitivity + specificity - 1 (Youden 1950), over the ROC curve's
  thresholds (scikit-learn ``roc_curve``);
- ``sensitivity=S``: the highest threshold whose validation sensitivity is at least ``S`` (the most
  specific point that still finds that share of positives);
- ``specificity=S``: the lowest threshold whose validation specificity is at least ``S``;
- ``f1``: maximise the F1 score of the positive class (``precision_recall_curve``).

Example::

    op = choose_threshold("sensitivity=0.95", y_val, p_val)   # {"threshold": 0.21, "sensitivity": 0.952, ...}
    at_threshold(y_test, p_test, op["threshold"])             # sensitivity, specificity, PPV, NPV there
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import HeadstartError
from ..settings import parse_threshold_rule


def at_threshold(y_true: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy and balanced accuracy when positive means ``p_pos >= threshold``
    (``None`` where a denominator is 0), with the confusion counts."""
    y = np.asarray(y_true) == 1
    pred = np.asarray(p_pos, dtype=np.float64) >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    ratio = lambda a, b: float(a / (a + b)) if a + b else None  # noqa: E731
    sens, spec = ratio(tp, fn), ratio(tn, fp)
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec, "ppv": ratio(tp, fp), "npv": ratio(tn, fn),
            "accuracy": float((tp + tn) / max(len(y), 1)), "balanced_accuracy": None if sens is None or spec is None else (sens + spec) / 2,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def choose_threshold(rule: str, y_val: np.ndarray, p_val: np.ndarray) -> dict[str, Any]:
    """The threshold ``rule`` picks on validation labels ``y_val`` (0/1) and positive-class probabilities
    ``p_val``: ``{"rule", "threshold", "chosen_on": "val", "n", <at_threshold figures on validation>}``."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    kind, target = parse_threshold_rule(rule)
    y, p = np.asarray(y_val).astype(np.int64), np.asarray(p_val, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise HeadstartError(f"--threshold {rule} is chosen on the validation split, which needs items of both classes; it has "
                             f"{len(y)} item(s) of {len(np.unique(y))} class(es). Fix: give a larger validation split (--val, or a val "
                             "split in the data), or drop --threshold.")
    if kind == "f1":
        prec, rec, thr = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec[:-1] + rec[:-1] > 0, 2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1]), 0.0)
        t = float(thr[int(np.argmax(f1))])
    else:
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
        thr = np.minimum(thr, 1.0)  # roc_curve's first threshold is inf (nothing positive)
        if kind == "youden":
            t = float(thr[int(np.argmax(tpr - fpr))])
        elif kind == "sensitivity":  # tpr rises as the threshold falls: the first (highest) threshold reaching the target
            t = float(thr[int(np.argmax(tpr >= target - 1e-12))])
        else:  # specificity: 1 - fpr falls as the threshold falls: the last (lowest) threshold still at the target
            ok = np.flatnonzero(1 - fpr >= target - 1e-12)
            t = float(thr[ok[-1]])
    return {"rule": rule, "chosen_on": "val", "n": int(len(y)), **at_threshold(y, p, t)}


def operating_point(rule: str, y_val: np.ndarray | None, proba_val: np.ndarray | None, classes: list[str]) -> dict[str, Any]:
    """What ``model.json`` stores as ``info.operating_point``: :func:`choose_threshold` on the validation
    split, with the positive class named; errors name the fix when the run is not binary or has no validation split."""
    check_binary(rule, classes)
    if proba_val is None or y_val is None:
        raise HeadstartError(f"--threshold {rule} is chosen on the validation split, and this run has none. Fix: give a validation "
                             "split (--val FRACTION, or a val split in the data), or drop --threshold.")
    return {**choose_threshold(rule, y_val, np.asarray(proba_val)[:, 1]), "positive_class": classes[1]}


def check_binary(rule: str, classes: list[str]) -> None:
    if len(classes) != 2:
        raise HeadstartError(f"--threshold {rule} sets the decision threshold of a binary classifier; this data has {len(classes)} "
                             f"classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}). Fix: drop --threshold.")


def fit_decision(model, val, *, calibrate: str = "none", threshold: str | None = None, **predict_kw: Any) -> dict[str, Any]:
    """What ``fit`` adds to ``model.info`` from the validation dataset ``val``: ``calibration``
    (:func:`~.calibration.fit_calibration` on the head's validation logits) and then ``operating_point``
    (:func:`operating_point`, chosen on the *calibrated* probabilities, so that the stored threshold is
    on the scale ``predict_proba`` gives; temperature scaling keeps the order of ``p(classes[1])``, so the
    validation decisions are the ones the uncalibrated probabilities would give). The features of
    ``val`` are computed once for both. ``model``: a :class:`headstart.model.Model` (``features``,
    ``logits_from_features``, ``predict_proba``); ``predict_kw``: its feature options."""
    from .calibration import fit_calibration

    out: dict[str, Any] = {}
    if calibrate == "none" and threshold is None:
        return out
    has_val = val is not None and len(val) > 0
    feats = model.features(val, **predict_kw) if has_val else None
    task = model.task_of_labels(val.labels) if has_val else None
    if calibrate != "none":
        logits = model.logits_from_features(feats, task=task).numpy() if has_val else None
        cal = fit_calibration(calibrate, logits, val.labels if has_val else None)
        if cal is not None:
            out["calibration"] = model.info["calibration"] = cal  # predict_proba below uses it
    if threshold is not None:
        proba = model.proba_from_features(feats, task=task) if has_val else None
        out["operating_point"] = operating_point(threshold, val.labels if has_val else None, proba, model.classes)
    return out
