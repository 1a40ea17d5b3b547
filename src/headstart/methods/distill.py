r"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a finished run's outputs.

The teacher is a finished run (``--method-opt teacher=RUN``, or ``headstart distill TEACHER DATA
--student NAME``); the student is the run's own backbone (any of them: a smaller pretrained network,
``scratch_cnn``, a previous run), at its own input size. With ``z_s``, ``z_t`` the student's and the
teacher's logits, ``T`` the temperature and ``alpha`` the soft weight, the training loss is

.. math::

    L = \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\big)
        + (1 - \alpha)\, \mathrm{CE}(z_s, y)

The :math:`T^2` keeps the soft term's gradients on the scale of the hard term's as ``T`` changes
(for large ``T`` its gradient is :math:`((z_s - z_t) - \overline{(z_s - z_t)}) / K`, Hinton et al.
section 2.1); ``alpha = 0`` is exactly training on the labels alone.

The teacher runs once, before the loop: its logits of every training item (at the teacher's own
input size and preprocessing, from its cached features) are kept in memory and looked up by item
index, so no epoch runs the teacher. Augmented training images are therefore matched with the
teacher's outputs on the unaugmented image. Unlabeled images (``--unlabeled DATA``) join the
transfer set: each step also draws a batch of them, whose only signal is the soft term.

Validation keeps plain cross-entropy on the labels, as for every method; ``metrics.json``
``distill`` holds teacher vs student on the evaluated split (accuracy, agreement, parameters,
weights size, images per second on this machine).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HeadstartError
from .base import Cycled, Method, register_method


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, the batch mean (Hinton et al. 2015)."""
    t = float(temperature)
    return t * t * F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)


class Indexed(torch.utils.data.Dataset):
    """``(*item, index)``: a dataset's items with their position, to look up per-item targets computed once."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple:
        return (*self.ds[i], i)


@register_method
class Distill(Method):
    name = "distill"
    description = "knowledge distillation (Hinton et al. 2015): the student learns from a finished run's softened outputs"
    optional_needs = ("unlabeled",)

    @dataclasses.dataclass(frozen=True)
    class Options:
        teacher: str | None = None  # the teacher's run folder
        # Hinton et al. use T in 2-20; 4 and 0.7 soft / 0.3 hard are the usual starting point (and the issue's).
        temperature: float = 4.0
        alpha: float = 0.7

        def __post_init__(self) -> None:
            if not self.temperature > 0:
                raise HeadstartError(f"Method 'distill' option temperature must be > 0; got {self.temperature!r}.")
            if not 0.0 <= self.alpha <= 1.0:
                raise HeadstartError(f"Method 'distill' option alpha (the soft loss's weight) must be in [0, 1]; got {self.alpha!r}.")

    def begin(self, splits: Any, settings: Any) -> None:
        """Load the teacher and compute its logits of the training items (and of the unlabeled ones) once."""
        from ..model import load

        o = self.options
        if o.teacher is None:
            raise HeadstartError("Method 'distill' learns from a teacher run, and none was given. Fix: headstart distill TEACHER_RUN DATA "
                                 "--student NAME (or --method-opt teacher=RUN; Python: method_opt={'teacher': RUN}).")
        with torch.random.fork_rng(devices=[]):  # building the teacher draws random inits: the student's run stays the same
            self.teacher = load(Path(o.teacher).expanduser())
        t = self.teacher
        if t.modality != splits.train.modality:
            raise HeadstartError(f"The teacher run {o.teacher} classifies {t.modality}s and the data holds {splits.train.modality}s. "
                                 "Fix: distill a teacher trained on data of the same kind.")
        if set(t.classes) != set(splits.classes):
            raise HeadstartError(f"The teacher run {o.teacher} has classes {t.classes} and the data has {splits.classes}; the student "
                                 "learns the teacher's classes. Fix: give data of the teacher's classes (folder names as in the teacher's run).")
        self.columns = [t.classes.index(c) for c in splits.classes]  # the teacher's columns in the student's class order
        t0 = time.perf_counter()
        b = settings.training.batch_size
        with torch.random.fork_rng(devices=[]):
            self.targets = {"train": self._logits(splits.train, b, settings)}
            if "unlabeled" in self.data:
                self.targets["unlabeled"] = self._logits(self.data["unlabeled"], b, settings)
        self.teacher_seconds = time.perf_counter() - t0

    def _logits(self, ds: Any, batch_size: int, settings: Any) -> torch.Tensor:
        t = self.teacher
        feats = t.features(ds, batch_size=batch_size, runtime=settings.backbone.runtime, cache=settings.backbone.cache)
        t.head.eval()
        with torch.inference_mode():
            return t.head(torch.as_tensor(feats, dtype=torch.float32))[:, self.columns].clone()

    def items(self, name: str, dataset: Any) -> Any:
        return Indexed(dataset) if name in ("train", "unlabeled") else dataset

    def criterion(self):
        a = self.options.alpha
        return None if a == 0 else (lambda module, logits, y: (1.0 - a) * module.loss(logits, y))

    def loss_terms(self) -> list:
        if self.options.alpha == 0:
            return []  # exactly training on the labels (tested)
        if not hasattr(self, "targets"):  # the text recipe trains without the image loop's per-item indices
            raise HeadstartError("Method 'distill' runs in the image training loop; text runs are not distilled yet. "
                                 "Fix: fit the text student on the labels (drop --method distill).")
        terms = [self._soft]
        if "unlabeled" in self.loaders:
            self._unlabeled = Cycled(self.loaders["unlabeled"], "unlabeled transfer set")
            terms.append(self._soft_unlabeled)
        return terms

    def _soft(self, module: Any, batch: Any, outputs: dict) -> torch.Tensor:
        z = outputs["logits"]
        return self.options.alpha * soft_loss(z, self.targets["train"][batch[-1].cpu()].to(z.device), self.options.temperature)

    def _soft_unlabeled(self, module: Any, batch: Any, outputs: dict) -> torch.Tensor:
        x, *_, idx = self._unlabeled.next()
        z = module.head(module.features(x.to(outputs["logits"].device)))
        return self.options.alpha * soft_loss(z, self.targets["unlabeled"][idx.cpu()].to(z.device), self.options.temperature)

    def run_metrics(self, model: Any, eval_ds: Any, proba: np.ndarray | None, settings: Any) -> dict[str, Any]:
        """``{"distill": ...}``: teacher vs student on the evaluated split, sizes and speeds on this machine."""
        t = self.teacher
        out: dict[str, Any] = {"teacher": str(self.options.teacher), "temperature": self.options.temperature, "alpha": self.options.alpha,
                               "teacher_logits_seconds": round(self.teacher_seconds, 3),
                               "transfer_set": {"train": len(self.targets["train"]), "unlabeled": len(self.targets.get("unlabeled", ()))},
                               # how much the soft targets say: the teacher's mean top probability at T = 1 and at the temperature
                               "teacher_confidence": {f"{name}_T{t:g}": round(float(F.softmax(z / t, 1).max(1).values.mean()), 4)
                                                      for name, z in self.targets.items() for t in (1.0, float(self.options.temperature))}}
        for who, m in (("teacher", t), ("student", model)):
            out[f"{who}_parameters"] = int(sum(p.numel() for p in (*m.backbone.parameters(), *m.head.parameters())))
            out[f"{who}_megabytes"] = round(sum(v.numel() * v.element_size() for v in (*m.backbone.state_dict().values(), *m.head.state_dict().values())) / 1e6, 3)
            out[f"{who}_input_px"] = int(m.backbone.preprocessing.input_size[0])
        if eval_ds is None or proba is None or not len(eval_ds):
            return {"distill": out}
        speed = {}
        for who, m in (("teacher", t), ("student", model)):  # uncached features: the network runs; once warm
            m.predict_proba(eval_ds.subset(np.arange(min(8, len(eval_ds)))), runtime=settings.backbone.runtime, cache=False)
            t0 = time.perf_counter()
            p = m.predict_proba(eval_ds, batch_size=settings.training.batch_size, runtime=settings.backbone.runtime, cache=False)
            speed[who] = len(eval_ds) / max(time.perf_counter() - t0, 1e-9)
            if who == "teacher":
                teacher_proba = p[:, self.columns]
        y = np.asarray(eval_ds.labels)
        out.update(teacher_accuracy=float((teacher_proba.argmax(1) == y).mean()), student_accuracy=float((proba.argmax(1) == y).mean()),
                   agreement=float((teacher_proba.argmax(1) == proba.argmax(1)).mean()), n=int(len(y)),
                   teacher_images_per_s=round(speed["teacher"], 1), student_images_per_s=round(speed["student"], 1),
                   speedup=round(speed["student"] / speed["teacher"], 2))
        return {"distill": out}
