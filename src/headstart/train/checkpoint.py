"""Resumable training: atomic checkpoints, safe loading, and data order that a resume reproduces.

* :class:`AtomicCheckpointIO`: Lightning's checkpoint format (a ``torch.save`` dict), written to a
  temporary file beside the target, flushed to disk and renamed over it in one step, so a kill
  during a save leaves the previous checkpoint intact; loaded with ``weights_only=True`` (tensors
  and plain data only, nothing executed). Checkpoints are for resuming; the deliverable model stays
  ``model.safetensors`` + ``model.json``.
* :class:`EpochShuffle`: a ``RandomSampler`` whose order is a function of ``(seed, epoch)`` only
  (Lightning calls ``set_epoch``), so the epoch a resumed run repeats sees the same batches as the
  uninterrupted run would have. Under DDP, Lightning swaps it for a seeded ``DistributedSampler``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, RandomSampler

from .._io import atomic_path

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` with atomic local writes and ``weights_only`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = True) -> dict[str, Any]:
        return torch.load(str(path), map_location=map_location, weights_only=True if weights_only is None else weights_only)


class LastCheckpoint(Checkpoint):
    """Write ``dirpath/last.ckpt`` at the end of every training epoch (after the stage and best-weights
    callbacks have updated their state; through the trainer, so only rank 0 writes under DDP)."""

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.dirpath / LAST)

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": str(self.dirpath)}


def last_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """``checkpoint_dir/last.ckpt`` if it exists."""
    p = Path(checkpoint_dir) / LAST
    return p if p.is_file() else None


class EpochShuffle(RandomSampler):
    """Shuffles ``range(n)`` with ``torch.Generator().manual_seed(seed + epoch)`` (see module docstring)."""

    def __init__(self, data_source: Any, seed: int = 0):
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class EpochBalanced(EpochShuffle):
    """Class-balanced sampling (``fit --sampler balanced``): ``len(labels)`` draws per epoch, with
    replacement, item ``i`` with probability proportional to ``1 / count(labels[i])``, so that every
    class is equally likely in each batch (minority items repeat, majority items are skipped at random);
    the draws are a function of ``(seed, epoch)`` only, as :class:`EpochShuffle`'s order is."""

    def __init__(self, data_source: Any, labels: Any, seed: int = 0):
        super().__init__(data_source, seed)
        y = torch.as_tensor(labels, dtype=torch.int64)
        if len(y) != len(data_source):
            raise ValueError(f"EpochBalanced needs one label per item; got {len(y)} labels for {len(data_source)} items.")
        self.weights = (1.0 / torch.bincount(y).double())[y]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist())


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0, labels: Any = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset``; training loaders use :class:`EpochShuffle`, or with ``labels``
    (one per item) :class:`EpochBalanced`."""
    sampler = (EpochShuffle(dataset, seed) if labels is None else EpochBalanced(dataset, labels, seed)) if shuffle else None
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0)
