r"""Learning new classes without forgetting the old ones: a finished run (``fit --from RUN``) goes on learning.

The new run starts from the old run's backbone and head, and the head grows by the new classes
(class-incremental: one model over old + new classes; the old classes keep their rows, first).
Each method adds a term to the one loop's training loss (``K_o`` old classes, :math:`\theta^*` the
old run's weights, :math:`z` the logits of the batch):

- ``naive``: nothing. Plain fine-tuning from the old run: the baseline, which forgets.
- ``ewc``: Elastic Weight Consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic
  forgetting in neural networks", PNAS 114(13)):
  :math:`\frac{\lambda}{2} \sum_i F_i (\theta_i - \theta^*_i)^2` over the backbone and the old
  head rows, :math:`F_i = \mathbb{E}_x \mathbb{E}_{y \sim p_{\theta^*}(y|x)} [(\partial_{\theta_i}
  \log p_{\theta^*}(y|x))^2]` the diagonal Fisher information of the old model, estimated on up
  to ``fisher_items`` items (one label drawn from the old model's own prediction per item, seeded).
  The items are the old task's training data; when it is gone, the new task's training items,
  labelled by the old run's head (the old model's predictions are all the old task left).
- ``lwf``: Learning without Forgetting (Li & Hoiem 2016, ECCV; TPAMI 2017):
  :math:`w\,T^2\,\mathrm{KL}(\mathrm{softmax}(z^{old}/T) \,\|\, \mathrm{softmax}(z_{:K_o}/T))` on
  each new batch, :math:`z^{old}` the frozen old model's logits on the same inputs.
- ``rehearsal``: experience replay: each step adds :math:`w\,\mathrm{CE}` on a batch drawn from a
  memory of old training items (``memory`` per class; ``sampling`` balanced: the same number of
  each class, or reservoir: a uniform sample of the old stream), seeded, the run's transform. The
  memory is stored in the run folder as indices into the old data (``memory.json``), not as items.
- ``l2sp``: L2-SP (Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning
  with Convolutional Networks", ICML): :math:`\frac{\alpha}{2}\lVert w - w^0\rVert^2` over the
  backbone, :math:`w^0` the old run's weights (the new head rows get AdamW's weight decay).

Shapes: logits ``(B, K)``, ``K = K_o + K_new``; the old head gives ``(B, K_o)``. With the
activation cache the batches are the activations entering layer group ``k``; the old model runs
``forward_from(k, ...)`` on them (its frozen prefix is the same as the new model's).

Example::

    headstart fit new_shapes/ --from runs/old --keep-old lwf --method-opt temperature=2 -s finetune
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HeadstartError
from .base import Cycled, Method, OldTask, register_method

log = logging.getLogger("headstart")


def _to(x: Any, device: torch.device) -> Any:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def _old_forward(old: OldTask, module: Any, x: Any) -> torch.Tensor:
    """The old model's logits on a loop batch (images, or activations entering ``module.start_group``)."""
    k = int(getattr(module, "start_group", 0) or 0)
    return old.head(old.backbone(x) if k == 0 else old.backbone.forward_from(k, x))


def _aligned(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor | None:
    """The part of ``new`` that corresponds to ``old``: itself, or its first rows when the head grew."""
    if new.shape == old.shape:
        return new
    if new.ndim == old.ndim and new.shape[1:] == old.shape[1:] and new.shape[0] > old.shape[0]:
        return new[: old.shape[0]]
    return None


class _Anchored:
    """Loss term ``scale/2 * sum_i w_i (theta_i - anchor_i)^2`` over named parameters of the loop's module.

    ``anchors``: ``{"backbone.<name>" | "head.<name>": (anchor, weight)}`` (``weight`` 1 for L2-SP, the
    Fisher for EWC). A plain callable, not an ``nn.Module``: the anchors are constants, never trained
    nor saved in checkpoints (they are rebuilt from the old run on resume)."""

    def __init__(self, anchors: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float) -> None:
        self.anchors, self.scale = anchors, float(scale)
        self.last: float | None = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def _bind(self, module: Any) -> list:
        named = {f"backbone.{n}": p for n, p in module.backbone.named_parameters()} if module.backbone is not None else {}
        named.update({f"head.{n}": p for n, p in module.head.named_parameters()})
        pairs = []
        for name, (anchor, weight) in self.anchors.items():
            p = named.get(name)
            if p is not None and _aligned(p, anchor) is not None:
                pairs.append((p, anchor.to(p.device), weight.to(p.device)))
        return pairs

    def __call__(self, module: Any, batch: Any, outputs: dict) -> torch.Tensor:
        if self._pairs is None:
            self._pairs = self._bind(module)
        total = outputs["logits"].sum() * 0.0
        for p, anchor, weight in self._pairs:
            if p.requires_grad:  # a frozen parameter still equals its anchor
                total = total + (weight * (_aligned(p, anchor) - anchor) ** 2).sum()
        self.last = float(total.detach())
        return 0.5 * self.scale * total


class _KeepOld(Method):
    """Shared: a continual method (``--from RUN``); the old task arrives through :meth:`continue_from`."""

    continual = True

    def continue_from(self, old: OldTask) -> None:
        super().continue_from(old)
        for m in (old.backbone, old.head):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


@register_method
class Naive(_KeepOld):
    name = "naive"
    description = "plain fine-tuning from the --from run, nothing kept: the baseline continual methods are measured against"


@register_method
class EWC(_KeepOld):
    name = "ewc"
    description = "Elastic Weight Consolidation (Kirkpatrick et al. 2017): a Fisher-weighted pull towards the --from run's weights"

    @dataclasses.dataclass(frozen=True)
    class Options:
        # lambda: the weight of the penalty on the raw (per-item mean) Fisher. See benchmarks/continual.py.
        lam: float = 1000.0
        fisher_items: int = 256

        def __post_init__(self) -> None:
            if not self.lam >= 0:
                raise HeadstartError(f"Method 'ewc' option lam must be >= 0; got {self.lam!r}.")
            if self.fisher_items < 1:
                raise HeadstartError(f"Method 'ewc' option fisher_items must be at least 1; got {self.fisher_items!r}.")

    def continue_from(self, old: OldTask) -> None:
        super().continue_from(old)
        self.fisher_source = "old task's training items" if old.old_items is not None else "new training items, labelled by the old head"
        self.fisher = {} if self.options.lam == 0 else fisher_diagonal(old, old.old_items if old.old_items is not None else old.new_items,
                                                                       self.options.fisher_items, old.seed)

    def loss_terms(self) -> list:
        if self.options.lam == 0:
            return []  # exactly naive fine-tuning (tested)
        params = {**{f"backbone.{n}": p for n, p in self.old.backbone.named_parameters()}, **{f"head.{n}": p for n, p in self.old.head.named_parameters()}}
        return [_Anchored({n: (params[n].detach().clone(), f) for n, f in self.fisher.items()}, self.options.lam)]


def fisher_diagonal(old: OldTask, items: Any, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``{name: F}`` of the old model's parameters, the mean over up to ``n`` items of ``items`` (a torch
    Dataset of ``(x, y)``; ``y`` unused) of the squared gradient of ``log p(y_hat|x)``, ``y_hat`` drawn from
    the old model's prediction (seeded)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(items))[:n]
    gen = torch.Generator().manual_seed(seed)
    named = [(f"backbone.{k}", p) for k, p in old.backbone.named_parameters()] + [(f"head.{k}", p) for k, p in old.head.named_parameters()]
    fisher = {k: torch.zeros_like(p) for k, p in named}
    try:
        for _, p in named:
            p.requires_grad_(True)
        for i in idx:
            x = items[int(i)][0].unsqueeze(0)
            logp = torch.log_softmax(old.head(old.backbone(x)), 1)
            y = torch.multinomial(logp.detach().exp()[0], 1, generator=gen)[0]
            grads = torch.autograd.grad(logp[0, y], [p for _, p in named], allow_unused=True)
            for (k, _), g in zip(named, grads):
                if g is not None:
                    fisher[k] += g.detach() ** 2
    finally:
        for _, p in named:
            p.requires_grad_(False)
    return {k: f / max(len(idx), 1) for k, f in fisher.items()}


@register_method
class LwF(_KeepOld):
    name = "lwf"
    description = "Learning without Forgetting (Li & Hoiem 2016): distil the --from run's outputs on the new inputs"

    @dataclasses.dataclass(frozen=True)
    class Options:
        weight: float = 1.0
        temperature: float = 2.0  # Li & Hoiem's T

        def __post_init__(self) -> None:
            if not self.weight >= 0 or not self.temperature > 0:
                raise HeadstartError(f"Method 'lwf' needs weight >= 0 and temperature > 0; got {self.weight!r}, {self.temperature!r}.")

    def loss_terms(self) -> list:
        return [] if self.options.weight == 0 else [self._term]

    def _term(self, module: Any, batch: Any, outputs: dict) -> torch.Tensor:
        old, t = self.old, self.options.temperature
        z = outputs["logits"]
        for m in (old.backbone, old.head):
            m.to(z.device)
        with torch.no_grad():
            target = torch.softmax(_old_forward(old, module, batch[0]) / t, 1)
        k = target.shape[1]
        return self.options.weight * t * t * F.kl_div(torch.log_softmax(z[:, :k] / t, 1), target, reduction="batchmean")


@register_method
class Rehearsal(_KeepOld):
    name = "rehearsal"
    description = "experience replay: each step also trains on a batch from a memory of the old task's items (needs the old data)"
    needs_old_data = True

    @dataclasses.dataclass(frozen=True)
    class Options:
        # items per old class. benchmarks/continual.py, shapes with the demo CNN, seed 0: 20 -> 0.505 average
        # accuracy over old + new test items, 50 -> 0.578, 100 -> 0.610; the time is the same (one memory batch
        # per step). 50: most of the gain while the memory stays a small part of the old data (50 of 350 a class).
        memory: int = 50
        sampling: str = "balanced"  # balanced | reservoir
        weight: float = 1.0

        def __post_init__(self) -> None:
            if self.memory < 1:
                raise HeadstartError(f"Method 'rehearsal' option memory (items per old class) must be at least 1; got {self.memory!r}.")
            if self.sampling not in ("balanced", "reservoir"):
                raise HeadstartError(f"Method 'rehearsal' option sampling must be 'balanced' or 'reservoir'; got {self.sampling!r}.")
            if not self.weight >= 0:
                raise HeadstartError(f"Method 'rehearsal' option weight must be >= 0; got {self.weight!r}.")

    def continue_from(self, old: OldTask) -> None:
        super().continue_from(old)
        o = self.options
        self.indices = memory_indices(old.train.labels, o.memory, len(old.classes), sampling=o.sampling, seed=old.seed)
        self.data = {"memory": old.train.subset(self.indices)}  # through the backbone like the training items

    def run_files(self) -> dict[str, Any]:
        return {"memory.json": self.record()}

    def record(self) -> dict[str, Any]:
        counts = np.bincount(self.old.train.labels[self.indices], minlength=len(self.old.classes))
        return {"sampling": self.options.sampling, "per_class": self.options.memory, "source": self.old.train.source, "split": "train",
                "counts": dict(zip(self.old.classes, map(int, counts))), "indices": [int(i) for i in self.indices]}

    def loss_terms(self) -> list:
        if self.options.weight == 0 or "memory" not in self.loaders:
            return []
        self._batches = Cycled(self.loaders["memory"], "rehearsal memory")
        return [self._term]

    def _term(self, module: Any, batch: Any, outputs: dict) -> torch.Tensor:
        x, y = self._batches.next()[:2]
        device = outputs["logits"].device
        logits = module.head(module.features(_to(x, device)))
        return self.options.weight * module.loss(logits, y.to(device))


def memory_indices(labels: np.ndarray, per_class: int, num_classes: int, *, sampling: str = "balanced", seed: int = 0) -> np.ndarray:
    """Sorted indices of a replay memory over ``labels``: ``per_class`` of each class (``balanced``; all of
    a smaller class), or a reservoir sample (Vitter's algorithm R) of ``per_class * num_classes`` items
    of the stream in a seeded order (``reservoir``: classes in proportion to their frequency)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if sampling == "balanced":
        picked = [rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False) for c in range(num_classes)]
        return np.sort(np.concatenate(picked)).astype(np.int64)
    capacity = per_class * num_classes
    stream = rng.permutation(len(labels))
    reservoir = list(stream[:capacity])
    for t in range(capacity, len(stream)):
        j = int(rng.integers(0, t + 1))
        if j < capacity:
            reservoir[j] = stream[t]
    return np.sort(np.asarray(reservoir, dtype=np.int64))


@register_method
class L2SP(_KeepOld):
    name = "l2sp"
    description = "L2-SP (Li et al. 2018): a pull of the backbone towards the --from run's weights"

    @dataclasses.dataclass(frozen=True)
    class Options:
        alpha: float = 0.1  # See benchmarks/continual.py.

        def __post_init__(self) -> None:
            if not self.alpha >= 0:
                raise HeadstartError(f"Method 'l2sp' option alpha must be >= 0; got {self.alpha!r}.")

    def loss_terms(self) -> list:
        if self.options.alpha == 0:
            return []
        anchors = {f"backbone.{n}": (p.detach().clone(), torch.ones(())) for n, p in self.old.backbone.named_parameters()}
        return [_Anchored(anchors, self.options.alpha)]
