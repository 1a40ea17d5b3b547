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
none); one (decay, no-decay) pair of parameter groups for the head and one per backbone layer
group, so each layer group can have its own learning rate (``group_lrs``, layer-wise decay; see
:mod:`.freeze`); backbone parameters default to ``backbone_lr`` (default ``lr``). Schedule: warm-up
+ cosine or one-cycle per training stage (:mod:`.schedule`), stepped every optimiser step.

Frozen BatchNorm: a BatchNorm layer whose affine parameters all have ``requires_grad=False`` is
kept in eval mode whenever the module is put in train mode, so its running statistics do not move
(``train_bn=True`` lets them update). ``bn_stats_frozen=True`` keeps *every* BatchNorm in eval mode
(running statistics fixed, affine parameters trained): the features the head sees in training are
then the same function as at inference, which small-batch fine-tuning from a linear probe needs. The freeze state (``requires_grad`` per parameter) is saved in
every checkpoint and restored on load, before training resumes.

``start_group=k`` makes the module take the activations entering layer group ``k`` as input
(``backbone.forward_from(k, h)``): the activation cache of a frozen prefix (:mod:`.cache`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .freeze import freeze_state, group_index_of_params, load_freeze_state
from .schedule import StageLR, multiplier, warmup_cosine

LossTerm = Callable[["ClassifierModule", Any, dict], torch.Tensor]
__all__ = ["ClassifierModule", "LossTerm", "keep_frozen_batchnorm_eval", "warmup_cosine", "multiplier"]


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
        group_lrs: Sequence[float] | None = None,
        schedule: str = "cosine",
        train_bn: bool = False,
        bn_stats_frozen: bool = False,
        start_group: int = 0,
        criterion: Callable[["ClassifierModule", torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        task_of_class: Sequence[int] | None = None,
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
        multiplier(schedule, 1, warmup_fraction)  # validates the schedule's name
        self.schedule = schedule
        self.group_lrs = [float(v) for v in group_lrs] if group_lrs is not None else None
        self.train_bn = bool(train_bn)
        self.bn_stats_frozen = bool(bn_stats_frozen)
        self.start_group = int(start_group)
        self.stage: dict[str, Any] = {}
        self.criterion = criterion  # a method's training loss (headstart.methods); validation keeps cross-entropy
        self.extra_losses: list[LossTerm] = list(extra_losses)
        self.loss_modules = nn.ModuleList([t for t in self.extra_losses if isinstance(t, nn.Module)])
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        self.register_buffer("class_weights", cw, persistent=False)
        tasks = None if task_of_class is None else torch.as_tensor(task_of_class, dtype=torch.long).reshape(-1)
        self.register_buffer("task_of_class", tasks, persistent=False)
        self.epoch_metrics: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ forward and loss
    def backbone_frozen(self) -> bool:
        return self.backbone is not None and not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, D)``: the backbone's output, or ``x`` itself without a backbone."""
        if self.backbone is None:
            return x
        run = self.backbone if self.start_group == 0 else (lambda h: self.backbone.forward_from(self.start_group, h))
        if self.backbone_frozen():
            with torch.no_grad():  # nothing to backpropagate into: save the graph's memory and time
                return run(x)
        return run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, smoothing: float | None = None) -> torch.Tensor:
        """Class-weighted cross-entropy (weighted mean), with ``label_smoothing`` unless ``smoothing`` is given;
        task-incremental (``task_of_class``): over each item's own task's classes."""
        eps = self.label_smoothing if smoothing is None else smoothing
        if self.task_of_class is None:
            return F.cross_entropy(logits, y, weight=self.class_weights, label_smoothing=eps)
        return task_cross_entropy(self.task_logits(logits, y), y, weight=self.class_weights, label_smoothing=eps)

    def task_logits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``logits`` with each item's classes outside its own task (the task of its label) at -inf; unchanged
        without ``task_of_class`` (class-incremental: one head over every class)."""
        if self.task_of_class is None:
            return logits
        t = self.task_of_class
        return logits.masked_fill(t[None, :] != t[y][:, None], float("-inf"))

    # ------------------------------------------------------------------ train mode and frozen BN
    def train(self, mode: bool = True) -> "ClassifierModule":
        super().train(mode)
        if mode:
            self._bn_modes()
        return self

    def _bn_modes(self) -> None:
        if self.bn_stats_frozen:  # every BatchNorm normalises with its running statistics; affine params still train
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        elif not self.train_bn:
            keep_frozen_batchnorm_eval(self)

    def on_train_epoch_start(self) -> None:
        self._bn_modes()
        self._reset("train")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Under DDP every parameter is registered when the model is wrapped (so that groups unfrozen
        # later are all-reduced too); the reducer may hand frozen ones a zero gradient, on which AdamW
        # would still apply weight decay. A frozen parameter gets no update at all.
        for group in optimizer.param_groups:
            for p in group["params"]:
                if not p.requires_grad and p.grad is not None:
                    p.grad = None

    # ------------------------------------------------------------------ checkpoints keep the freeze state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["headstart"] = {"requires_grad": freeze_state(self), "stage": dict(self.stage)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("headstart")
        if saved:
            load_freeze_state(self, saved["requires_grad"])
            self.stage = dict(saved.get("stage", {}))
            self.train(self.training)  # frozen BatchNorm back to eval at once

    # ------------------------------------------------------------------ steps
    def _accumulate(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.numel()
        s = torch.stack([loss.detach().float() * n, (self.task_logits(logits.detach(), y).argmax(1) == y).sum().float(), torch.tensor(float(n), device=y.device)])
        self._sums[stage] = s if stage not in self._sums else self._sums[stage] + s

    def _reset(self, stage: str) -> None:
        self._sums.pop(stage, None)

    def _finish(self, stage: str) -> None:
        s = self._sums.pop(stage, None)
        if s is None:
            return
        if self._trainer is not None and self.trainer.world_size > 1:
            s = self.trainer.strategy.reduce(s, reduce_op="sum")  # exact global means under DDP
        loss_sum, correct, n = s.tolist()
        metrics = {f"{stage}_loss": loss_sum / max(n, 1.0), f"{stage}_acc": correct / max(n, 1.0)}
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.epoch_metrics.update(metrics, **{f"{stage}_n": int(n)})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        feats = self.features(x)
        logits = self.head(feats)
        ce = self.loss(logits, y) if self.criterion is None else self.criterion(self, self.task_logits(logits, y), y)
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
        """AdamW groups: (head + loss modules | each backbone layer group) x (decayed weights | 1-D params).

        Every group carries ``layer_group`` (-1 for the head, else the layer-group index) so that a
        stage can set its learning rate. Frozen backbone parameters are included: AdamW skips
        tensors without gradients, and a stage that unfreezes them finds them already in the
        optimiser (the groups never change, so optimiser states always load back).
        """
        parts: list[tuple[str, int, list, float]] = [("head", -1, [*self.head.parameters(), *self.loss_modules.parameters()], self.lr)]
        if self.backbone is not None:
            default = self.backbone_lr if self.backbone_lr is not None else self.lr
            gidx = group_index_of_params(self.backbone) if hasattr(self.backbone, "layer_groups") else {}
            n = max(gidx.values(), default=-1) + 1
            if self.group_lrs is not None and len(self.group_lrs) != n:
                raise ValueError(f"group_lrs has {len(self.group_lrs)} rates but the backbone has {n} layer groups.")
            buckets: dict[int, list] = {i: [] for i in range(n)}
            other = []
            for p in self.backbone.parameters():
                (buckets[gidx[id(p)]] if id(p) in gidx else other).append(p)
            for i in range(n):
                parts.append((f"group{i}", i, buckets[i], self.group_lrs[i] if self.group_lrs is not None else default))
            if other:
                parts.append(("backbone", n, other, default))
        groups = []
        for name, gi, params, lr in parts:
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            if decay:
                groups.append({"name": name, "layer_group": gi, "params": decay, "lr": lr, "weight_decay": self.weight_decay})
            if no_decay:
                groups.append({"name": f"{name}_no_decay", "layer_group": gi, "params": no_decay, "lr": lr, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.param_groups(), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        sched = StageLR(opt, total_steps=total, kind=self.schedule, warmup_fraction=self.warmup_fraction)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def task_cross_entropy(logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits where classes outside each item's task are -inf: the smoothing mass is spread
    over the item's own task's classes only (``F.cross_entropy`` would spread it over -inf logits too:
    an infinite loss); the class-weighted mean as ``F.cross_entropy`` takes it (weights of the targets)."""
    logp = torch.log_softmax(logits, 1)
    allowed = torch.isfinite(logits)
    nll = -logp.gather(1, y[:, None])[:, 0]
    per = nll
    if label_smoothing:
        smooth = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
        per = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    w = weight[y] if weight is not None else torch.ones_like(per)
    return (w * per).sum() / w.sum()
