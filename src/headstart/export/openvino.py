"""OpenVINO IR of an exported graph (``headstart export --format openvino``), and an OpenVINO session for the export folder.

The IR (``model.xml`` + ``model.bin``) is converted from the checked ONNX graph by OpenVINO's own
converter (``openvino.convert_model``, then ``openvino.save_model`` with fp32 weights kept:
``compress_to_fp16=False``), so the IR and the ONNX file are the same graph. ``--quantize int8``
converts ONNX Runtime's QDQ INT8 graph (:mod:`.quantize`): OpenVINO reads the QuantizeLinear /
DequantizeLinear pairs as FakeQuantize and runs integer kernels. NNCF (OpenVINO's own post-training
quantizer) is not used: it would add a dependency with its own stack (nncf, pymoo, ...), and the
ORT static quantization it would replace was measured at 2.37x eager torch on the digits run
(``benchmarks/results/export_digits.json``); the same calibrated graph then serves both runtimes.

The CPU plugin is compiled with ``INFERENCE_PRECISION_HINT=f32`` (its default is bf16 on CPUs that
have it, which changes the logits: see :mod:`headstart.features.runtime`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import HeadstartError


def onnx_to_ir(onnx_path: Path, xml_path: Path) -> Path:
    """Write the OpenVINO IR of ``onnx_path`` to ``xml_path`` (and its ``.bin``)."""
    try:
        import openvino as ov
    except ImportError:
        raise HeadstartError("--format openvino needs OpenVINO, which is not installed. Fix: pip install 'openvino==2026.4.1'.") from None
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001 - any converter failure, with its reason
        raise HeadstartError(f"OpenVINO cannot convert the exported graph {onnx_path.name} ({type(e).__name__}: {e}). "
                             "Fix: export with --format onnx.") from e
    return xml_path


class OpenVinoSession:
    """An OpenVINO CPU model with the part of ``onnxruntime.InferenceSession``'s interface the export uses:
    ``run(None, {name: x}) -> [logits]`` and ``get_inputs()[0].name``."""

    class _Input:
        def __init__(self, name: str):
            self.name = name

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise HeadstartError(f"{Path(path).name} is an OpenVINO model, and OpenVINO is not installed. Fix: pip install 'openvino==2026.4.1', "
                                 "or re-export with --format onnx.") from None
        from .._util import ov_cpu_model

        self.compiled = ov_cpu_model(path, hint="LATENCY", threads=threads)
        self.request = self.compiled.create_infer_request()
        self._inputs = [self._Input(self.compiled.input(0).get_any_name())]

    def get_inputs(self) -> list:
        return self._inputs

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        (x,) = feeds.values()
        return [self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0].copy()]
