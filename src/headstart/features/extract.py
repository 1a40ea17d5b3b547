"""Batched, streaming feature extraction with an on-disk cache.

Flow: hash every item (cheap) -> fill cached rows -> stream the missing items through a pipeline
(decode + resize in background threads, overlapped with inference; :func:`_decoded_batches`) -> run each batch
through the fastest runtime that gives the same features (:mod:`.runtime`) -> write the rows into a
preallocated ``(N, D)`` float32 array and into the cache. Decoded images are never all in memory:
at most a few batches are in flight.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import math
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch

from .._util import available_cores
from ..data.dataset import LabeledDataset, TorchDataset
from .cache import FeatureCache, backbone_fingerprint, cache_root, item_keys
from . import precision as _precision
from .precision import backbone_precision
from .runtime import RUNTIMES, make_runner
from .split import is_precision

logger = logging.getLogger("headstart.features")

#: How image files are decoded for features; part of the cache key. "jpeg-draft-1": large JPEGs at
#: reduced scale (:meth:`headstart.backbones.base.Preprocessing.decode_size`), everything else in full.
DECODE = "jpeg-draft-1"


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
    precision: str | None = None,
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
        num_workers: decoding threads running ahead of inference; default: sized from the first
            batch so that decoding and inference share the cores by their cost (:func:`decode_threads`).
        precision: ``"f32"``, ``"bf16"`` or ``"bf16@<node>"`` (fp32 up to that node of the ONNX export,
            bf16 after: :mod:`.split`); bf16 runs in OpenVINO on CPU, each has its own cache key;
            default: what the run decided for this backbone (:mod:`.precision`), else fp32.

    Example:
        >>> feats = extract_features(create_backbone("efficientnet_lite0"), ds)  # doctest: +SKIP
        >>> feats.shape  # doctest: +SKIP
        (1000, 1280)
    """
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"The 'num_workers' parameter (decoding threads) must be a positive integer or None; got {num_workers!r}.")
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
    root = cache_root(cache_dir)
    need_fp = cache or runtime != "torch"
    fingerprint = backbone_fingerprint(backbone) if need_fp else ""
    if precision is None:
        precision = backbone_precision(backbone, fingerprint) if runtime in ("auto", "openvino") else "f32"
    elif not is_precision(precision):
        raise ValueError(f"The 'precision' parameter must be 'f32', 'bf16', 'bf16@<node>' (fp32 up to that node of the export) or None; got {precision!r}.")
    elif precision != "f32" and runtime not in ("auto", "openvino"):
        raise ValueError(f"precision={precision!r} runs in OpenVINO; runtime={runtime!r} cannot. Use runtime='auto' or 'openvino', or precision='f32'.")
    if precision != "f32" and not _precision.bf16_supported():
        # OpenVINO runs a bf16 request in fp32 on such CPUs (AVX2-only, e.g. AMD EPYC Zen 3): say so, and key the cache as fp32.
        logger.warning("features: bf16 asked for (or saved with the run), but this CPU has no native bf16: extracting in fp32")
        precision = "f32"

    store, keys = None, None
    missing = np.arange(n)
    if cache and n:
        store, keys = image_cache(root, fingerprint, precision, dataset)
        found = store.lookup(keys, out)
        missing = np.flatnonzero(~found)
        logger.info("features: %d of %d items cached (%.2fs to hash and look up)", n - len(missing), n, time.perf_counter() - t0)
    if len(missing) == 0:
        return out

    tds = TorchDataset(dataset, backbone.preprocessing.transform())
    t1 = time.perf_counter()
    runner, done, stats = None, 0, {}
    with _eval_mode(backbone), _progress_bar(len(missing), progress) as advance:
        batches = _decoded_batches(tds, missing, batch_size, num_workers, stats)
        try:
            for x in batches:
                if runner is None:
                    runner = make_runner(runtime, backbone, x, fingerprint=fingerprint, cache_dir=root, precision=precision)
                    stats["runner"] = runner
                t_infer = time.perf_counter()
                feats = runner(x)
                stats.setdefault("infer_s", time.perf_counter() - t_infer)
                rows = missing[done : done + len(feats)]
                out[rows] = feats
                if store is not None:
                    store.add([keys[i] for i in rows], feats)
                done += len(feats)
                advance(len(feats))
        finally:
            batches.close()  # stop the decoding threads, even if interrupted
            if store is not None:
                store.flush()  # keep what was computed, even if interrupted
    dt = time.perf_counter() - t1
    logger.info(
        "features: computed %d items with runtime %s in %.1fs (%.1f items/s; %s)",
        len(missing), f"{runner.name} {getattr(runner, 'precision', 'f32')}" if runner else "-", dt, len(missing) / max(dt, 1e-9), stats.get("plan", "one batch"),
    )
    return out


def image_cache(root: Path, fingerprint: str, precision: str, dataset: LabeledDataset) -> tuple[FeatureCache, list[bytes]]:
    """The feature cache of the image backbone with ``fingerprint`` at ``precision``, and the keys of ``dataset``'s items in it."""
    key = image_cache_fingerprint(fingerprint, precision)
    return FeatureCache(root, key), item_keys(key, len(dataset), dataset.item_bytes)


def image_cache_fingerprint(fingerprint: str, precision: str = "f32") -> str:
    """The feature-cache key of an image backbone: its fingerprint, how images are decoded
    (:data:`DECODE`) and the precision, so features from another decoding or precision are never reused."""
    return hashlib.sha256(f"{fingerprint}|decode={DECODE}|precision={precision}".encode()).hexdigest()


def _decoded_batches(tds: TorchDataset, index: np.ndarray, batch_size: int, threads: int | None, stats: dict) -> Iterator[torch.Tensor]:
    """Batches ``stack(tds[i] for i in batch)`` over ``index`` in order, decoded ahead by background threads.

    The first batch is decoded here, one item after another, which times decoding
    (``stats["decode_s"]``); the caller times its first inference (``stats["infer_s"]``). The rest
    is decoded by a pool of ``threads`` threads (default: :func:`decode_threads` of those two
    costs), at most two batches ahead of the consumer, while the runtime runs the current batch.
    Pillow's decoders and torch's resize release the GIL, so threads decode in parallel with each
    other and with the runtime's own threads; torch's intra-op threads are set to 1 while they run
    (per-image ops gain nothing from them, and they would oversubscribe the cores), except for the
    torch runtime, which needs them for inference.

    Why threads rather than a ``DataLoader`` worker process: no copy of each batch between
    processes, and the stages share the cores by demand. Measured on 2 cores (EfficientNet-Lite0,
    224 px, 320 JPEGs of 224-400 px, OpenVINO): one worker process 117 (fp32) / 190 (bf16) img/s,
    a decoding thread 148 / 256 img/s (``benchmarks/extract_speed.py``).
    """
    n = len(index)
    t = time.perf_counter()
    with _torch_threads(1):
        first = [tds[int(i)][0] for i in index[:batch_size]]
    stats["decode_s"] = (time.perf_counter() - t) / max(len(first), 1)
    yield torch.stack(first)
    del first
    if n <= batch_size:
        return
    if threads is None:
        threads = decode_threads(stats["decode_s"], stats.get("infer_s", 0.0) / batch_size, runtime_threads=available_cores())
    stats["plan"] = (f"{threads} decoding thread(s); first batch: decode {stats['decode_s'] * 1e3:.1f} ms/item, "
                     f"inference {stats.get('infer_s', 0.0) / batch_size * 1e3:.1f} ms/item")
    torch_runtime = getattr(stats.get("runner"), "name", "torch") == "torch"
    ahead = 2 * batch_size
    with _torch_threads(None if torch_runtime else 1), ThreadPoolExecutor(threads, thread_name_prefix="headstart-decode") as pool:
        pending: collections.deque = collections.deque()
        nxt = batch_size
        try:
            for start in range(batch_size, n, batch_size):
                while nxt < n and nxt < start + batch_size + ahead:
                    pending.append(pool.submit(_item, tds, int(index[nxt])))
                    nxt += 1
                yield torch.stack([pending.popleft().result() for _ in range(min(batch_size, n - start))])
        finally:
            for f in pending:
                f.cancel()


def decode_threads(decode_s: float, infer_s: float, *, runtime_threads: int, cores: int | None = None) -> int:
    """Decoding threads that keep the runtime fed, at least 1 and at most ``cores``.

    ``decode_s`` is one item's decode+transform time on one core; ``infer_s`` one item's wall time
    of inference using ``runtime_threads`` threads, so ``infer_s * runtime_threads`` core-seconds.
    While both stages have work, the OS shares the cores evenly among the running threads: D
    decoders beside T runtime threads get D / (D + T) of the CPU, and need decode / (decode + infer)
    of it, so D >= T * decode / infer. Twice that, rounded up once it passes a quarter of a thread,
    is what measured best (a spare decoder only waits: it runs at most two batches ahead).
    Measured on 2 cores (Intel, AVX-512 BF16; OpenVINO, 2 threads; 384 500x375 JPEGs: 2.8 ms
    decode, 8.0 core-ms fp32 / 3.5 bf16 / 4.7 bf16 after an fp32 stem), img/s with 1 / 2 / 3 decoders:
    fp32 147 / 161 / 163, bf16 232 / 264 / 247, mixed 213 / 202 / 215 (this rule: 2, 2, 2). On AMD
    EPYC (AVX2, fp32), 128 4000x3000 JPEGs in draft mode (49 ms decode, 21 core-ms inference): 1
    thread 17.1 and 17.9 img/s, 2 threads 20.8 and 24.6 (this rule: 2).
    """
    cores = cores or available_cores()
    infer_core_s = max(infer_s, 0.0) * runtime_threads
    need = 2 * runtime_threads * decode_s / max(infer_core_s, 1e-12)
    return int(min(cores, max(1, math.ceil(need - 0.25))))


def _item(tds: TorchDataset, i: int) -> torch.Tensor:
    return tds[i][0]


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (``None``: unchanged) for the block, then restored."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
