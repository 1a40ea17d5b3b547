"""The one training loop: :func:`train_classifier`, a thin, quiet wrapper around ``lightning.Trainer``.

Every method is a loss term (``ClassifierModule.extra_losses``) or a callback plugged in here,
never a loop of its own. What this adds to a plain ``Trainer.fit``:

* seeding (``L.seed_everything(seed, workers=True)``) and deterministic algorithms where torch has
  them, with torch's global determinism flags and ``CUBLAS_WORKSPACE_CONFIG`` restored afterwards;
* freezing (``trainable="head"``): backbone ``requires_grad=False`` and its BatchNorm layers kept
  in eval mode; the caller's ``requires_grad`` flags are restored at the end;
* the best weights by validation loss kept in memory (:class:`BestWeights`, a Lightning
  ``Checkpoint`` that writes nothing) and restored at the end; early stopping on ``val_loss``;
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
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from torch import nn

from .module import ClassifierModule, LossTerm

log = logging.getLogger(__name__)

TRAINABLE = ("all", "head")

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
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False


class BestWeights(Checkpoint):
    """Keeps the weights of the epoch with the lowest ``val_loss`` in memory (CPU) and the history rows.

    A ``Checkpoint`` so that Lightning runs it after ``LightningModule.on_train_epoch_end`` (where the
    epoch's metrics are finished) and after early stopping; it writes no file.
    """

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_val_loss: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._t0 = 0.0

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
            "seconds": time.perf_counter() - self._t0,
        }
        self.history.append(row)
        log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if row["val_loss"] is None:
            self.best_epoch = row["epoch"]  # no validation: the last epoch is the result
        elif self.best_val_loss is None or row["val_loss"] < self.best_val_loss:
            self.best_epoch, self.best_val_loss = row["epoch"], row["val_loss"]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss, "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch = state_dict.get("best_epoch")
        self.best_val_loss = state_dict.get("best_val_loss")
        self.history = list(state_dict.get("history", []))


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


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def train_classifier(
    backbone: nn.Module | None,
    head: nn.Module,
    train_loader: Any,
    val_loader: Any = None,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    backbone_lr: float | None = None,
    weight_decay: float = 1e-4,
    trainable: str = "all",
    class_weights: Sequence[float] | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
    log_dir: str | os.PathLike | None = None,
    progress: bool = False,
    max_time: float | None = None,
    extra_losses: Sequence[LossTerm] = (),
    callbacks: Sequence[Callback] = (),
    quiet: bool = True,
) -> TrainResult:
    """Train ``head`` (on ``backbone`` features, or on feature batches when ``backbone`` is None).

    Loaders yield ``(inputs, labels)`` batches. ``trainable``: ``"all"`` trains backbone and head,
    ``"head"`` freezes the backbone (weights and BatchNorm statistics). ``backbone_lr`` defaults
    to ``lr``. ``class_weights``: ``K`` loss weights (see
    :func:`headstart.heads.resolve_class_weight` for ``"balanced"``). ``patience``: stop after that
    many epochs without a lower ``val_loss`` (needs ``val_loader``). ``max_time``: seconds.
    ``log_dir``: write Lightning's ``metrics.csv`` there. ``extra_losses``/``callbacks``: loss
    terms and Lightning callbacks of the methods built on this loop. See :mod:`.module` for the
    loss, optimiser and schedule.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"The 'trainable' parameter must be one of {set(TRAINABLE)}; got {trainable!r}.")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}.")
    if patience is not None and val_loader is None:
        raise ValueError("Early stopping ('patience') monitors the validation loss: pass a val_loader, or patience=None.")
    if isinstance(class_weights, str):
        raise ValueError(
            f"class_weights must be a sequence of per-class weights here; got {class_weights!r}. "
            "Use headstart.heads.resolve_class_weight('balanced', labels, num_classes) to compute them."
        )
    t_start = time.perf_counter()
    device = _device_of(head)
    frozen_flags = None
    if backbone is not None and trainable == "head":
        frozen_flags = [(p, p.requires_grad) for p in backbone.parameters()]
        backbone.requires_grad_(False)

    module = ClassifierModule(
        backbone, head, lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay,
        class_weights=class_weights, label_smoothing=label_smoothing, extra_losses=extra_losses,
    )
    best = BestWeights()
    cbs: list[Callback] = [*callbacks, best]
    early = EarlyStopping(monitor="val_loss", mode="min", patience=int(patience)) if patience is not None else None
    if early is not None:
        cbs.append(early)
    logger: Any = False
    if log_dir is not None:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(log_dir), name="", version="")

    try:
        with quiet_lightning(quiet), _restore_torch_globals():
            L.seed_everything(seed, workers=True, verbose=False)
            trainer = L.Trainer(
                accelerator="auto", devices=1, max_epochs=int(epochs),
                max_time=datetime.timedelta(seconds=float(max_time)) if max_time is not None else None,
                deterministic="warn", logger=logger, callbacks=cbs, enable_checkpointing=True,
                enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(log_dir) if log_dir is not None else None,
            )
            module.train()  # Lightning keeps the modes it is given; frozen BatchNorm stays in eval
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    finally:
        if frozen_flags is not None:
            for p, flag in frozen_flags:
                p.requires_grad_(flag)

    if best.best_state is not None:
        module.load_state_dict(best.best_state)
    module.to(device).eval()
    stopped = early is not None and early.stopped_epoch > 0
    return TrainResult(
        history=best.history, best_epoch=best.best_epoch, best_val_loss=best.best_val_loss,
        seconds=time.perf_counter() - t_start, steps=int(trainer.global_step), stopped_early=bool(stopped),
    )
