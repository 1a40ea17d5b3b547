"""A time budget for ``fit(time_limit=...)``: what is left, and what a fine-tuning epoch costs here.

:class:`Budget` holds the deadline of the whole ``fit`` call. :func:`epoch_seconds` measures, on
this machine, the cost of one training step of the backbone with every layer group trainable (a
forward and backward pass of a small batch at the run's input size, after one warm-up step) and
scales it to an epoch of ``n_train`` items plus a validation pass of ``n_val`` (a forward pass costs
about a third of a training step). ``auto`` uses the two to decide between the probe and
fine-tuning and how many epochs fit; the loop gets what is left as Lightning's ``max_time`` and
stops there with the best weights so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# Fraction of an epoch's training cost that one validation pass over the same number of items costs
# (forward only, no autograd graph): measured 0.30-0.36 for EfficientNet-Lite0 at 112 px on 2 cores.
VAL_COST = 0.35


@dataclass
class Budget:
    """Seconds allowed for the whole call (``None``: no limit), counted from ``start``."""

    limit: float | None
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.limit is not None and not float(self.limit) > 0:
            from ..errors import HeadstartError

            raise HeadstartError(f"The 'time_limit' parameter must be a positive number of seconds; got {self.limit!r}.")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, reserve: float = 0.0) -> float | None:
        """Seconds left after keeping ``reserve`` for what comes later (``None`` without a limit)."""
        return None if self.limit is None else max(0.0, float(self.limit) - self.elapsed - reserve)


def epoch_seconds(backbone: torch.nn.Module, head: torch.nn.Module, input_shape: tuple[int, ...], n_train: int, n_val: int,
                  *, batch_size: int = 32) -> float:
    """Estimated seconds of one fine-tuning epoch (every group trainable) plus its validation pass."""
    # At the training batch size (up to 64): per-item cost falls with the batch, and measuring at 16
    # overestimated a 64-item epoch of MNIST 5k at 56 px by a third (31 s estimated, 23 s taken).
    b = max(2, min(int(batch_size), 64, int(n_train)))
    x = torch.randn(b, *input_shape)
    was = backbone.training, head.training
    flags = [(p, p.requires_grad) for p in backbone.parameters()]
    params = [p for p, _ in flags] + list(head.parameters())
    try:
        backbone.eval()  # running statistics untouched; the cost is the same
        for p, _ in flags:
            p.requires_grad_(True)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            head(backbone(x)).logsumexp(1).mean().backward()
            times.append(time.perf_counter() - t)
        per_item = times[-1] / b
    finally:
        for p in params:
            p.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)
        backbone.train(was[0])
        head.train(was[1])
    return per_item * (n_train + VAL_COST * n_val)
