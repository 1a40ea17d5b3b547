"""Small helpers used on several layers (backbones, features, export): usable CPU cores, a module's weights
hash, the ONNX Runtime CPU session that feature extraction and exported models share, and the lazy
names of a package (:func:`lazy_exports`).

They sit at the bottom with :mod:`headstart._io` and :mod:`headstart.errors`, so that a backbone can use
them without importing :mod:`headstart.features`, which sits above the backbones.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where it is used: an exported model runs without it (headstart.export)
    import torch


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and raw bytes), in key order."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ort_session(path: "str | os.PathLike", threads: int | None = None):
    """An ONNX Runtime CPU session on the model at ``path``: all graph optimisations, intra-op threads =
    ``threads`` (default: the available cores). Needs only onnxruntime (no torch)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ov_cpu_model(path: "str | os.PathLike | Any", *, hint: str = "LATENCY", threads: int | None = None, pinning: bool | None = None,
                 precision: str = "f32"):
    """``path`` (ONNX or OpenVINO IR file, or an ``openvino.Model``) compiled by OpenVINO for CPU in
    ``precision`` (default fp32: the CPU plugin defaults to bf16 where the CPU has it, which changes the
    logits), with ``PERFORMANCE_HINT`` ``hint`` and ``threads`` inference threads (default: the
    available cores). Needs only openvino (no torch)."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads or available_cores()}
    if pinning is not None:
        config["ENABLE_CPU_PINNING"] = pinning
    core = ov.Core()
    model = path if isinstance(path, ov.Model) else core.read_model(str(path))
    return core.compile_model(model, "CPU", config)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each name of ``exports``
    (name -> module) on first use and keep it in the package's namespace, so that importing the
    package imports none of them (``import headstart`` stays cheap; an export folder is read without torch)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
