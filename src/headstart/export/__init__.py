"""Exporting a run: the whole classifier (backbone + head) as one graph, ONNX or OpenVINO, optionally pruned and INT8, checked.

``export_run(run, format="onnx" | "openvino", quantize=None | "int8", prune=None | AMOUNT, out=DIR)``
writes ``DIR/model.onnx`` (fp32; with ``quantize="int8"`` also ``DIR/model_int8.onnx``; with
``format="openvino"`` the same graphs as OpenVINO IR, ``model.xml``/``.bin``: :mod:`.openvino`),
``DIR/preprocessing.json`` (what another program needs to feed the graph) and ``DIR/export.json``
(the parity check and the size / speed / accuracy table), and records the table in the run folder
(``RUN/exports.json``), where the run's report shows it (:mod:`headstart.evaluate.export_table`).
``OnnxClassifier(DIR)`` predicts from those files with onnxruntime (or openvino), numpy and Pillow only.

``prune=AMOUNT`` (0 < AMOUNT < 1; :mod:`.prune`): structured channel pruning with torch-pruning
(``pip install 'headstart[export]'``), then ``prune_epochs`` of fine-tuning in the one training
loop on the run's training split; the pruned model is what gets exported.

Parity (the export's contract: the exported model gives the same predictions as the run). Every
export is compared with the eager torch model on the run's validation split (reloaded from the
data source recorded in ``config.yaml``, with the run's fractions and seed), or on ``calibration``
data when given. The export is refused (:class:`~headstart.errors.HeadstartError`, nothing is
written) when

- fp32: the max |logit difference| to the eager model it was exported from exceeds
  :data:`MAX_DIFF_FP32` = 1e-3 per unit of the largest |logit| (``max(1, max |logit|)``;
  ``max_diff=`` / ``--max-diff`` to override);
- int8: top-1 agreement with that eager model is below :data:`MIN_AGREEMENT_INT8` = 0.99
  (``min_agreement=`` / ``--min-agreement`` to override);
- pruned: the pruned model's accuracy is more than
  :data:`~.prune.MAX_ACCURACY_DROP_PRUNED` = 0.02 below the run's (``max_accuracy_drop=`` /
  ``--max-accuracy-drop``). The table's ``agreement`` and ``accuracy`` are always against the run.

INT8 is ONNX Runtime static quantization (per-channel int8 weights, uint8 activations, QDQ format:
see :mod:`.quantize` for the measurement), calibrated on the same images; OpenVINO runs that same
QDQ graph (why not NNCF: :mod:`.openvino`).

Serving: :mod:`.serve` (``headstart serve RUN_OR_EXPORT``), FastAPI + uvicorn over an export folder
(:class:`OnnxClassifier`, ONNX or OpenVINO) or a run folder. Not built: text-run export (refused
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
