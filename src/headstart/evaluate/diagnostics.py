"""Diagnostics in plain words, with what to try: the troubleshooting advice of transfer learning.

Each check reads the run folder only (history, predictions, counts) and returns a
:class:`Finding` when it sees a problem. Thresholds are rules of thumb, stated in the messages:

- **over-fitting**: validation loss at the end is more than 10 % above its minimum while training
  loss kept falling, or training accuracy is more than 10 points above validation accuracy (and
  more than twice the standard error of the validation accuracy, so that a tiny validation set
  does not cry wolf);
- **under-fitting**: training accuracy below 80 %;
- **class imbalance**: the largest training class has at least 3x the items of the smallest;
- **confused pairs**: two classes mistaken for each other (either way) in at least 10 % of their
  evaluated items (and at least 2 items);
- **calibration**: expected calibration error above 0.1;
- **small evaluation set**: fewer than 30 evaluated items per class (the binomial standard error
  of the accuracy, ``sqrt(a (1 - a) / n)``, is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .run_data import RunRecord


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a short title, what was seen (with numbers) and what to try."""

    title: str
    seen: str
    advice: str
    severity: str = "warning"  # "warning" | "info"


def _finite(history: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.asarray([float(r[key]) for r in history if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])])


def _overfitting(rec: RunRecord) -> Finding | None:
    h = [r for r in rec.history if "epoch" in r]
    tr_loss, va_loss = _finite(h, "train_loss"), _finite(h, "val_loss")
    if len(va_loss) >= 3 and len(tr_loss) == len(va_loss):
        best = int(np.argmin(va_loss))
        rise = (va_loss[-1] - va_loss[best]) / max(va_loss[best], 1e-12)
        if best < len(va_loss) - 1 and rise > 0.10 and tr_loss[-1] < tr_loss[best]:
            return Finding(
                "Over-fitting: training and validation diverge",
                f"Validation loss was lowest at epoch {best + 1} ({va_loss[best]:.3f}) and rose {rise:.0%} by the last epoch "
                f"({va_loss[-1]:.3f}) while training loss kept falling ({tr_loss[best]:.3f} -> {tr_loss[-1]:.3f}). "
                "The saved weights are those of the best epoch.",
                "Train fewer layers (strategy 'linear', or unfreeze progressively), lower the learning rate, add regularisation "
                "(dropout, weight decay, data augmentation), use early stopping with a smaller patience, or collect more labeled data.",
            )
    rows = h or [r for r in rec.history if r.get("selected")] or rec.history[-1:]
    if rows:
        r = min(rows, key=lambda r: r["val_loss"]) if all(isinstance(x.get("val_loss"), (int, float)) for x in rows) else rows[-1]
        tr, va = r.get("train_acc"), r.get("val_acc")
        n_val = sum(((rec.metrics.get("counts") or {}).get("val") or {}).values())
        noise = 2 * np.sqrt(max(va * (1 - va), 0.05) / n_val) if isinstance(va, (int, float)) and n_val else 0.0
        if isinstance(tr, (int, float)) and isinstance(va, (int, float)) and tr - va > max(0.10, noise):
            return Finding(
                "Over-fitting: training accuracy well above validation accuracy",
                f"At the kept weights, training accuracy is {tr:.1%} but validation accuracy {va:.1%} (a gap of {tr - va:.1%}, more than 10 points).",
                "Regularise more (a smaller C for the logistic-regression head, dropout or weight decay for fine-tuning), "
                "use data augmentation, train fewer layers, or collect more labeled data.",
            )
    return None


def _underfitting(rec: RunRecord) -> Finding | None:
    rows = [r for r in rec.history if r.get("selected")] or rec.history[-1:]
    tr = rows[0].get("train_acc") if rows else None
    if "epoch" in (rec.history[0] if rec.history else {}):
        accs = _finite(rec.history, "train_acc")
        tr = float(accs.max()) if len(accs) else None
    if isinstance(tr, (int, float)) and tr < 0.80:
        return Finding(
            "Under-fitting: the model does not even fit its training data",
            f"The best training accuracy is {tr:.1%} (below 80 %).",
            "Train longer (more epochs) or with a higher learning rate"
            + ("" if rec.setting("strategy") == "finetune" else ", fine-tune the backbone too (strategy 'finetune')")
            + ("" if rec.setting("head") == "mlp" else ", use an MLP head (--head mlp)")
            + ", or use a backbone closer to your data ('headstart rank' scores candidates in seconds). "
            "Also check that the labels are right.",
        )
    return None


def _imbalance(rec: RunRecord) -> Finding | None:
    counts = (rec.metrics.get("counts") or {}).get("train") or {}
    vals = [v for v in counts.values() if v > 0]
    if len(vals) >= 2 and max(vals) >= 3 * min(vals):
        big = max(counts, key=counts.get)
        small = min((c for c in counts if counts[c] > 0), key=counts.get)
        cw = rec.setting("class_weights")
        return Finding(
            "Class imbalance",
            f"The training set has {counts[big]} '{big}' but only {counts[small]} '{small}' (ratio {max(vals) / min(vals):.1f}:1). "
            "Accuracy then favours the large classes; look at balanced accuracy and per-class recall.",
            ("Class weights are already balanced; " if cw == "balanced" else "Weight classes by inverse frequency (--class-weights balanced), ")
            + "collect more examples of the small classes, or oversample them.",
        )
    return None


def confused_pairs(cm: np.ndarray, classes: list[str], *, min_rate: float = 0.10, min_count: int = 2, top: int = 3) -> list[tuple[str, str, int, float]]:
    """Pairs ``(a, b, n, rate)`` mistaken for each other ``n`` times in either direction, ``rate``
    being ``n`` over the evaluated items of the two classes; most confused first."""
    cm = np.asarray(cm)
    support = cm.sum(1)
    pairs = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            n = int(cm[i, j] + cm[j, i])
            denom = int(support[i] + support[j])
            if denom and n >= min_count and n / denom >= min_rate:
                pairs.append((classes[i], classes[j], n, n / denom))
    return sorted(pairs, key=lambda p: (-p[3], -p[2]))[:top]


def _confusions(rec: RunRecord) -> Finding | None:
    p = rec.predictions
    if p is None or not len(p.y_true):
        return None
    from sklearn.metrics import confusion_matrix

    pairs = confused_pairs(confusion_matrix(p.y_true, p.y_pred, labels=np.arange(len(p.classes))), p.classes)
    if not pairs:
        return None
    text = "; ".join(f"'{a}' and '{b}' ({n} items, {r:.0%} of the two classes' items)" for a, b, n, r in pairs)
    return Finding(
        "Classes confused with each other",
        f"Most mistakes are between {text}.",
        "Look at these examples in the gallery below: check their labels, add labeled examples that tell the pair apart, "
        "try a larger input resolution or a backbone that sees finer detail, or merge the classes if they are truly the same.",
    )


def _calibration(rec: RunRecord) -> Finding | None:
    p = rec.predictions
    if p is None or len(p.y_true) < 20:
        return None
    from .metrics import expected_calibration_error

    ece = expected_calibration_error(p.y_true, p.proba)
    if ece > 0.10:
        over = float(np.mean(p.confidence) - np.mean(p.y_pred == p.y_true))
        return Finding(
            "Probabilities are poorly calibrated",
            f"Expected calibration error is {ece:.3f}; the model is {'over' if over > 0 else 'under'}-confident by {abs(over):.1%} on average.",
            "Do not read the probabilities as chances yet: fit a temperature on the validation set (Guo et al. 2017), "
            "or use the reliability diagram to pick decision thresholds.",
            "info",
        )
    return None


def _small_eval(rec: RunRecord) -> Finding | None:
    p = rec.predictions
    if p is None or not len(p.y_true):
        return None
    n = len(p.y_true)
    k = max(1, len(np.unique(p.y_true)))
    if n / k < 30:
        a = float(np.mean(p.y_pred == p.y_true))
        se = float(np.sqrt(a * (1 - a) / n))
        return Finding(
            "Small evaluation set",
            f"Only {n} items were evaluated ({n / k:.0f} per class): the accuracy {a:.1%} has a standard error of about {se:.1%}, "
            "so small differences between runs are noise.",
            "Hold out more labeled items for the test split (--test), or compare runs over several seeds.",
            "info",
        )
    return None


CHECKS = (_overfitting, _underfitting, _imbalance, _confusions, _calibration, _small_eval)


def diagnose(rec: RunRecord) -> list[Finding]:
    """Every finding of :data:`CHECKS` on the run folder ``rec``, problems first."""
    found = [f for f in (check(rec) for check in CHECKS) if f is not None]
    return sorted(found, key=lambda f: f.severity != "warning")
