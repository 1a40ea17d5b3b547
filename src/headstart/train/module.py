r"""The LightningModule of the one training loop: backbone (optional) + head + loss terms.

Loss on a training batch :math:`(x, y)` with logits :math:`\ell = h(f(x))`:

.. math::

    \mathcal{L} = \frac{\sum_i w_{y_i} \, \mathrm{CE}_\epsilon(\ell_i, y_i)}{\sum_i w_{y_i}}
                  + \sum_t \mathrm{term}_t(\text{module}, \text{batch}, \text{outputs})

where :math:`w` are the class weights (1 by default) and :math:`\mathrm{CE}_\epsilon` is
cross-entropy against targets smoothed by :math:`\epsilon` (``label_smoothing``):
:math:`(1-\epsilon)\,\text{onehot}(y) + \epsilon / K`. The validation loss is the same weighted
cross-entropy without smoothing. ``extra_losses`` is where later methods (domain adaptation, EWC,
LwF, distillation) plug in: each is a callable or ``nn.Module`` with
``term(module, batch, outputs) -> scalar tensor``, ``outputs = {"features", "logits", "ce"}``;
``nn.Module`` terms are registered as submodules so their parameters are optimised too.

Optimiser: AdamW, weight decay on weights only (biases and norm parameters, i.e. 1-D tensors, get
none), backbone parameters at ``backbone_lr`` (default ``lr``). Schedule, per step :math:`s` of
:math:`S` with :math:`W` warm-up steps: :math:`\eta_s = \eta \cdot (s+1)/W` for :math:`s < W`, then
:math:`\eta_s = \eta \cdot \tfrac12 (1 + \cos(\pi (s - W) / (S - W)))`.

Frozen BatchNorm: a BatchNorm layer whose affine parameters all have ``requires_grad=False`` is
kept in eval mode whenever the module is put in train mode, so its running statistics do not move.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

LossTerm = Callable[["ClassifierModule", Any, dict], torch.Tensor]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier of step ``s``: linear warm-up to 1, then cosine decay to 0."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def mult(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return mult


def keep_frozen_batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm whose affine parameters are all frozen into eval mode (stats stay fixed)."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


class ClassifierModule(L.LightningModule):
    """``backbone`` (a :class:`~headstart.backbones.Backbone`, or ``None`` when inputs are features) + ``head``.

    ``forward(x)`` always returns logits ``(B, K)``, in train and eval mode alike. Per-epoch means of
    the loss and accuracy are accumulated on the device and logged as ``train_loss``,
    ``train_acc``, ``val_loss`` and ``val_acc``; :attr:`epoch_metrics` holds the latest values.
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        head: nn.Module,
        *,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-4,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        warmup_fraction: float = 0.05,
        extra_losses: Sequence[LossTerm] = (),
    ):
        super().__init__()
        if lr <= 0 or (backbone_lr is not None and backbone_lr < 0):
            raise ValueError(f"lr must be > 0 and backbone_lr >= 0; got lr={lr}, backbone_lr={backbone_lr}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}.")
        self.backbone = backbone
        self.head = head
        self.lr = float(lr)
        self.backbone_lr = float(backbone_lr) if backbone_lr is not None else None
        self.weight_decay = float(weight_decay)
        self.label_smoothing = float(label_smoothing)
        self.warmup_fraction = float(warmup_fraction)
        self.extra_losses: list[LossTerm] = list(extra_losses)
        self.loss_modules = nn.ModuleList([t for t in self.extra_losses if isinstance(t, nn.Module)])
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        self.register_buffer("class_weights", cw, persistent=False)
        self.epoch_metrics: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ forward and loss
    def backbone_frozen(self) -> bool:
        return self.backbone is not None and not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, D)``: the backbone's output, or ``x`` itself without a backbone."""
        if self.backbone is None:
            return x
        if self.backbone_frozen():
            with torch.no_grad():  # nothing to backpropagate into: save the graph's memory and time
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, smoothing: float | None = None) -> torch.Tensor:
        """Class-weighted cross-entropy (weighted mean), with ``label_smoothing`` unless ``smoothing`` is given."""
        eps = self.label_smoothing if smoothing is None else smoothing
        return F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=eps)

    # ------------------------------------------------------------------ train mode and frozen BN
    def train(self, mode: bool = True) -> "ClassifierModule":
        super().train(mode)
        if mode:
            keep_frozen_batchnorm_eval(self)
        return self

    def on_train_epoch_start(self) -> None:
        keep_frozen_batchnorm_eval(self)
        self._reset("train")

    # ------------------------------------------------------------------ steps
    def _accumulate(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.numel()
        s = torch.stack([loss.detach().float() * n, (logits.detach().argmax(1) == y).sum().float(), torch.tensor(float(n), device=y.device)])
        self._sums[stage] = s if stage not in self._sums else self._sums[stage] + s

    def _reset(self, stage: str) -> None:
        self._sums.pop(stage, None)

    def _finish(self, stage: str) -> None:
        s = self._sums.pop(stage, None)
        if s is None:
            return
        loss_sum, correct, n = s.tolist()
        metrics = {f"{stage}_loss": loss_sum / max(n, 1.0), f"{stage}_acc": correct / max(n, 1.0)}
        self.epoch_metrics.update(metrics)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        feats = self.features(x)
        logits = self.head(feats)
        ce = self.loss(logits, y)
        loss = ce
        if self.extra_losses:
            outputs = {"features": feats, "logits": logits, "ce": ce}
            for term in self.extra_losses:
                loss = loss + term(self, batch, outputs)
        self._accumulate("train", loss, logits, y)
        return loss

    def on_train_epoch_end(self) -> None:
        self._finish("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self._accumulate("val", self.loss(logits, y, smoothing=0.0), logits, y)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    # ------------------------------------------------------------------ optimiser
    def param_groups(self) -> list[dict]:
        """AdamW groups: (head + loss modules | backbone) x (decayed weights | 1-D params without decay).

        Frozen backbone parameters are included: AdamW skips tensors without gradients, and a
        strategy that unfreezes them later finds them already in the optimiser.
        """
        groups = []
        parts = [("head", [*self.head.parameters(), *self.loss_modules.parameters()], self.lr)]
        if self.backbone is not None:
            parts.append(("backbone", list(self.backbone.parameters()), self.backbone_lr if self.backbone_lr is not None else self.lr))
        for name, params, lr in parts:
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            if decay:
                groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": self.weight_decay})
            if no_decay:
                groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.param_groups(), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, round(self.warmup_fraction * total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
