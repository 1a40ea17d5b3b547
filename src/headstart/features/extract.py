"""Batched, streaming feature extraction with an on-disk cache.

Flow: hash every item (cheap) -> fill cached rows -> stream the missing items through a
``DataLoader`` (decode + resize in a worker process, overlapped with inference) -> run each batch
through the fastest runtime that gives the same features (:mod:`.runtime`) -> write the rows into a
preallocated ``(N, D)`` float32 array and into the cache. Decoded images are never all in memory:
at most a few batches are in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .._util import available_cores
from ..data.dataset import LabeledDataset, TorchDataset
from .cache import FeatureCache, backbone_fingerprint, default_cache_dir, item_keys
from .runtime import RUNTIMES, make_runner

logger = logging.getLogger("headstart.features")


def extract_features(
    backbone,
    dataset: LabeledDataset,
    *,
    batch_size: int = 64,
    runtime: str = "auto",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> np.ndarray:
    """Pooled features of every item of ``dataset``, in dataset order: ``(N, num_features)`` float32.

    Args:
        backbone: a :class:`~headstart.backbones.base.Backbone`. Features are computed with eval
            semantics; the train/eval mode of each of its modules is restored afterwards.
        dataset: a :class:`~headstart.data.dataset.LabeledDataset` of images (paths or arrays),
            or of texts (``modality="text"``, handled by :mod:`.text`: tokenized batches sorted
            by length, cache keyed by the text bytes, the tokenizer and its max length).
        batch_size: images (texts) per forward pass.
        runtime: ``"auto"`` (on CPU: OpenVINO fp32 when installed, else ONNX Runtime, on the
            backbone's ONNX export when it matches eager torch, else torch; always torch on CUDA),
            ``"openvino"`` / ``"onnx"`` (error if unusable) or ``"torch"``.
        cache: reuse and store features in the on-disk cache, keyed by backbone fingerprint,
            preprocessing and item bytes. ``False`` reads and writes no features (an ONNX export is
            still kept in ``cache_dir/onnx`` so it is not redone on every call).
        cache_dir: cache root; default ``$HEADSTART_CACHE`` or ``~/.cache/headstart``.
        progress: show a progress bar (rich).
        num_workers: decoding processes; default 1 for files on disk (overlaps decoding with
            inference), 0 for in-memory arrays (cheaper than shipping batches between processes).

    Example:
        >>> feats = extract_features(create_backbone("efficientnet_lite0"), ds)  # doctest: +SKIP
        >>> feats.shape  # doctest: +SKIP
        (1000, 1280)
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"The 'runtime' parameter must be one of {set(RUNTIMES)}; got {runtime!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be a positive integer; got {batch_size!r}.")
    if getattr(dataset, "modality", "image") == "text":
        from .text import extract_text_features

        if not hasattr(backbone, "tokenize"):
            raise ValueError(f"Backbone {backbone.name!r} is an image backbone; texts need a text backbone (see 'headstart backbones --modality text').")
        return extract_text_features(backbone, dataset, batch_size=batch_size, runtime=runtime, cache=cache, cache_dir=cache_dir, progress=progress)
    if hasattr(backbone, "tokenize"):
        raise ValueError(f"Backbone {backbone.name!r} is a text backbone; it cannot encode {dataset.modality} data.")
    t0 = time.perf_counter()
    n, dim = len(dataset), int(backbone.num_features)
    out = np.empty((n, dim), dtype=np.float32)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    need_fp = cache or runtime != "torch"
    fingerprint = backbone_fingerprint(backbone) if need_fp else ""

    store, keys = None, None
    missing = np.arange(n)
    if cache and n:
        store = FeatureCache(root, fingerprint)
        keys = item_keys(fingerprint, n, dataset.item_bytes)
        found = store.lookup(keys, out)
        missing = np.flatnonzero(~found)
        logger.info("features: %d of %d items cached (%.2fs to hash and look up)", n - len(missing), n, time.perf_counter() - t0)
    if len(missing) == 0:
        return out

    if num_workers is None:
        num_workers = 0 if dataset.in_memory or available_cores() < 2 else 1
    loader = DataLoader(
        Subset(TorchDataset(dataset, backbone.preprocessing.transform()), missing.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    t1 = time.perf_counter()
    with _eval_mode(backbone), _progress_bar(len(missing), progress) as advance:
        batches = iter(loader)  # start the workers before any runtime threads exist
        runner, done = None, 0
        try:
            for x, _ in batches:
                if runner is None:
                    runner = make_runner(runtime, backbone, x, fingerprint=fingerprint, cache_dir=root)
                feats = runner(x)
                rows = missing[done : done + len(feats)]
                out[rows] = feats
                if store is not None:
                    store.add([keys[i] for i in rows], feats)
                done += len(feats)
                advance(len(feats))
        finally:
            if store is not None:
                store.flush()  # keep what was computed, even if interrupted
    dt = time.perf_counter() - t1
    logger.info(
        "features: computed %d items with runtime %s in %.1fs (%.1f items/s, %d loader workers)",
        len(missing), runner.name if runner else "-", dt, len(missing) / max(dt, 1e-9), num_workers,
    )
    return out


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own mode afterwards.

    Restoring per module (not ``module.train(was_training)``) keeps mixed states intact, e.g.
    frozen BatchNorm layers held in eval mode while the rest trains.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` items when ``enabled``; yields ``advance(k)``."""
    if not enabled:
        yield lambda k: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("features", total=total)
        yield lambda k: bar.advance(task, k)
