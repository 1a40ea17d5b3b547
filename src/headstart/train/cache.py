"""Activation cache at the freeze boundary: run the frozen prefix of the backbone once.

When layer groups ``0 .. k-1`` stay frozen for the whole run (``finetune --unfreeze N`` or a
capped ``progressive``; frozen BatchNorm in eval mode) and augmentation is off, the prefix is a
fixed function of each input, so its output — the activations entering group ``k`` — is computed
once per item and every epoch runs only groups ``k ..`` and the head
(``backbone.forward_from(k, h)``). With the same seed and data order the result is the same as
running the whole backbone every step, up to float rounding; the cost of an epoch drops to that of
the unfrozen top.

Activations are computed in blocks of ``batch_size`` and written into one preallocated tensor per
key: in memory, or in a ``numpy.memmap`` file under ``disk_dir`` when they would exceed
``max_memory_bytes`` (streamed, never held twice).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


def _as_dict(h: Any) -> dict[str, torch.Tensor]:
    if isinstance(h, torch.Tensor):
        return {"": h}
    if isinstance(h, dict) and all(isinstance(v, torch.Tensor) for v in h.values()):
        return dict(h)
    raise TypeError(f"forward_until must return a tensor or a dict of tensors; got {type(h).__name__}")


class ActivationDataset(Dataset):
    """``(activations entering group k, label)`` per item, as computed by :func:`cache_activations`."""

    def __init__(self, store: dict[str, Any], labels: torch.Tensor, group: int):
        self.store, self.labels, self.group = store, labels, int(group)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = {k: torch.from_numpy(np.asarray(v[i])) if isinstance(v, np.memmap) else v[i] for k, v in self.store.items()}
        return (item[""] if set(item) == {""} else item), int(self.labels[i])

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.store.values()))


@torch.no_grad()
def cache_activations(
    backbone: Any, group: int, dataset: Any, *, batch_size: int = 64, max_memory_bytes: int = 2 << 30,
    disk_dir: str | Path | None = None, num_groups: int | None = None,
) -> ActivationDataset:
    """Run ``backbone.forward_until(group, x)`` once over ``dataset`` (items ``(x, label)``), in eval mode.

    Raises ``NotImplementedError`` when the backbone cannot be split.
    """
    n = len(dataset)
    n_groups = num_groups if num_groups is not None else len(backbone.layer_groups())
    log.info("caching activations at the freeze boundary (group %d of %d) for %d items", group, n_groups, n)
    t0 = time.perf_counter()
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    store: dict[str, Any] | None = None
    labels = torch.empty(n, dtype=torch.long)
    pos = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
            h = _as_dict(backbone.forward_until(group, x))
            if store is None:
                per_item = sum(v[0].numel() * v.element_size() for v in h.values())
                on_disk = per_item * n > max_memory_bytes
                store = {}
                for k, v in h.items():
                    shape = (n, *v.shape[1:])
                    if on_disk:
                        folder = Path(disk_dir) if disk_dir is not None else Path(tempfile.mkdtemp(prefix="headstart-acts-"))
                        folder.mkdir(parents=True, exist_ok=True)
                        store[k] = np.memmap(folder / f"acts{k or ''}-g{group}.f32", dtype=np.float32, mode="w+", shape=shape)
                    else:
                        store[k] = torch.empty(shape, dtype=v.dtype)
                if on_disk:
                    log.info("activations (%.0f MB) stream to disk", per_item * n / 1e6)
            b = int(y.shape[0])
            for k, v in h.items():
                v = v.detach().cpu()
                if isinstance(store[k], np.memmap):
                    store[k][pos : pos + b] = v.float().numpy()
                else:
                    store[k][pos : pos + b] = v
            labels[pos : pos + b] = torch.as_tensor(y)
            pos += b
    finally:
        backbone.train(was_training)
    if store is None:
        raise ValueError("Cannot cache activations of an empty dataset.")
    for v in store.values():
        if isinstance(v, np.memmap):
            v.flush()
    ds = ActivationDataset(store, labels, group)
    log.info("cached %d activations (%.1f MB) in %.1f s", n, ds.nbytes / 1e6, time.perf_counter() - t0)
    return ds


def can_split(backbone: Any, group: int) -> bool:
    """Whether ``backbone`` implements ``forward_until``/``forward_from`` at ``group`` (checked on its structure)."""
    try:
        plan = getattr(backbone, "_split_plan", None)
        if plan is not None:
            plan()
            return True
        return type(backbone).forward_until is not _base_forward_until()
    except NotImplementedError:
        return False


def _base_forward_until() -> Any:
    from ..backbones.base import Backbone

    return Backbone.forward_until


class StagedActivations:
    """Per-stage activation caches for plans whose frozen prefix shrinks stage by stage (progressive).

    ``loaders(k)`` returns ``(train_loader, val_loader)`` over the activations entering group ``k``
    (``k = 0``: the inputs themselves), computed once per ``k`` the first time a stage asks for them;
    the previous stage's cache is dropped. Each stage then runs only the groups it trains, instead
    of the whole backbone every step (measured: ``benchmarks/strategies.py``, progressive).
    """

    def __init__(self, backbone: Any, train: Any, val: Any, *, batch_size: int, make_loader: Any, seed: int = 0,
                 disk_dir: str | Path | None = None, num_groups: int | None = None):
        self.backbone, self.train, self.val = backbone, train, val
        self.batch_size, self.make_loader, self.seed = int(batch_size), make_loader, seed
        self.disk_dir, self.num_groups = disk_dir, num_groups
        self._k: int | None = None
        self._loaders: tuple[Any, Any] = (None, None)
        self.seconds = 0.0

    def loaders(self, k: int) -> tuple[Any, Any]:
        if k != self._k:
            t0 = time.perf_counter()
            self._loaders = (None, None)  # free the previous stage's activations first
            cached = (lambda ds: ds) if k == 0 else (lambda ds: cache_activations(
                self.backbone, k, ds, batch_size=self.batch_size, disk_dir=self.disk_dir, num_groups=self.num_groups))
            train = cached(self.train)
            val = cached(self.val) if self.val is not None else None
            self._loaders = (self.make_loader(train, self.batch_size, shuffle=True, seed=self.seed),
                             self.make_loader(val, self.batch_size, shuffle=False) if val is not None else None)
            self._k = k
            self.seconds += time.perf_counter() - t0
        return self._loaders
