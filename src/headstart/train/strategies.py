r"""Training strategies as plans of stages, run by one callback inside the one training loop.

A :class:`Stage` says how many top layer groups are trainable, the head's learning rate and one
learning rate per layer group, and for how many epochs at most. Every strategy is a list of stages:

* ``head_plan``: the head alone on a frozen backbone;
* ``finetune_plan`` (``finetune --unfreeze N|all``): the last ``N`` groups and the head from the
  start, the backbone at ``backbone_ratio`` times the head's rate, decayed layer-wise;
* ``recipe_plan`` (the default ``finetune``, after fastai's ``fine_tune``; Howard & Gugger 2020,
  arXiv:2002.04688): ``freeze_epochs`` of head warm-up on the frozen backbone, then every group
  unfrozen at half the rate with discriminative, layer-wise decayed rates;
* ``progressive_plan`` (gradual unfreezing, ULMFiT; Howard & Ruder 2018, arXiv:1801.06146): the
  head, then one more group from the top per stage; stage :math:`j` trains at
  :math:`\eta_j = \eta\,\gamma^j` (``stage_decay`` :math:`\gamma`), layer-wise decayed below.

:class:`StageCallback` runs a plan in a single ``Trainer.fit``: at an epoch's start it enters the
next stage when the previous one has ended (sets ``requires_grad`` per group, frozen BatchNorm to
eval, restarts the per-stage schedule with the stage's rates). A stage ends after its epochs, or
after ``patience`` epochs without a lower validation loss; with ``stop_on_plateau`` (progressive)
a stage that did not lower the best validation loss ends the run. Its state is plain data, saved
in checkpoints, so a resumed run continues in the same stage, at the same step of its schedule.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from .freeze import layerwise_lrs, set_trainable_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage: ``unfreeze`` top groups trainable (``None``: leave ``requires_grad`` as it is)."""

    name: str
    epochs: int
    unfreeze: int | None
    lr: float
    group_lrs: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def head_plan(epochs: int, lr: float) -> list[Stage]:
    return [Stage("head", int(epochs), 0, float(lr))]


def finetune_plan(n_groups: int, unfreeze: int, epochs: int, lr: float, *, backbone_ratio: float = 0.5, decay: float = 0.85) -> list[Stage]:
    lrs = tuple(layerwise_lrs(n_groups, lr * backbone_ratio, decay))
    return [Stage(f"unfreeze{unfreeze}" if unfreeze < n_groups else "unfreeze_all", int(epochs), int(unfreeze), float(lr), lrs)]


def recipe_plan(n_groups: int, epochs: int, lr: float, *, freeze_epochs: int = 1, backbone_ratio: float = 0.5, decay: float = 0.85) -> list[Stage]:
    half = lr / 2
    stages = [Stage("head_warmup", int(freeze_epochs), 0, float(lr))] if freeze_epochs > 0 else []
    return stages + [Stage("unfreeze_all", int(epochs), n_groups, half, tuple(layerwise_lrs(n_groups, half * backbone_ratio, decay)))]


def progressive_plan(
    n_groups: int, epochs_per_stage: int, lr: float, *, max_unfreeze: int | None = None,
    backbone_ratio: float = 0.1, decay: float = 0.7, stage_decay: float = 0.7,
) -> list[Stage]:
    top = n_groups if max_unfreeze is None else int(max_unfreeze)
    stages = [Stage("head", int(epochs_per_stage), 0, float(lr))]
    for j in range(1, top + 1):
        lr_j = lr * stage_decay**j
        stages.append(Stage(f"unfreeze{j}", int(epochs_per_stage), j, lr_j, tuple(layerwise_lrs(n_groups, lr_j * backbone_ratio, decay))))
    return stages


def frozen_prefix(stages: Sequence[Stage], n_groups: int) -> int:
    """Groups ``0 .. k-1`` frozen in every stage: where the activation cache can sit (0: nowhere)."""
    if any(s.unfreeze is None for s in stages):
        return 0
    return max(0, n_groups - max((s.unfreeze or 0) for s in stages)) if stages else 0


class StageCallback(Checkpoint):
    """Runs a plan of :class:`Stage` s in one ``Trainer.fit`` (a ``Checkpoint`` so that it runs after
    the module's epoch end, where the epoch's metrics are final, and before checkpoints are written)."""

    def __init__(self, stages: Sequence[Stage], *, patience: int | None = None, stop_on_plateau: bool = False, min_delta: float = 0.0):
        if not stages:
            raise ValueError("A training plan needs at least one stage.")
        self.stages = list(stages)
        self.patience = patience
        self.stop_on_plateau = bool(stop_on_plateau)
        self.min_delta = float(min_delta)
        self.index: int | None = None
        self.stage_start_epoch = 0
        self.pending = False
        self.best: float | None = None
        self.stage_improved = False
        self.since_improve = 0
        self.stopped_early = False

    @property
    def state_key(self) -> str:
        return "StageCallback"

    # -------------------------------------------------------------- stage entry
    def _enter(self, trainer: L.Trainer, module: Any, index: int) -> None:
        st = self.stages[index]
        self.index, self.stage_start_epoch, self.pending = index, int(trainer.current_epoch), False
        self.stage_improved, self.since_improve = False, 0
        bb = module.backbone
        if st.unfreeze is not None:
            set_trainable_groups(bb, st.unfreeze)
        module.train()  # frozen BatchNorm to eval, unfrozen back to train
        n_groups = len(st.group_lrs)
        base = []
        for g in trainer.optimizers[0].param_groups:
            gi = g.get("layer_group", -1)
            base.append(st.lr if gi < 0 or gi >= n_groups else st.group_lrs[gi])
        steps = int(st.epochs) * max(1, int(trainer.num_training_batches))
        trainer.lr_scheduler_configs[0].scheduler.begin_stage(base, steps)
        module.stage = {"index": index, "name": st.name, "unfreeze": st.unfreeze}
        if len(self.stages) > 1 or st.unfreeze:
            log.info(
                "stage %d/%d %r: %s trainable, head lr %.3g, up to %d epoch(s)", index + 1, len(self.stages), st.name,
                "head only" if not st.unfreeze else f"last {st.unfreeze} layer group(s)", st.lr, st.epochs,
            )

    def upcoming(self) -> int:
        """The stage the next training epoch runs in (data for it is set up before the epoch starts)."""
        return 0 if self.index is None else self.index + 1 if self.pending else self.index

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.index is None:
            self._enter(trainer, pl_module, 0)
        elif self.pending:
            self._enter(trainer, pl_module, self.index + 1)

    # -------------------------------------------------------------- stage end
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.index is None:
            return
        m = pl_module.epoch_metrics
        val = m.get("val_loss") if trainer.val_dataloaders is not None else None
        if val is not None:
            if self.best is None or val < self.best - self.min_delta:
                self.best, self.stage_improved, self.since_improve = float(val), True, 0
            else:
                self.since_improve += 1
        st = self.stages[self.index]
        done_epochs = int(trainer.current_epoch) + 1 - self.stage_start_epoch
        plateau = val is not None and self.patience is not None and self.since_improve >= self.patience
        if done_epochs < st.epochs and not plateau:
            return
        last = self.index == len(self.stages) - 1
        no_gain = self.stop_on_plateau and val is not None and not self.stage_improved
        if last or no_gain:
            trainer.should_stop = True
            self.stopped_early = bool(plateau or (no_gain and not last))
            if no_gain and not last:
                log.info("stage %r did not improve the validation loss: stopping", st.name)
        else:
            self.pending = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "stage_start_epoch": self.stage_start_epoch, "pending": self.pending, "best": self.best,
            "stage_improved": self.stage_improved, "since_improve": self.since_improve, "stopped_early": self.stopped_early,
            "stages": [s.to_dict() for s in self.stages],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [Stage(**{**s, "group_lrs": tuple(s["group_lrs"])}) for s in state_dict.get("stages", [])]
        if saved and saved != self.stages:
            raise ValueError("The checkpoint was written by a different training plan; resume with the run's own settings.")
        for k in ("index", "stage_start_epoch", "pending", "best", "stage_improved", "since_improve", "stopped_early"):
            setattr(self, k, state_dict.get(k, getattr(self, k)))
