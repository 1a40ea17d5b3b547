r"""Which weights a run keeps: validation accuracy and loss together.

The loop keeps one incumbent (the linear probe's head before any backbone weight moved, when
fine-tuning starts from it, else the first epoch) and replaces it with a later epoch only when that
epoch is better by :func:`better`:

* not worse on either validation accuracy or validation loss, and strictly better on one: it wins;
* worse on both: it loses;
* better on one and worse on the other: accuracy decides when the accuracy difference exceeds one
  standard error of an accuracy on ``n`` validation items,
  :math:`\mathrm{se} = \sqrt{\bar p (1 - \bar p) / n}` (:math:`\bar p` the mean of the two
  accuracies, floored at :math:`1/n`), else the loss decides.

Why: the loss alone keeps an over-regularised head whose accuracy is clearly lower, and a
fine-tuned model's loss rises (over-confidence) while its accuracy still climbs; accuracy alone
swings with a single image of a small validation set (the probe chose its penalty on 0.831 vs
0.827: one image of 225). A difference in accuracy counts only when it is larger than that noise.

Under domain adaptation (``keep="latest"``, :func:`keeps_latest`) the validation set is the
source's, which cannot see the target: the loss there rises by design as the features move towards
the target, so :func:`better` would hand back the unadapted starting weights. There the latest
weights are kept unless their validation accuracy falls below the best seen by more than one
standard error (the run then keeps the last weights that did not).

With ``keep="final"`` (:func:`resolve_keep`; the default when the validation split is small) the
epochs are not compared with each other at all: the end of the schedule is compared once with the
starting weights (the probe) by :func:`better`, and kept if it wins. Picking the best of every epoch
on a small validation split keeps whichever epoch the noise favoured: on BreastMNIST (78
validation images, 21 malignant: one image is 1.3 points) the best-of-epochs rule kept epoch 4 of 8
at 96 px and epoch 2 of 8 at lr 5e-4 (each 2 images above the final epoch on validation), weights
from the middle of the cosine schedule (``benchmarks/breast_search.py``).

Example::

    better(Score(0.93, 0.30, 500), Score(0.90, 0.25, 500))  # True: +3 points > se 0.013
    better(Score(0.905, 0.30, 500), Score(0.90, 0.25, 500))  # False: +0.5 point is noise, loss is worse
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """Validation accuracy, loss and the number of validation items they were measured on."""

    acc: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"val_acc": round(self.acc, 6), "val_loss": round(self.loss, 6)}


def accuracy_se(a: float, b: float, n: int) -> float:
    """One standard error of an accuracy near ``(a + b) / 2`` measured on ``n`` items."""
    n = max(int(n), 1)
    p = (a + b) / 2
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def better(new: Score, old: Score) -> bool:
    """Whether ``new`` should replace ``old`` (see the module docstring for the rule)."""
    d_acc, d_loss = new.acc - old.acc, new.loss - old.loss
    if d_acc >= 0 and d_loss <= 0:
        return d_acc > 0 or d_loss < 0
    if d_acc <= 0 and d_loss >= 0:
        return False
    if abs(d_acc) > accuracy_se(new.acc, old.acc, min(new.n, old.n)):
        return d_acc > 0
    return d_loss < 0


def why(new: Score, old: Score, *, new_name: str, old_name: str) -> str:
    """A sentence for the run log: which of the two was kept and why."""
    keep_new = better(new, old)
    kept, other = (new, old) if keep_new else (old, new)
    kept_name, other_name = (new_name, old_name) if keep_new else (old_name, new_name)
    se = accuracy_se(new.acc, old.acc, min(new.n, old.n))
    d_acc, d_loss = kept.acc - other.acc, kept.loss - other.loss
    if d_acc >= 0 and d_loss <= 0:
        reason = "not worse on validation accuracy or loss, better on at least one"
    elif abs(d_acc) > se:
        reason = f"its validation accuracy is higher by {d_acc:+.4f}, more than one standard error ({se:.4f}), though its loss is higher"
    else:
        reason = f"the accuracy difference ({-d_acc:+.4f}) is within one standard error ({se:.4f}) and its validation loss is lower"
    return (
        f"kept {kept_name} (val acc {kept.acc:.4f}, loss {kept.loss:.4f}) over {other_name} "
        f"(val acc {other.acc:.4f}, loss {other.loss:.4f}): {reason}"
    )


KEEP_RULES = ("best", "latest", "final")
KEEP_SETTINGS = ("auto", "best", "final")
# keep="auto": "final" when the smallest class of the validation split has fewer items than this, the
# same bound under which the probe chooses its penalty by cross-validation (heads.linear).
SMALL_VAL_PER_CLASS = 50


def resolve_keep(keep: str, val_labels=None, num_classes: int = 2) -> str:
    """The loop's keep rule for setting ``keep`` (``auto``, ``best`` or ``final``): ``auto`` is ``final`` when
    the validation split's smallest class has fewer than :data:`SMALL_VAL_PER_CLASS` items, else ``best``."""
    if keep != "auto":
        return keep
    if val_labels is None or not len(val_labels):
        return "best"
    import numpy as np

    smallest = int(np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=num_classes).min())
    return "final" if smallest < SMALL_VAL_PER_CLASS else "best"


def keeps_latest(new: Score, top: Score) -> bool:
    """``keep="latest"``: whether ``new`` replaces the kept weights, ``top`` the best validation accuracy so far.

    ``new`` is kept unless its accuracy is lower than ``top``'s by more than one standard error."""
    return new.acc >= top.acc - accuracy_se(new.acc, top.acc, min(new.n, top.n))
