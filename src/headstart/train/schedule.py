r"""Learning-rate schedules per training stage: warm-up + cosine, and one-cycle.

Each stage (see :mod:`.strategies`) restarts the schedule over its own :math:`S` steps, from its own
base rates (one per optimiser parameter group). With step :math:`s` inside the stage and
:math:`W = \lceil w S \rceil` warm-up steps:

* ``cosine``:  :math:`\eta_s = \eta \,(s+1)/W` for :math:`s < W`, then
  :math:`\eta_s = \eta \cdot \tfrac12 (1 + \cos(\pi (s - W)/(S - W)))`;
* ``onecycle`` (Smith & Topin 2017, arXiv:1708.07120, as in fastai's ``fit_one_cycle``): cosine
  ramp from :math:`\eta/25` to :math:`\eta` over the first 25 % of the steps, then cosine annealing
  to :math:`\eta/10^4` (learning rate only; momentum is not cycled).

:class:`StageLR` is a ``torch.optim.lr_scheduler.LRScheduler`` whose whole state (stage start,
length, kind, base rates) is plain data in its ``state_dict``, so a resumed run continues the
schedule exactly where it stopped.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

SCHEDULES = ("cosine", "onecycle")


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


def one_cycle(total_steps: int, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4) -> Callable[[int], float]:
    """One-cycle multiplier: cosine from ``1/div`` up to 1 over ``pct_start`` of the steps, then down to ``1/final_div``."""
    total_steps = max(1, int(total_steps))
    up = max(1, int(round(pct_start * total_steps)))

    def cos_interp(a: float, b: float, t: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, t))))

    def mult(step: int) -> float:
        if step < up:
            return cos_interp(1.0 / div, 1.0, step / up)
        return cos_interp(1.0, 1.0 / final_div, (step - up) / max(1, total_steps - up))

    return mult


def multiplier(kind: str, total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    if kind == "cosine":
        return warmup_cosine(total_steps, math.ceil(warmup_fraction * total_steps))
    if kind == "onecycle":
        return one_cycle(total_steps)
    raise ValueError(f"The 'schedule' parameter must be one of {set(SCHEDULES)}; got {kind!r}.")


class StageLR(torch.optim.lr_scheduler.LRScheduler):
    """Per-stage schedule: :meth:`begin_stage` restarts it with new base rates and a new length."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, kind: str = "cosine", warmup_fraction: float = 0.05):
        multiplier(kind, 1, warmup_fraction)  # validates kind
        self.kind = kind
        self.warmup_fraction = float(warmup_fraction)
        self.stage_start = 0
        self.stage_steps = max(1, int(total_steps))
        self.stage_base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        super().__init__(optimizer)

    def begin_stage(self, base_lrs: Sequence[float], steps: int) -> None:
        """Start a stage now: base rates per parameter group, schedule over ``steps`` optimiser steps."""
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"{len(base_lrs)} learning rates for {len(self.optimizer.param_groups)} parameter groups")
        self.stage_base_lrs = [float(v) for v in base_lrs]
        self.stage_start = int(self.last_epoch)
        self.stage_steps = max(1, int(steps))
        for g, lr in zip(self.optimizer.param_groups, self.get_lr()):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        m = multiplier(self.kind, self.stage_steps, self.warmup_fraction)(max(0, self.last_epoch - self.stage_start))
        return [b * m for b in self.stage_base_lrs]
