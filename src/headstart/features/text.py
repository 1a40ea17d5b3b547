"""The text branch of feature extraction: tokenized batches, sorted by length, on the fastest verified runtime.

Flow (as for images, see :mod:`.extract`): hash every text (its UTF-8 bytes, under the backbone
fingerprint, which covers the weights hash, the tokenizer's hash and its max length) -> fill cached
rows -> sort the missing texts by length (longest first, so batches carry little padding and the
largest batch comes first) -> tokenize one batch at a time (nothing but the texts and the output
array is ever held for the whole set) -> run the batch -> write rows into the output and the cache.

Runtimes for transformer encoders on CPU (``runtime="auto"``): the backbone is exported once to
ONNX with dynamic batch and sequence axes (inputs ``input_ids``, ``attention_mask``; output the
pooled features), checked against eager torch on a real batch, and run in ONNX Runtime or OpenVINO
(fp32), whichever :data:`AUTO_ORDER` lists first and passes the check; eager torch otherwise.
Exports and verdicts live in ``<cache_dir>/onnx/`` beside the image ones. Backbones that are ONNX
graphs already (``backbone.onnx_path``) run that graph; ``backbone.preferred_runtime == "torch"``
(word vectors: a table lookup) skips the export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from .._util import available_cores
from ..data.dataset import LabeledDataset
from .cache import FeatureCache, backbone_fingerprint, cache_root, item_keys
from .runtime import OPSET, _device_of, _ov_compiled, compare_outputs, onnx_path, verified_onnx, verified_openvino

logger = logging.getLogger("headstart.features")

#: Order of preference under ``runtime="auto"`` on CPU (measured: see benchmarks/text_embed_speed.py).
AUTO_ORDER = ("onnx", "openvino")
INPUTS = ("input_ids", "attention_mask")
EXPORT_VERSION = 2  # bump when the export changes (2: eager attention + ORT transformer fusion)


class TextTorchRunner:
    name = "torch"

    def __init__(self, backbone: torch.nn.Module):
        self.backbone, self.device = backbone, _device_of(backbone)

    def __call__(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            feeds = {k: v.to(self.device) for k, v in x.items()}
            return self.backbone(feeds).float().cpu().numpy()


#: Texts per ONNX Runtime run. Measured on a 2-core AVX-512 CPU (MiniLM-L6, fused graph, docstring
#: sentences): CPU seconds per 1,000 texts 3.95 / 4.6 / 5.5 / 6.5 / 7.5 at 8 / 16 / 32 / 64 / 128
#: texts per run (small runs keep the activations in cache), so a batch is run in chunks of 8,
#: each cut to its own longest text.
ORT_CHUNK = 8


class TextOnnxRunner:
    """An ONNX Runtime CPU session over a text encoder graph (all optimisations, threads = cores),
    run :data:`ORT_CHUNK` texts at a time, each chunk without the padding columns it does not need."""

    name = "onnx"

    def __init__(self, path: Path, output: str | None = None, chunk: int = ORT_CHUNK):
        self.session = _ort_session(Path(path))
        self.outputs = [output] if output else [self.session.get_outputs()[0].name]
        self.chunk = chunk

    def __call__(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        ids = np.ascontiguousarray(x["input_ids"].numpy(), dtype=np.int64)
        mask = np.ascontiguousarray(x["attention_mask"].numpy(), dtype=np.int64)
        lengths = mask.sum(1)
        outs = []
        for i in range(0, len(ids), self.chunk):
            t = max(1, int(lengths[i : i + self.chunk].max()))
            feeds = {"input_ids": ids[i : i + self.chunk, :t], "attention_mask": mask[i : i + self.chunk, :t]}
            outs.append(self.session.run(self.outputs, feeds)[0])
        return np.asarray(outs[0] if len(outs) == 1 else np.concatenate(outs), dtype=np.float32)


_SESSIONS: dict[tuple[str, int], object] = {}  # (onnx path, mtime) -> InferenceSession, for this process
_SESSIONS_MAX = 4


def _ort_session(path: Path):
    """One ONNX Runtime CPU session per graph file and process (all optimisations, threads = cores)."""
    import onnxruntime as ort

    key = (str(path.resolve()), path.stat().st_mtime_ns)
    session = _SESSIONS.pop(key, None)
    if session is None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = available_cores()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: on small CPUs shared with a loader, other processes
        # or torch, spinning steals the cores the work needs (as OMP_WAIT_POLICY=PASSIVE does for torch).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    _SESSIONS[key] = session  # most recently used last
    while len(_SESSIONS) > _SESSIONS_MAX:
        del _SESSIONS[next(iter(_SESSIONS))]
    return session


class TextOpenVinoRunner:
    """The ONNX export compiled by OpenVINO for CPU in fp32 (dynamic shapes; one synchronous request)."""

    name = "openvino"

    def __init__(self, path: Path, output: str | None = None):
        self.compiled = _ov_compiled(path, hint="LATENCY", pinning=False)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(output) if output else self.compiled.output(0)

    def __call__(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        feeds = {k: np.ascontiguousarray(x[k].numpy(), dtype=np.int64) for k in INPUTS}
        return np.array(self.request.infer(feeds)[self.output], dtype=np.float32)


class _Export(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` of a text backbone, for the ONNX exporter."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone({"input_ids": input_ids, "attention_mask": attention_mask})


def text_onnx_model(backbone, sample: dict[str, torch.Tensor], *, fingerprint: str, cache_dir: Path) -> Path:
    """Path of the verified ONNX export of a text backbone, exporting and verifying it once."""
    return verified_onnx(
        onnx_path(cache_dir, fingerprint, prefix=f"text{EXPORT_VERSION}-"),
        export=lambda path: _export_text(backbone, sample, path),
        verify=lambda path: _compare(backbone, TextOnnxRunner(path), sample),
        fingerprint=fingerprint,
    )


def _export_text(backbone, sample: dict[str, torch.Tensor], path: Path) -> None:
    """torch.onnx.export with dynamic batch and token axes, then ORT's transformer fusion; atomic."""
    import gc

    # Batch 2 with padding in one row: tracing a batch without padding lets transformers drop the
    # attention mask from the graph (its "all ones" shortcut), which is then wrong for padded batches.
    probe = _with_padding(sample, 2)
    ids, mask = probe["input_ids"], probe["attention_mask"]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "features": {0: "batch"}}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _eager_attention(backbone):
        warnings.simplefilter("ignore")  # exporter chatter; failures still raise
        torch.onnx.export(_Export(backbone).eval(), (ids, mask), str(tmp), input_names=list(INPUTS), output_names=["features"],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        _fuse_transformer(backbone, tmp)
    gc.collect()  # the tracer's and optimizer's graphs


@contextlib.contextmanager
def _eager_attention(backbone):
    """Trace a Hugging Face encoder with its plain ("eager") attention: its MatMul/Softmax pattern is the
    one ONNX Runtime's transformer optimizer fuses into one ``Attention`` op (the SDPA trace is not fused)."""
    config = getattr(getattr(backbone, "encoder", None), "config", None)
    before = getattr(config, "_attn_implementation", None)
    if config is None or before in (None, "eager"):
        yield
        return
    try:
        config._attn_implementation = "eager"
        yield
    finally:
        config._attn_implementation = before


def _fuse_transformer(backbone, path: Path) -> None:
    """Fuse attention, LayerNorm and GELU in the exported graph in place with ONNX Runtime's transformer
    optimizer (BERT-family encoders); any failure keeps the unfused graph. The caller verifies the result."""
    config = getattr(getattr(backbone, "encoder", None), "config", None)
    if getattr(config, "model_type", None) not in ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet"):
        return
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        kind = "bert" if config.model_type in ("roberta", "xlm-roberta", "electra", "mpnet") else config.model_type
        heads, hidden = int(getattr(config, "num_attention_heads", 0)), int(getattr(config, "hidden_size", 0))
        with contextlib.redirect_stdout(io.StringIO()):
            model = optimize_model(str(path), model_type=kind, num_heads=heads, hidden_size=hidden)
        fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
        model.save_model_to_file(str(path))
        del model
        logger.info("features: ONNX Runtime transformer fusion: %s", fused)
    except Exception as e:  # noqa: BLE001 - an optimisation only
        logger.info("features: transformer fusion skipped (%s: %s)", type(e).__name__, e)


def _with_padding(sample: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """``rows`` rows of ``sample`` (repeated if short), at least 4 tokens long, row ``i`` masked after
    a shorter length than row ``i - 1``: a batch with varied padding, for export and verification."""
    ids, mask = sample["input_ids"], sample["attention_mask"]
    idx = torch.arange(rows) % len(ids)
    ids, mask = ids[idx].clone(), mask[idx].clone()
    if ids.shape[1] < 4:
        pad = 4 - ids.shape[1]
        ids = torch.cat([ids, ids[:, -1:].repeat(1, pad)], 1)
        mask = torch.cat([mask, mask[:, -1:].repeat(1, pad)], 1)
    length = ids.shape[1]
    for i in range(1, rows):
        keep = max(2, length - i * max(1, length // (rows + 1)))
        mask[i, keep:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _compare(backbone, runner, sample: dict[str, torch.Tensor]) -> tuple[float, float]:
    return compare_outputs(backbone, runner, _with_padding(sample, min(8, max(4, len(sample["input_ids"])))))


def make_text_runner(runtime: str, backbone, sample: dict[str, torch.Tensor], *, fingerprint: str, cache_dir: Path):
    """The runner for a text backbone (see the module doc); ``"onnx"``/``"openvino"`` raise if unusable."""
    device = _device_of(backbone)
    native = getattr(backbone, "onnx_path", None)
    if native is not None:
        if runtime == "openvino":
            return _verified_openvino(backbone, Path(native), sample)
        return TextOnnxRunner(Path(native), getattr(backbone, "output_name", None))
    if runtime == "torch" or (runtime == "auto" and (device.type != "cpu" or backbone.preferred_runtime == "torch")):
        return TextTorchRunner(backbone)
    if device.type != "cpu":
        raise ValueError(f"runtime={runtime!r} runs on CPU but the backbone is on {device}; use runtime='torch' or 'auto'.")
    order = AUTO_ORDER if runtime == "auto" else (runtime,)
    try:
        path = text_onnx_model(backbone, sample, fingerprint=fingerprint, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - any export failure means "use torch", with the reason
        if runtime != "auto":
            raise RuntimeError(f"runtime={runtime!r} is not usable for this backbone: {e}. Use runtime='torch' or 'auto'.") from e
        logger.info("features: runtime torch (ONNX export not usable: %s)", e)
        return TextTorchRunner(backbone)
    for name in order:
        try:
            runner = TextOnnxRunner(path) if name == "onnx" else _verified_openvino(backbone, path, sample)
            logger.info("features: runtime %s", runner.name)
            return runner
        except Exception as e:  # noqa: BLE001
            if runtime != "auto":
                raise RuntimeError(f"runtime={runtime!r} is not usable for this backbone: {e}. Use runtime='torch' or 'auto'.") from e
            logger.info("features: %s not usable (%s)", name, e)
    return TextTorchRunner(backbone)


def _verified_openvino(backbone, path: Path, sample: dict[str, torch.Tensor]) -> TextOpenVinoRunner:
    output_name = getattr(backbone, "output_name", None) if getattr(backbone, "onnx_path", None) else None
    return verified_openvino(path, lambda: TextOpenVinoRunner(path, output_name), lambda runner: _compare(backbone, runner, sample))


#: Tokens per batch, at most (batch x longest text): long texts go in smaller batches, so the runtime's
#: activation memory (attention is batch x heads x tokens^2) stays bounded whatever the lengths.
TOKEN_BUDGET = 64 * 128


def _token_budget_batches(backbone, items, order: np.ndarray, batch_size: int):
    """Consecutive slices of ``order`` (texts sorted longest first) of at most ``batch_size`` texts and
    about :data:`TOKEN_BUDGET` tokens, estimating a text's tokens from its first (longest) member."""
    start, limit = 0, int(backbone.preprocessing.max_length)
    while start < len(order):
        longest = min(limit, len(backbone.encode_ids([str(items[order[start]])])[0][0]))
        size = max(1, min(batch_size, TOKEN_BUDGET // max(1, longest)))
        yield order[start : start + size]
        start += size


def extract_text_features(
    backbone,
    dataset: LabeledDataset,
    *,
    batch_size: int = 64,
    runtime: str = "auto",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Pooled features ``(N, D)`` float32 of the texts of ``dataset`` (see the module doc); called by
    :func:`~headstart.features.extract.extract_features` for ``modality == "text"``."""
    from .extract import _eval_mode, _progress_bar
    from ..backbones.text import warn_truncated

    parts = getattr(backbone, "parts", None)
    if parts is not None:  # a hybrid: each part through its own runtime and cache, scaled, side by side
        out, col = np.empty((len(dataset), int(backbone.num_features)), dtype=np.float32), 0
        for p, s in zip(parts, backbone.scales.tolist()):
            x = extract_text_features(p, dataset, batch_size=batch_size, runtime=runtime, cache=cache, cache_dir=cache_dir, progress=progress)
            out[:, col : col + x.shape[1]] = x * np.float32(s)
            col += x.shape[1]
        return out
    if hasattr(backbone, "transform_texts"):  # TF-IDF: scikit-learn's transform, cheap, not cached
        return backbone.transform_texts(dataset.items)
    t0 = time.perf_counter()
    n, dim = len(dataset), int(backbone.num_features)
    out = np.empty((n, dim), dtype=np.float32)
    root = cache_root(cache_dir)
    fingerprint = backbone_fingerprint(backbone)
    store, keys, missing = None, None, np.arange(n)
    if cache and n:
        store = FeatureCache(root, fingerprint)
        keys = item_keys(fingerprint, n, dataset.item_bytes)
        missing = np.flatnonzero(~store.lookup(keys, out))
        logger.info("features: %d of %d texts cached (%.2fs to hash and look up)", n - len(missing), n, time.perf_counter() - t0)
    if len(missing) == 0:
        return out
    items = dataset.items
    order = missing[np.argsort([-len(items[i]) for i in missing], kind="stable")]
    t1, cut, runner = time.perf_counter(), 0, None
    # Tokenization runs inline, not overlapped with the encoder as image decoding is (issue 16): it is
    # 1.8 % of the time (minilm_l6, 2,000 Rotten Tomatoes snippets of 110 characters: 0.135 of 7.55 s).
    with _eval_mode(backbone), _progress_bar(len(order), progress) as advance:
        try:
            for rows in _token_budget_batches(backbone, items, order, batch_size):
                x = backbone.tokenize([str(items[i]) for i in rows], warn=False)
                cut += backbone.last_truncated
                if runner is None:
                    runner = make_text_runner(runtime, backbone, x, fingerprint=fingerprint, cache_dir=root)
                feats = runner(x)
                out[rows] = feats
                if store is not None:
                    store.add([keys[i] for i in rows], feats)
                advance(len(rows))
        finally:
            if store is not None:
                store.flush()
    if cut:
        warn_truncated(backbone, cut, len(order))
    dt = time.perf_counter() - t1
    logger.info("features: encoded %d texts with runtime %s in %.1fs (%.0f texts/s)", len(order), runner.name if runner else "-", dt, len(order) / max(dt, 1e-9))
    return out
