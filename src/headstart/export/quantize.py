"""INT8 static quantization of an exported graph with ONNX Runtime, calibrated on real images.

Per-channel int8 weights, uint8 activations, MinMax calibration. Format: QDQ (QuantizeLinear /
DequantizeLinear pairs that ORT fuses into integer kernels). QOperator was measured too: see
:data:`QUANT_FORMAT`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import HeadstartError

#: Measured on this 2-core AVX-512-VNNI CPU (``benchmarks/export.py``: EfficientNet-Lite0 + linear head at
#: 64 px, batch 32, 2 threads): QDQ 1,337 and QOperator 1,344 images/s, within noise of each other
#: (and 3.66 vs 3.45 MB, the same agreement); QDQ is the format ONNX Runtime recommends, so QDQ.
QUANT_FORMAT = "QDQ"


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over batches of preprocessed images."""

    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self.name, self.it = name, iter(batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: np.ascontiguousarray(x, dtype=np.float32)}


def quantize_int8(fp32: Path, out: Path, batches: Iterable[np.ndarray], *, input_name: str = "images", quant_format: str = QUANT_FORMAT) -> Path:
    """Write the INT8 model of ``fp32`` to ``out``, calibrated on ``batches`` (``(n, 3, h, w)`` float32)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    if quant_format not in ("QDQ", "QOperator"):
        raise HeadstartError(f"The quantization format must be one of {{'QDQ', 'QOperator'}}; got {quant_format!r}.")
    logging.getLogger().debug("quantizing %s", fp32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + ORT's basic graph optimisation (folds BN, constants)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a warning per integer tensor it leaves alone
        try:
            quantize_static(str(pre), str(out), Reader(input_name, batches), quant_format=getattr(QuantFormat, quant_format),
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return out
