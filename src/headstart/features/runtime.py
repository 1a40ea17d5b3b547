"""Runners that turn a preprocessed batch into pooled features: OpenVINO or ONNX Runtime on CPU, or eager torch.

``runtime="auto"`` on CPU exports the backbone to ONNX once and runs that graph in OpenVINO (fp32)
when ``openvino`` is importable and gives the same features as eager torch, else in ONNX Runtime
when that does, else in eager torch (always eager torch on CUDA); each fallback is logged with its
reason. Exported graphs live in ``<cache_dir>/onnx/``, one per backbone fingerprint and software
versions, beside small JSON verdicts (ONNX Runtime vs torch, and OpenVINO vs torch per OpenVINO
version); a backbone is exported and verified once, later calls reuse the file (and a failure is
remembered, so it is not retried on every call).

Why: on a 2-core CPU, ONNX Runtime runs EfficientNet-Lite0 several times faster than eager torch,
and OpenVINO about 1.3x faster again (see ``benchmarks/extract_speed.py``). OpenVINO is compiled
with an explicit fp32 inference precision: on CPUs with bf16/AMX support its default is bf16,
which gives visibly different features.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .._io import atomic_path, write_json
from .._util import available_cores, ort_session, ov_cpu_model

logger = logging.getLogger("headstart.features")

RUNTIMES = ("auto", "openvino", "onnx", "torch")
OPSET = 17
RTOL = 1e-4  # max |runtime - torch| / max |torch| on the verification batch (ONNX Runtime and OpenVINO)


class Runner(Protocol):
    name: str

    def __call__(self, x: torch.Tensor) -> np.ndarray: ...


class TorchRunner:
    """Eager torch under ``inference_mode``; channels-last inputs on CPU (faster convolutions there).

    The backbone must already be in eval mode (the caller sets it and restores it afterwards).
    """

    name = "torch"

    def __init__(self, backbone: torch.nn.Module, device: torch.device):
        self.backbone = backbone
        self.device = device

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            if x.ndim == 4 and self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            return self.backbone(x).float().cpu().numpy()


# OpenVINO settings, measured end to end (EfficientNet-Lite0, 224 px, 2-core AVX-512 CPU). With
# decoding in threads beside inference (extract._decoded_batches), THROUGHPUT (async requests over
# streams of one thread each) beats LATENCY (one request using all cores, whose threads wait for
# each other when a decoding thread takes a core): 320 JPEGs of 224-400 px, on a loaded machine
# (load average 5), both with the decoding threads: fp32 21 vs 16 img/s, bf16 30 vs 28 (medians of 3).
# On a quiet machine threads + THROUGHPUT gave fp32 148 / bf16 256 img/s, against 117-121 / 185-190
# for LATENCY fed by one DataLoader worker process (the previous pipeline; not the same comparison). Small runs are faster than large ones (raw engine, 2 threads:
# 165/174/175/155/147/99 img/s at 1/2/4/8/16/32 images per run: the activations of a few images stay
# in cache), and memory stays small. Threads are not pinned
# (pinning was no faster and competes badly with the decoding worker or other processes).
OV_HINT = "THROUGHPUT"
OV_CHUNK = 4
OV_PINNING = False


class OnnxRunner:
    """An ONNX Runtime CPU session: all graph optimisations, intra-op threads = available cores.

    Batches are run ``chunk`` images at a time: ORT's arena keeps the activation memory of the
    largest run (about 25 MB per 224 px image for EfficientNet-Lite0), while throughput on CPU is
    flat beyond ~8 images per run; so a large ``batch_size`` costs no extra memory here.
    """

    name = "onnx"

    def __init__(self, path: Path, chunk: int = 16, threads: int | None = None):
        self.chunk = chunk
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        outs = [self.session.run(None, {self.input_name: x[i : i + self.chunk]})[0] for i in range(0, len(x), self.chunk)]
        return (outs[0] if len(outs) == 1 else np.concatenate(outs)).astype(np.float32, copy=False)


class OpenVinoRunner:
    """The ONNX export compiled by OpenVINO for CPU, compiled once per process (see :func:`_ov_compiled`).

    ``precision``: ``"f32"``, ``"bf16"``, or ``"bf16@<node>"``: the graph cut after ``<node>``, the
    first part compiled in fp32 and the rest in bf16, each chunk run through both, the second
    reading the first's output tensor in place (:mod:`.split`).
    ``hint="LATENCY"``: each ``chunk`` of a batch is one synchronous inference using all cores.
    ``hint="THROUGHPUT"``: the chunks are spread over one lane per OpenVINO stream (a thread that
    runs its chunks synchronously on that stream's requests). Measured on 2 cores (AVX-512 BF16,
    Lite0, 64 images in chunks of 4, ms per image): lanes bf16 1.74 vs 1.90 with OpenVINO's
    ``AsyncInferQueue``; mixed 2.47 in lanes, 2.53 synchronous (LATENCY), fp32 4.11.
    """

    name = "openvino"

    def __init__(self, path: Path, *, hint: str | None = None, chunk: int = OV_CHUNK, pinning: bool = OV_PINNING, precision: str = "f32"):
        from .split import cut_of

        hint = hint or OV_HINT
        self.chunk, self.hint, self.precision = chunk, hint, precision
        cut = cut_of(precision)
        parts = [(None, precision)] if cut is None else [(("prefix", cut), "f32"), (("suffix", cut), "bf16")]
        self.stages = [_ov_compiled(path, hint=hint, pinning=pinning, precision=p, part=part) for part, p in parts]
        self.compiled = self.stages[-1]
        lanes = int(self.compiled.get_property("NUM_STREAMS")) if hint == "THROUGHPUT" else 1
        self.lanes = [[c.create_infer_request() for c in self.stages] for _ in range(max(1, lanes))]
        self._pool = ThreadPoolExecutor(len(self.lanes), thread_name_prefix="headstart-ov") if len(self.lanes) > 1 else None

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        starts = list(range(0, len(x), self.chunk))
        out: list[np.ndarray | None] = [None] * len(starts)

        def lane(k: int) -> None:
            requests = self.lanes[k]
            for j in range(k, len(starts), len(self.lanes)):
                requests[0].infer({0: x[starts[j] : starts[j] + self.chunk]})
                for before, request in zip(requests, requests[1:]):
                    request.set_input_tensor(0, before.get_output_tensor(0))
                    request.infer()
                out[j] = requests[-1].get_output_tensor(0).data.copy()  # the request's buffer is reused

        if self._pool is None:
            lane(0)
        else:
            list(self._pool.map(lane, range(len(self.lanes))))
        return (out[0] if len(out) == 1 else np.concatenate(out)).astype(np.float32, copy=False)


_OV_COMPILED: dict[tuple, object] = {}  # (onnx path, config, part) -> openvino.CompiledModel, for this process
_OV_COMPILED_MAX = 6  # the least recently used compiled model beyond this is dropped
_OV_LOCK = threading.Lock()


def _ov_compiled(path: Path, *, hint: str, pinning: bool, precision: str = "f32", part: tuple[str, str] | None = None):
    """``path`` compiled by OpenVINO for CPU in ``precision`` (:func:`headstart._util.ov_cpu_model`); compiled
    once per process and configuration. ``part``: ``("prefix" | "suffix", node)``, that part of the
    graph cut after ``node`` (:func:`.split.split_model`) instead of the whole."""
    key = (str(Path(path).resolve()), hint, pinning, precision, available_cores(), part)
    with _OV_LOCK:
        compiled = _OV_COMPILED.pop(key, None)
        if compiled is None:
            model = path
            if part is not None:
                from .split import split_model

                model = split_model(path, part[1])[0 if part[0] == "prefix" else 1]
            compiled = ov_cpu_model(model, hint=hint, pinning=pinning, precision=precision)
        _OV_COMPILED[key] = compiled  # most recently used last
        while len(_OV_COMPILED) > _OV_COMPILED_MAX:
            del _OV_COMPILED[next(iter(_OV_COMPILED))]
        return compiled


def make_runner(runtime: str, backbone: torch.nn.Module, sample: torch.Tensor, *, fingerprint: str, cache_dir: Path,
                precision: str = "f32") -> Runner:
    """The runner for ``runtime`` ("auto" | "openvino" | "onnx" | "torch"); ``backbone`` must be in eval mode.

    ``sample`` is a real preprocessed batch, used to verify a fresh ONNX export (and, once per
    OpenVINO version, OpenVINO's output) against eager torch. ``runtime="openvino"`` / ``"onnx"``
    raise if the backbone cannot be exported or that runtime gives different features; ``"auto"``
    falls back OpenVINO -> ONNX Runtime -> torch and logs why. ``precision="bf16"`` (or a mixed
    ``"bf16@<node>"``, :mod:`.split`): OpenVINO in bf16 (after its fp32 output was verified; whether
    bf16 agrees is :mod:`.precision`'s check), an error if OpenVINO is not usable: bf16 features
    must not silently be fp32 ones.
    """
    if precision != "f32":
        from .split import describe

        path = onnx_model(backbone, sample, fingerprint=fingerprint, cache_dir=cache_dir)
        openvino_runner(backbone, path, sample)  # the export and OpenVINO itself verified in fp32
        runner = OpenVinoRunner(path, precision=precision)
        logger.info("features: runtime openvino (%s, %s)", describe(precision), runner.hint)
        return runner
    device = _device_of(backbone)
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        if runtime == "auto":
            logger.info("features: runtime torch (backbone on %s)", device)
        return TorchRunner(backbone, device)
    if device.type != "cpu":
        raise ValueError(f"runtime={runtime!r} runs on CPU but the backbone is on {device}; use runtime='torch' or 'auto'.")
    try:
        path = onnx_model(backbone, sample, fingerprint=fingerprint, cache_dir=cache_dir)
        if runtime == "onnx":
            runner = OnnxRunner(path)
            logger.info("features: runtime onnx")
            return runner
    except Exception as e:  # noqa: BLE001 - any export/ORT failure means "use torch", with the reason
        if runtime != "auto":
            raise RuntimeError(f"runtime={runtime!r} is not usable for this backbone: {e}. Use runtime='torch' or 'auto'.") from e
        logger.info("features: runtime torch (ONNX Runtime not usable: %s)", e)
        return TorchRunner(backbone, device)
    try:
        runner = openvino_runner(backbone, path, sample)
        logger.info("features: runtime openvino (fp32, %s)", runner.hint)
        return runner
    except Exception as e:  # noqa: BLE001 - not installed, compile failure or different features
        if runtime == "openvino":
            raise RuntimeError(f"runtime='openvino' is not usable for this backbone: {e}. Use runtime='onnx', 'torch' or 'auto'.") from e
        logger.info("features: runtime onnx (OpenVINO not usable: %s)", e)
    try:
        return OnnxRunner(path)
    except Exception as e:  # noqa: BLE001
        logger.info("features: runtime torch (ONNX Runtime not usable: %s)", e)
        return TorchRunner(backbone, device)


def openvino_runner(backbone: torch.nn.Module, path: Path, sample: torch.Tensor) -> OpenVinoRunner:
    """An :class:`OpenVinoRunner` on the ONNX export at ``path``, whose output was verified against eager torch."""
    return verified_openvino(path, lambda: OpenVinoRunner(path), lambda runner: _compare(backbone, runner, sample))


def verified_openvino(path: Path, make_runner: Callable[[], Runner], verify: Callable[[Runner], tuple[float, float]]) -> Runner:
    """``make_runner()`` (OpenVINO on the export at ``path``), accepted once ``verify(runner)`` gives
    ``(max abs diff, scale)`` with ``diff <= RTOL * scale``. The verdict is kept beside the export, per
    OpenVINO version; a mismatch is remembered and raised (delete the verdict to retry)."""
    import openvino as ov

    version = ov.__version__.split("-")[0]
    verdict_path = path.with_name(f"{path.stem}.openvino{version}.json")
    verdict = _read_json(verdict_path)
    if verdict is not None and verdict.get("ok") is False:
        raise RuntimeError(f"an earlier check failed ({verdict.get('reason')}); delete {verdict_path} to retry")
    runner = make_runner()
    if verdict is None or not verdict.get("ok"):
        try:
            diff, scale = verify(runner)
            if not np.isfinite(diff) or diff > RTOL * max(scale, 1e-6):
                raise RuntimeError(f"OpenVINO features differ from eager torch: max abs diff {diff:.3g} (scale {scale:.3g})")
        except Exception as e:
            write_json(verdict_path, {"ok": False, "reason": f"{type(e).__name__}: {e}"[:2000]})
            raise
        write_json(verdict_path, {"ok": True, "max_abs_diff": diff, "scale": scale, "openvino": ov.__version__, "precision": "f32"})
        logger.info("features: OpenVINO output verified (max abs diff vs torch %.2g)", diff)
    return runner


def onnx_model(backbone: torch.nn.Module, sample: torch.Tensor, *, fingerprint: str, cache_dir: Path) -> Path:
    """Path of the verified ONNX export of ``backbone``, exporting and verifying it if needed."""
    return verified_onnx(
        onnx_path(cache_dir, fingerprint),
        export=lambda path: _export(backbone, sample, path),
        verify=lambda path: _compare(backbone, OnnxRunner(path), sample),
        fingerprint=fingerprint,
    )


def onnx_path(cache_dir: Path, fingerprint: str, prefix: str = "") -> Path:
    """Where the export of the backbone with ``fingerprint`` lives: keyed by the torch/ORT versions too."""
    import onnxruntime as ort

    stem = f"{prefix}{fingerprint[:32]}-torch{torch.__version__}-ort{ort.__version__}-opset{OPSET}".replace("+", "_")
    return Path(cache_dir) / "onnx" / f"{stem}.onnx"


def verified_onnx(path: Path, *, export: Callable[[Path], None], verify: Callable[[Path], tuple[float, float]], fingerprint: str) -> Path:
    """``path``, exported once by ``export(path)`` (atomically) and accepted only if ``verify(path)``
    gives ``(max abs diff, scale)`` with ``diff <= RTOL * scale``; the verdict is kept beside it
    (``.json``), so a failed export is not retried on every call (delete the verdict to retry)."""
    verdict_path = path.with_suffix(".json")
    verdict = _read_json(verdict_path)
    if verdict is not None and verdict.get("ok") is False:
        raise RuntimeError(f"an earlier export failed ({verdict.get('reason')}); delete {verdict_path} to retry")
    if verdict is not None and verdict.get("ok") and path.is_file():
        logger.debug("features: reusing ONNX export %s", path)
        return path
    t0 = time.perf_counter()
    try:
        export(path)
        diff, scale = verify(path)
        if not np.isfinite(diff) or diff > RTOL * max(scale, 1e-6):
            raise RuntimeError(f"ONNX Runtime features differ from eager torch: max abs diff {diff:.3g} (scale {scale:.3g})")
    except Exception as e:
        write_json(verdict_path, {"ok": False, "reason": f"{type(e).__name__}: {e}"[:2000]})
        path.unlink(missing_ok=True)
        raise
    write_json(verdict_path, {"ok": True, "max_abs_diff": diff, "scale": scale, "fingerprint": fingerprint})
    logger.info(
        "features: exported ONNX to %s in %.1fs (ONNX Runtime max abs diff vs torch %.2g)", path, time.perf_counter() - t0, diff
    )
    return path


def _export(backbone: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    """torch.onnx.export (TorchScript exporter) with a dynamic batch axis, written atomically."""
    x = sample[:2].detach().to("cpu", torch.float32).contiguous()
    if len(x) < 2:  # export with batch 2 so the batch axis cannot be specialised to 1
        x = torch.cat([x, x])
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation/tracer chatter; failures still raise
        torch.onnx.export(
            backbone,
            (x,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _compare(backbone: torch.nn.Module, runner: Runner, sample: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, max abs eager value) between ``runner`` and eager torch on ``sample[:8]``."""
    return compare_outputs(backbone, runner, sample[:8].detach().to("cpu", torch.float32).contiguous())


def compare_outputs(backbone: torch.nn.Module, runner: Runner, x) -> tuple[float, float]:
    """(max abs difference, max abs eager value) between ``runner(x)`` and eager ``backbone(x)``."""
    with torch.inference_mode():
        ref = backbone(x).float().numpy()
    got = runner(x)
    if got.shape != ref.shape:
        raise RuntimeError(f"{runner.name} output shape {got.shape} != eager {ref.shape}")
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
