"""Exporting a run: the whole classifier (backbone + head) as one ONNX graph, optionally INT8, checked.

``export_run(run, format="onnx", quantize=None | "int8", out=DIR)`` writes ``DIR/model.onnx``
(fp32; with ``quantize="int8"`` also ``DIR/model_int8.onnx``), ``DIR/preprocessing.json`` (what
another program needs to feed the graph) and ``DIR/export.json`` (the parity check and the speed
table). ``OnnxClassifier(DIR)`` predicts from those files with onnxruntime, numpy and Pillow only.

Parity (the export's contract: the exported model gives the same predictions as the run). Every
export is compared with the eager torch model on the run's validation split (reloaded from the
data source recorded in ``config.yaml``, with the run's fractions and seed), or on ``calibration``
data when given. The export is refused (:class:`~headstart.errors.HeadstartError`, nothing is
written) when

- fp32: the max |logit difference| to eager torch exceeds :data:`MAX_DIFF_FP32` = 1e-3
  (``max_diff=`` / ``--max-diff`` to override);
- int8: top-1 agreement with eager torch is below :data:`MIN_AGREEMENT_INT8` = 0.99
  (``min_agreement=`` / ``--min-agreement`` to override).

INT8 is ONNX Runtime static quantization (per-channel int8 weights, uint8 activations, QDQ format:
see :mod:`.quantize` for the measurement), calibrated on the same images.

Serving: :mod:`.serve` (``headstart serve RUN_OR_EXPORT``), FastAPI + uvicorn over an export folder
(:class:`OnnxClassifier`) or a run folder. Not built: pruning, OpenVINO export, text-run export (refused
with an error saying so).
Names are imported on first use: importing :class:`OnnxClassifier` imports no torch.
"""

from __future__ import annotations

from .._util import lazy_exports

_EXPORTS = {
    "export_run": "headstart.export.onnx",
    "ExportResult": "headstart.export.onnx",
    "MAX_DIFF_FP32": "headstart.export.onnx",
    "MIN_AGREEMENT_INT8": "headstart.export.onnx",
    "FORMATS": "headstart.export.onnx",
    "OnnxClassifier": "headstart.export.classifier",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
