"""Runners that turn a preprocessed batch into pooled features: ONNX Runtime on CPU, or eager torch.

``runtime="auto"`` picks ONNX Runtime on CPU when the backbone exports cleanly and the exported
graph gives the same features as eager torch, and eager torch otherwise (and always on CUDA).
Exported graphs live in ``<cache_dir>/onnx/``, one per backbone fingerprint and software versions,
beside a small JSON verdict; a backbone is exported and verified once, later calls reuse the file
(and a failed export is remembered, so it is not retried on every call).

Why ONNX Runtime: on a 2-core CPU it runs EfficientNet-Lite0 several times faster than eager torch
(see ``benchmarks/extract_speed.py``). OpenVINO would be faster still but is not a dependency.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .._io import atomic_path, write_json

logger = logging.getLogger("headstart.features")

RUNTIMES = ("auto", "onnx", "torch")
OPSET = 17
RTOL = 1e-4  # max |ort - torch| / max |torch| on the verification batch


class Runner(Protocol):
    name: str

    def __call__(self, x: torch.Tensor) -> np.ndarray: ...


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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


class OnnxRunner:
    """An ONNX Runtime CPU session: all graph optimisations, intra-op threads = available cores.

    Batches are run ``chunk`` images at a time: ORT's arena keeps the activation memory of the
    largest run (about 25 MB per 224 px image for EfficientNet-Lite0), while throughput on CPU is
    flat beyond ~8 images per run; so a large ``batch_size`` costs no extra memory here.
    """

    name = "onnx"

    def __init__(self, path: Path, chunk: int = 16):
        self.chunk = chunk
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = available_cores()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        outs = [self.session.run(None, {self.input_name: x[i : i + self.chunk]})[0] for i in range(0, len(x), self.chunk)]
        return (outs[0] if len(outs) == 1 else np.concatenate(outs)).astype(np.float32, copy=False)


def make_runner(runtime: str, backbone: torch.nn.Module, sample: torch.Tensor, *, fingerprint: str, cache_dir: Path) -> Runner:
    """The runner for ``runtime`` ("auto" | "onnx" | "torch"); ``backbone`` must be in eval mode.

    ``sample`` is a real preprocessed batch, used to verify a fresh ONNX export against eager torch.
    ``runtime="onnx"`` raises if the backbone cannot be exported or gives different features;
    ``"auto"`` falls back to torch and logs why.
    """
    device = _device_of(backbone)
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        if runtime == "auto":
            logger.info("features: runtime torch (backbone on %s)", device)
        return TorchRunner(backbone, device)
    if device.type != "cpu":
        raise ValueError(f"runtime='onnx' runs on CPU but the backbone is on {device}; use runtime='torch' or 'auto'.")
    try:
        path = onnx_model(backbone, sample, fingerprint=fingerprint, cache_dir=cache_dir)
        return OnnxRunner(path)
    except Exception as e:  # noqa: BLE001 - any export/ORT failure means "use torch", with the reason
        if runtime == "onnx":
            raise RuntimeError(f"runtime='onnx' is not usable for this backbone: {e}. Use runtime='torch' or 'auto'.") from e
        logger.info("features: runtime torch (ONNX Runtime not usable: %s)", e)
        return TorchRunner(backbone, device)


def onnx_model(backbone: torch.nn.Module, sample: torch.Tensor, *, fingerprint: str, cache_dir: Path) -> Path:
    """Path of the verified ONNX export of ``backbone``, exporting and verifying it if needed."""
    import onnxruntime as ort

    stem = f"{fingerprint[:32]}-torch{torch.__version__}-ort{ort.__version__}-opset{OPSET}".replace("+", "_")
    path = Path(cache_dir) / "onnx" / f"{stem}.onnx"
    verdict_path = path.with_suffix(".json")
    verdict = _read_json(verdict_path)
    if verdict is not None and verdict.get("ok") is False:
        raise RuntimeError(f"an earlier export failed ({verdict.get('reason')}); delete {verdict_path} to retry")
    if verdict is not None and verdict.get("ok") and path.is_file():
        logger.info("features: runtime onnx (reusing %s)", path)
        return path
    t0 = time.perf_counter()
    try:
        _export(backbone, sample, path)
        diff, scale = _compare(backbone, path, sample)
        if not np.isfinite(diff) or diff > RTOL * max(scale, 1e-6):
            raise RuntimeError(f"ONNX Runtime features differ from eager torch: max abs diff {diff:.3g} (scale {scale:.3g})")
    except Exception as e:
        write_json(verdict_path, {"ok": False, "reason": f"{type(e).__name__}: {e}"[:2000]})
        path.unlink(missing_ok=True)
        raise
    write_json(verdict_path, {"ok": True, "max_abs_diff": diff, "scale": scale, "fingerprint": fingerprint})
    logger.info(
        "features: runtime onnx (exported to %s in %.1fs; max abs diff vs torch %.2g)", path, time.perf_counter() - t0, diff
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


def _compare(backbone: torch.nn.Module, path: Path, sample: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, max abs eager value) between ORT and eager torch on ``sample``."""
    x = sample[:8].detach().to("cpu", torch.float32).contiguous()
    with torch.inference_mode():
        ref = backbone(x).float().numpy()
    got = OnnxRunner(path)(x)
    if got.shape != ref.shape:
        raise RuntimeError(f"ONNX output shape {got.shape} != eager {ref.shape}")
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
