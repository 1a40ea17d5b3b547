"""The report's decision sections: the operating point (``fit --threshold``) and calibration (``fit --calibrate``).

From the run folder alone: ``model.json`` (``info.operating_point``, chosen on validation, and
``info.calibration``, fit on validation), ``metrics.json`` (the evaluated split's figures at that
threshold and its ECE/NLL before and after scaling) and the plots :func:`.plots.make_plots` drew
(``roc_operating_point``; ``reliability`` with before/after panels). :func:`decision_sections` adds
them to a report document (:class:`.report._Doc`); runs with neither get nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_data import RunRecord

ROC_TITLE = ("ROC curve and the operating point", "The ROC curve of the positive class's probability on the evaluated split; the dot is the "
             "threshold chosen on the validation split, where the model decides (sensitivity and specificity there).")


def decision_sections(doc: Any, rec: RunRecord, plots: dict[str, Path], root: Path) -> None:
    info = rec.meta.get("info") or {}
    split = rec.predictions.split if rec.predictions is not None else ("test" if "test" in rec.metrics else "val")
    m = rec.metrics.get(split) or {}
    if info.get("operating_point"):
        _operating_point(doc, info["operating_point"], m.get("operating_point") or {}, split)
        if "roc_operating_point" in plots:
            doc.figure(plots["roc_operating_point"], *ROC_TITLE, str(plots["roc_operating_point"].relative_to(root)))
    if info.get("calibration"):
        _calibration(doc, info["calibration"], m.get("calibration") or {}, split)


def _operating_point(doc: Any, op: dict[str, Any], at_split: dict[str, Any], split: str) -> None:
    doc.h(2, "Operating point", "operating-point")
    doc.p(f"Decision: {op.get('positive_class')!r} when its probability is at least {op['threshold']:.4f} (rule {op['rule']}, chosen on the "
          f"{op.get('n', '?')} validation items; predict and evaluate use it). Sensitivity: the share of {op.get('positive_class')!r} items "
          "found; specificity: the share of the others cleared; PPV/NPV: how often a positive/negative call is right.", "sub")
    keys = [("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV (precision)"), ("npv", "NPV"),
            ("accuracy", "accuracy at the threshold"), ("balanced_accuracy", "balanced accuracy at the threshold")]
    rows = [[label, op.get(k), at_split.get(k)] for k, label in keys]
    rows.append(["TP / FP / TN / FN", *(f"{d.get('tp')} / {d.get('fp')} / {d.get('tn')} / {d.get('fn')}" if d else None for d in (op, at_split))])
    doc.table(["at the threshold", "validation (chosen on)", split], rows, numeric={1, 2})


def _calibration(doc: Any, cal: dict[str, Any], at_split: dict[str, Any], split: str) -> None:
    doc.h(2, "Calibration", "calibration")
    doc.p(f"Temperature scaling (Guo et al. 2017): the logits are divided by T = {cal['temperature']:.3f}, fit on the {cal.get('n', '?')} "
          "validation items by minimising their negative log-likelihood (T > 1 softens an over-confident model). The argmax and the "
          "ROC curve do not change; the probabilities do (the reliability diagram shows both).", "sub")
    val = cal.get("val") or {}
    rows = [[label, val.get(f"{k}_before"), val.get(f"{k}_after"), at_split.get(f"{k}_before"), at_split.get(f"{k}_after")]
            for k, label in (("ece", "ECE (15 bins)"), ("nll", "NLL (log loss)"))]
    doc.table(["", "validation before", "validation after", f"{split} before", f"{split} after"], rows, numeric={1, 2, 3, 4})
