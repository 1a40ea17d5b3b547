"""The one training loop: :func:`train_classifier`, a thin, quiet wrapper around ``lightning.Trainer``.

Every method is a loss term (``ClassifierModule.extra_losses``) or a callback plugged in here,
never a loop of its own. What this adds to a plain ``Trainer.fit``:

* seeding (``L.seed_everything(seed, workers=True)``) and deterministic algorithms where torch has
  them, with torch's global determinism flags and ``CUBLAS_WORKSPACE_CONFIG`` restored afterwards;
* freezing (``trainable="head"``): backbone ``requires_grad=False`` and its BatchNorm layers kept
  in eval mode; the caller's ``requires_grad`` flags are restored at the end;
* the best weights by validation accuracy and loss (:mod:`.selection`) kept in memory (:class:`BestWeights`, a Lightning
  ``Checkpoint`` that writes nothing itself; they also travel in the resume checkpoints) and
  restored at the end; early stopping on ``val_loss``;
* training plans of stages (:mod:`.strategies`: finetune, progressive, the default recipe) run by
  one callback, with per-stage schedules and layer-wise learning rates;
* resumable runs: ``last.ckpt`` written atomically after every epoch (:mod:`.checkpoint`), the
  freeze state and optimiser groups restored exactly on resume;
* CPU, GPU, mixed precision and DDP through the ``Trainer``'s own arguments;
* one history row per epoch; Lightning's info logs and routine warnings silenced for this call
  only (nothing is changed at import time).

``backbone`` and ``head`` are trained in place, returned to the device they came from and left in
eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import os
import time
import warnings
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from torch import nn

from ..errors import HeadstartError
from .checkpoint import AtomicCheckpointIO, LastCheckpoint, last_checkpoint
from .freeze import num_groups, trainable_group_count
from .module import ClassifierModule, LossTerm
from .selection import KEEP_RULES, Score, better, keeps_latest, why
from .strategies import Stage, StageCallback

log = logging.getLogger(__name__)

TRAINABLE = ("all", "head")
LOGGERS = ("csv", "tensorboard", "mlflow")

# Routine Lightning messages that say nothing about the user's problem.
_QUIET_MESSAGES = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*TPU available but not used.*",
    r".*`validation_step` but have no `val_dataloader`.*",
    r".*does not have a deterministic implementation.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*LeafSpec.*",
    r".*module\(s\) in eval mode at the start of training.*",  # frozen BatchNorm, on purpose
)


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns.

    ``history``: one dict per epoch with ``epoch`` (0-based), ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc`` (``None`` without a validation loader), ``lr`` (head learning rate at
    the epoch's end) and ``seconds``. ``best_epoch``: the epoch whose weights were restored (the
    last one without validation). ``seconds``: wall time of the whole call; ``steps``: optimiser steps.
    Rows also carry ``stage``/``stage_name``/``unfrozen_groups`` and ``backbone_lr`` (the top layer
    group's rate). ``global_rank``: this process's rank (0 without DDP); ``stages``: the plan run.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False
    global_rank: int = 0
    stages: list[dict] = field(default_factory=list)
    kept: str = ""


class BestWeights(Checkpoint):
    """Keeps the weights of the best epoch in memory (CPU) and the history rows.

    Best: by validation accuracy and loss together (:func:`.selection.better`); without validation,
    the last epoch. ``initial`` scores the starting weights (e.g. the linear probe's head): they are
    the incumbent (epoch -1) until an epoch beats them. ``reason`` says, at the end, which weights
    were kept and why. A ``Checkpoint`` so that Lightning runs it after
    ``LightningModule.on_train_epoch_end`` (where the epoch's metrics are finished) and after early
    stopping; it writes no file.
    """

    def __init__(self, initial: Score | None = None, keep: str = "best") -> None:
        self.initial = initial
        self.keep = keep
        self.top: Score | None = None  # keep="latest": the best validation accuracy seen (initial included)
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_val_loss: float | None = None
        self.best_score: Score | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.initial_state: dict[str, torch.Tensor] | None = None  # keep="final": the starting weights, to fall back to
        self._t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not again on resume (the state has it).
        if self.initial is not None and self.best_epoch is None and not self.history:
            self.best_epoch, self.best_val_loss, self.best_score = -1, float(self.initial.loss), self.initial
            self.top = self.initial
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            if self.keep == "final":
                self.initial_state = self.best_state

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = pl_module.epoch_metrics
        val_ran = trainer.val_dataloaders is not None and "val_loss" in m
        row = {
            "epoch": int(trainer.current_epoch),
            "train_loss": m.get("train_loss"),
            "train_acc": m.get("train_acc"),
            "val_loss": m.get("val_loss") if val_ran else None,
            "val_acc": m.get("val_acc") if val_ran else None,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None,
            "backbone_lr": _top_group_lr(trainer) if pl_module.backbone is not None and trainable_group_count(pl_module.backbone) else None,
            "stage": pl_module.stage.get("index"),
            "stage_name": pl_module.stage.get("name"),
            "unfrozen_groups": trainable_group_count(pl_module.backbone) if pl_module.backbone is not None else None,
            "seconds": time.perf_counter() - self._t0,
        }
        self.history.append(row)
        log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if row["val_loss"] is None:
            self.best_epoch = row["epoch"]  # no validation: the last epoch is the result
            return
        score = Score(float(row["val_acc"]), float(row["val_loss"]), int(m.get("val_n", 1)))
        if self.keep == "latest":
            self.top = score if self.top is None or score.acc > self.top.acc else self.top
            replace = keeps_latest(score, self.top)
        elif self.keep == "final":  # this epoch against the starting weights only; the last epoch run decides
            if self.initial is not None and not better(score, self.initial):
                self.best_epoch, self.best_val_loss, self.best_score, self.best_state = -1, float(self.initial.loss), self.initial, self.initial_state
                return
            replace = True
        else:
            replace = self.best_score is None or better(score, self.best_score)
        if replace:
            self.best_epoch, self.best_val_loss, self.best_score = row["epoch"], score.loss, score
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    @property
    def reason(self) -> str:
        """Which weights were kept and why, against the starting weights (or the last epoch)."""
        if self.best_score is None or not self.history:
            return "no validation: kept the last epoch" if self.history else "no epoch ran"
        best = f"epoch {self.best_epoch}" if self.best_epoch != -1 else "the starting weights (linear probe)"
        if self.keep == "final":
            last = self.history[-1]
            if self.initial is None:
                return f"kept the final epoch {last['epoch']} (val acc {self.best_score.acc:.4f}, loss {self.best_score.loss:.4f}): keep rule 'final'"
            final = Score(float(last["val_acc"]), float(last["val_loss"]), self.initial.n)
            return why(final, self.initial, new_name=f"the final epoch {last['epoch']}", old_name="the starting weights (linear probe)") + (
                " (keep rule 'final': only the end of the schedule is compared with the starting weights)")
        if self.keep == "latest":
            last = self.history[-1]["epoch"]
            return (f"kept {best} (val acc {self.best_score.acc:.4f}): the latest weights whose validation accuracy is within one "
                    f"standard error of the best seen ({self.top.acc:.4f})" + ("" if self.best_epoch == last else f"; epoch {last} fell below it"))
        if self.initial is not None and self.best_epoch != -1:
            return why(self.best_score, self.initial, new_name=best, old_name="the starting weights (linear probe)")
        rows = [r for r in self.history if r["val_loss"] is not None and r["epoch"] != self.best_epoch]
        if not rows:
            return f"kept {best}: the only scored weights"
        last = rows[-1]
        other = Score(float(last["val_acc"]), float(last["val_loss"]), self.best_score.n)
        return why(self.best_score, other, new_name=best, old_name=f"epoch {last['epoch']}")

    def state_dict(self) -> dict[str, Any]:
        # The best weights travel in the checkpoint: a resumed run still ends on the best epoch's weights.
        score = None if self.best_score is None else [self.best_score.acc, self.best_score.loss, self.best_score.n]
        top = None if self.top is None else [self.top.acc, self.top.loss, self.top.n]
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss, "best_score": score, "top": top,
                "history": copy.deepcopy(self.history), "best_state": self.best_state, "initial_state": self.initial_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch = state_dict.get("best_epoch")
        self.best_val_loss = state_dict.get("best_val_loss")
        score = state_dict.get("best_score")
        self.best_score = Score(float(score[0]), float(score[1]), int(score[2])) if score else None
        top = state_dict.get("top")
        self.top = Score(float(top[0]), float(top[1]), int(top[2])) if top else None
        self.history = list(state_dict.get("history", []))
        self.best_state = state_dict.get("best_state")
        self.initial_state = state_dict.get("initial_state")


@contextlib.contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Silence Lightning's info logs and routine warnings inside the block; restore everything after."""
    if not enabled:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for msg in _QUIET_MESSAGES:
                warnings.filterwarnings("ignore", message=msg)
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


@contextlib.contextmanager
def _restore_torch_globals() -> Iterator[None]:
    """Undo what ``Trainer(deterministic=...)`` changes globally once the call is over."""
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det, cudnn_bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _top_group_lr(trainer: L.Trainer) -> float | None:
    if not trainer.optimizers:
        return None
    # layer groups only: parameters outside them (e.g. the unused source classifier) sit in a "backbone" group
    groups = [g for g in trainer.optimizers[0].param_groups if g.get("layer_group", -1) >= 0 and str(g.get("name", "")).startswith("group")]
    return float(max(groups, key=lambda g: g["layer_group"])["lr"]) if groups else None


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _make_loggers(log_dir: str | os.PathLike | None, logger: str | Sequence[str] | None) -> Any:
    """CSV always (when there is a ``log_dir``); ``tensorboard`` / ``mlflow`` on request."""
    kinds = [logger] if isinstance(logger, str) else list(logger or [])
    bad = [k for k in kinds if k not in LOGGERS]
    if bad:
        raise ValueError(f"The 'logger' parameter must be one of {set(LOGGERS)}; got {bad[0]!r}.")
    if log_dir is None:
        if any(k != "csv" for k in kinds):
            raise ValueError("TensorBoard and MLflow logs need a folder: pass log_dir (fit writes them into the run folder).")
        return False
    from lightning.pytorch.loggers import CSVLogger

    out: list[Any] = [CSVLogger(save_dir=str(log_dir), name="", version="")]
    if "tensorboard" in kinds:
        from lightning.pytorch.loggers import TensorBoardLogger

        try:
            out.append(TensorBoardLogger(save_dir=str(log_dir), name="tensorboard", version=""))
        except ModuleNotFoundError as e:
            raise HeadstartError("The TensorBoard logger needs tensorboard: pip install tensorboard (or pip install 'headstart[tensorboard]').") from e
    if "mlflow" in kinds:
        from lightning.pytorch.loggers import MLFlowLogger

        try:
            out.append(MLFlowLogger(experiment_name="headstart", tracking_uri=Path(log_dir, "mlruns").resolve().as_uri()))
        except ModuleNotFoundError as e:
            raise HeadstartError("The MLflow logger needs mlflow: pip install mlflow-skinny (or pip install 'headstart[mlflow]').") from e
    return out


@dataclass(frozen=True)
class LoopConfig:
    """How :func:`train_classifier` optimises (see its docstring for each field)."""

    epochs: int = 10
    lr: float = 1e-3
    backbone_lr: float | None = None
    weight_decay: float = 1e-4
    trainable: str = "all"
    stages: Sequence[Stage] | None = None
    stop_on_plateau: bool = False
    schedule: str = "cosine"
    class_weights: Any = None
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    train_bn: bool = False
    bn_stats_frozen: bool = False
    start_group: int = 0
    patience: int | None = None
    seed: int = 0
    max_time: float | None = None
    keep: str = "best"
    task_of_class: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"The 'keep' parameter must be one of {set(KEEP_RULES)}; got {self.keep!r}.")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"The 'trainable' parameter must be one of {set(TRAINABLE)}; got {self.trainable!r}.")
        if self.stages is None and int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1; got {self.epochs}.")


@dataclass(frozen=True)
class LoopRuntime:
    """Where :func:`train_classifier` runs and what it writes (see its docstring for each field)."""

    log_dir: str | os.PathLike | None = None
    logger: str | Sequence[str] | None = "csv"
    checkpoint_dir: str | os.PathLike | None = None
    resume: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    dist: str = "auto"
    precision: str | None = None
    sync_batchnorm: bool = False
    progress: bool = False
    quiet: bool = True


def loop_settings(config: LoopConfig | None, runtime: LoopRuntime | None, options: dict[str, Any]) -> tuple[LoopConfig, LoopRuntime]:
    """``config`` and ``runtime`` (defaults when ``None``) with ``options`` (fields of either, by name) applied."""
    config, runtime = config or LoopConfig(), runtime or LoopRuntime()
    names_c, names_r = {f.name for f in fields(LoopConfig)}, {f.name for f in fields(LoopRuntime)}
    unknown = sorted(set(options) - names_c - names_r)
    if unknown:
        raise TypeError(f"train_classifier() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return (dataclasses.replace(config, **{k: v for k, v in options.items() if k in names_c}),
            dataclasses.replace(runtime, **{k: v for k, v in options.items() if k in names_r}))


def train_classifier(
    backbone: nn.Module | None,
    head: nn.Module,
    train_loader: Any,
    val_loader: Any = None,
    config: LoopConfig | None = None,
    runtime: LoopRuntime | None = None,
    *,
    initial: Score | None = None,
    criterion: Any = None,
    extra_losses: Sequence[LossTerm] = (),
    callbacks: Sequence[Callback] = (),
    staged: Any = None,
    **options: Any,
) -> TrainResult:
    """Train ``head`` (on ``backbone`` features, or on feature batches when ``backbone`` is None).

    Loaders yield ``(inputs, labels)`` batches (``inputs`` a tensor or a dict of tensors).
    ``config`` (:class:`LoopConfig`: how to optimise) and ``runtime`` (:class:`LoopRuntime`: where it
    runs and what it writes); ``options``: any of their fields by name, on top of them
    (``train_classifier(bb, head, tl, vl, epochs=3, lr=1e-2)``). The fields:

    ``trainable``: ``"all"`` trains backbone and head, ``"head"`` freezes the backbone (weights
    and BatchNorm statistics). ``stages``: a plan from :mod:`.strategies` (finetune, progressive,
    the default recipe); it replaces ``epochs``/``trainable``/``backbone_lr`` and runs in this one
    ``Trainer.fit``; ``stop_on_plateau`` ends the run after a stage that did not lower the
    validation loss. ``backbone_lr`` defaults to ``lr``. ``schedule``: ``cosine`` or
    ``onecycle``, restarted per stage. ``class_weights``: ``K`` loss weights (see
    :func:`headstart.heads.resolve_class_weight` for ``"balanced"``). ``clip_grad``: clip the
    gradient norm. ``train_bn``: let frozen BatchNorm layers update their statistics;
    ``bn_stats_frozen``: keep every BatchNorm's running statistics (all BN layers in eval mode).
    ``start_group=k``: inputs are the cached activations entering layer group ``k`` (:mod:`.cache`).
    ``patience``: end a stage (the run, for a single stage) after that many epochs without a lower
    ``val_loss`` (needs ``val_loader``). ``max_time``: seconds. ``log_dir``: Lightning's
    ``metrics.csv`` there, plus ``logger="tensorboard"``/``"mlflow"`` logs. ``checkpoint_dir``:
    write ``last.ckpt`` there after every epoch (atomically); ``resume=True`` continues from it.
    ``accelerator``/``devices``/``dist``/``precision``: Lightning's ``Trainer`` arguments
    (``dist`` is its ``strategy``, e.g. ``"ddp"``); ``sync_batchnorm``: BatchNorm statistics over all
    processes (plain ``BatchNorm`` layers; converted back after training). ``initial``:
    the validation :class:`~.selection.Score` of the starting weights (e.g. a linear probe's); they
    are kept (``best_epoch == -1``) unless an epoch beats them by :func:`~.selection.better`, the rule
    that also picks the best epoch. ``keep="latest"`` (domain adaptation) keeps the latest weights
    whose validation accuracy is within one standard error of the best seen (:func:`~.selection.keeps_latest`);
    ``keep="final"`` compares only the last epoch run with ``initial`` and keeps the better of the two
    (no epoch is compared with another; without ``initial``, the last epoch).
    ``criterion``: a method's training loss in place of cross-entropy (validation keeps cross-entropy).
    ``task_of_class``: the task of each class (task-incremental learning, ``fit --from RUN --heads
    separate``): losses and accuracies over each item's own task's classes only.
    ``extra_losses``/``callbacks``: loss terms and Lightning callbacks of the methods built on
    this loop. ``staged``: a :class:`~.cache.StagedActivations` that gives each stage loaders over
    the activations at its own frozen boundary (``train_loader``/``val_loader`` are then ignored).
    See :mod:`.module` for the loss, optimiser and schedule.
    """
    c, r = loop_settings(config, runtime, options)
    stages = c.stages
    has_val = val_loader is not None or (staged is not None and staged.val is not None)
    if c.patience is not None and not has_val:
        raise ValueError("Early stopping ('patience') monitors the validation loss: pass a val_loader, or patience=None.")
    if isinstance(c.class_weights, str):
        raise ValueError(
            f"class_weights must be a sequence of per-class weights here; got {c.class_weights!r}. "
            "Use headstart.heads.resolve_class_weight('balanced', labels, num_classes) to compute them."
        )
    if r.resume and r.checkpoint_dir is None:
        raise ValueError("resume=True continues from checkpoint_dir/last.ckpt: pass checkpoint_dir.")
    n_groups = num_groups(backbone)
    if stages is None:
        bb_lr = c.backbone_lr if c.backbone_lr is not None else c.lr
        stages = [Stage("train", int(c.epochs), 0 if (c.trainable == "head" and backbone is not None) else None, float(c.lr), (float(bb_lr),) * n_groups)]
    stages = list(stages)
    if any(s.epochs < 1 for s in stages):
        raise ValueError(f"Every stage needs at least one epoch; got {[s.epochs for s in stages]}.")
    if c.start_group and any(s.unfreeze is None or s.unfreeze > n_groups - c.start_group for s in stages):
        raise ValueError(f"start_group={c.start_group}: a stage unfreezes layer groups below the cached boundary.")
    t_start = time.perf_counter()
    device = _device_of(head)
    saved_flags = [(p, p.requires_grad) for p in backbone.parameters()] if backbone is not None else []

    module = (ClassifierModule if staged is None else _StagedModule)(
        backbone, head, lr=c.lr, backbone_lr=c.backbone_lr, weight_decay=c.weight_decay,
        class_weights=c.class_weights, label_smoothing=c.label_smoothing, extra_losses=extra_losses, criterion=criterion,
        group_lrs=[stages[0].group_lrs[i] for i in range(n_groups)] if len(stages[0].group_lrs) == n_groups else None,
        schedule=c.schedule, train_bn=c.train_bn, bn_stats_frozen=c.bn_stats_frozen, start_group=c.start_group, task_of_class=c.task_of_class,
    )
    staging = StageCallback(stages, patience=c.patience, stop_on_plateau=c.stop_on_plateau)
    if staged is not None:
        module.staged, module.staging, module.n_groups = staged, staging, n_groups
        train_loader = val_loader = None  # the module's hooks give each stage its own
    best = BestWeights(initial if has_val else None, keep=c.keep)
    cbs: list[Callback] = [*callbacks, staging, best]
    ckpt_path = None
    if r.checkpoint_dir is not None:
        cbs.append(LastCheckpoint(r.checkpoint_dir))
        if r.resume:
            ckpt_path = last_checkpoint(r.checkpoint_dir)
            if ckpt_path is None:
                log.info("no checkpoint in %s yet: starting from the beginning", r.checkpoint_dir)
    loggers = _make_loggers(r.log_dir, r.logger)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)

    try:
        with quiet_lightning(r.quiet), _restore_torch_globals():
            L.seed_everything(c.seed, workers=True, verbose=False)
            trainer = L.Trainer(
                accelerator=r.accelerator, devices=r.devices, strategy=_dist_strategy(r.dist, stages), precision=r.precision,
                max_epochs=sum(s.epochs for s in stages),
                max_time=datetime.timedelta(seconds=float(c.max_time)) if c.max_time is not None else None,
                deterministic="warn", logger=loggers, callbacks=cbs, enable_checkpointing=True,
                enable_progress_bar=r.progress, enable_model_summary=False, num_sanity_val_steps=0,
                gradient_clip_val=c.clip_grad, sync_batchnorm=bool(r.sync_batchnorm),
                default_root_dir=str(r.log_dir) if r.log_dir is not None else None,
                plugins=[AtomicCheckpointIO()], reload_dataloaders_every_n_epochs=1 if staged is not None else 0,
            )
            module.train()  # Lightning keeps the modes it is given; frozen BatchNorm stays in eval
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                        ckpt_path=str(ckpt_path) if ckpt_path is not None else None, weights_only=True)
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)

    if best.best_state is not None:
        sd = {k: v.to(device) for k, v in best.best_state.items()}
        module.load_state_dict(sd)
    if r.sync_batchnorm:
        _undo_sync_batchnorm(module)
    module.to(device).eval()
    return TrainResult(
        history=best.history, best_epoch=best.best_epoch, best_val_loss=best.best_val_loss,
        seconds=time.perf_counter() - t_start, steps=int(trainer.global_step), stopped_early=bool(staging.stopped_early),
        global_rank=int(trainer.global_rank), stages=[s.to_dict() for s in stages], kept=best.reason,
    )


class _StagedModule(ClassifierModule):
    """A :class:`ClassifierModule` whose data come from the current stage's activation cache."""

    staged: Any = None
    staging: Any = None
    n_groups: int = 0

    def train_dataloader(self) -> Any:
        unfreeze = self.staging.stages[self.staging.upcoming()].unfreeze
        self.start_group = self.n_groups - int(unfreeze or 0) if unfreeze is not None else 0
        return self.staged.loaders(self.start_group)[0]

    def val_dataloader(self) -> Any:
        return self.staged.loaders(self.start_group)[1]


def _dist_strategy(dist: str | None, stages: Sequence[Stage]) -> Any:
    """Lightning's strategy. DDP registers gradient hooks for the parameters trainable when it wraps the
    model; a plan that freezes or unfreezes groups needs ``find_unused_parameters`` (the frozen ones
    get no gradient)."""
    if not dist:
        return "auto"
    if isinstance(dist, str) and dist.startswith("ddp") and "find_unused" not in dist and any(s.unfreeze is not None for s in stages):
        from lightning.pytorch.strategies import StrategyRegistry

        name = f"{dist}_find_unused_parameters_true"
        if name in StrategyRegistry:
            return name
    return dist


def _undo_sync_batchnorm(module: nn.Module) -> None:
    """Lightning converts BatchNorm to SyncBatchNorm in place for DDP; convert back so the model saves and runs alone."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            _undo_sync_batchnorm(child)
