"""headstart: transfer learning for PyTorch.

The public API fits on one page::

    import headstart
    model = headstart.fit("data/", backbone="efficientnet_lite0", strategy="linear")
    model.predict(["img.jpg"]); model.evaluate("data/test")
    model = headstart.load("runs/NAME")

Names are imported on first use, so ``import headstart`` is cheap and changes no global state.

Layers. The packages and top-level modules below ``headstart`` form layers, and a module imports
only from layers below its own (``tests/test_layers.py`` reads every import, those inside functions
too). Bottom to top, as :data:`LAYERS` lists them (``|`` joins the units of one layer, which do not
import each other)::

    errors | _io | _util -> data | methods -> settings -> backbones -> heads | features -> train -> evaluate | run_folder
    -> model -> select | gap | continual | ensemble | export | explaining -> fitting -> experiments | demo -> cli

- ``errors``, ``_io``, ``_util``: exceptions; atomic writes and file hashes; CPU cores and the
  weights hash that backbones and features share. They import nothing of headstart.
- ``data`` loads datasets; ``methods`` are what a fit can add to the training loop (focal loss,
  ...), by name; ``settings`` is every setting of a fit, typed and validated (what
  ``fit``, the command line and ``config.yaml`` share); ``backbones`` builds pretrained models; ``heads`` are classifiers on
  features; ``features`` extracts and caches a backbone's features of a dataset.
- ``train``: the one training loop and the recipes ``fit`` runs in it (images: ``train.recipes``;
  texts: ``train.text_recipe``).
- ``evaluate``: metrics, plots and reports from saved results, never training; ``run_folder``
  writes a run's files.
- ``model``: a trained backbone and head, saved and loaded.
- ``select``: transferability scores (it loads a previous run's head, through ``model``, to score
  a ``run:`` backbone); ``gap``: how far apart two domains are on a backbone's features
  (``headstart gap``), with the adaptation losses' own distances (``methods.divergence``);
  ``continual``: continuing a finished run on new classes (``fit --from RUN``), through ``model``;
  ``ensemble``: several runs as one model (``headstart ensemble``), and ``headstart.load``, which
  opens a run folder or an ensemble folder; ``export``: a run's classifier as one ONNX graph or
  OpenVINO IR (fp32, INT8, channel-pruned and fine-tuned), checked against the run on its validation
  images (``headstart export``), and ``export.OnnxClassifier``, which predicts from either without torch; ``explaining``: Grad-CAM
  heat maps of a run over images (``headstart explain``), through ``model``.
- ``fitting``: ``fit``. ``experiments``: what calls ``fit`` many times (``headstart curve``);
  ``demo``. ``cli``: thin commands over all of these.

Four upward imports remain, each inside one function and allowed by name in the test:

- ``heads.mlp`` -> ``train``: the MLP head's fitter runs the one training loop, and the training
  recipes build heads (the loop itself, ``train.loop``, imports no head);
- ``backbones.run_backbone`` -> ``model``: the ``run:<folder>`` backbone reads a run folder with
  ``model``'s reader, which stays next to its writer (``Model.save``);
- ``evaluate.compare`` -> ``model``: ``headstart compare`` times each run's forward pass, which
  needs the model loaded, while ``model`` uses ``evaluate.metrics`` for ``Model.evaluate``;
- ``methods.distill`` -> ``model``: distillation's teacher is a finished run, read (once, before
  the loop) by ``model``'s run-folder reader.
"""

from __future__ import annotations

from ._util import lazy_exports

__version__ = "0.1.0"

#: The layers of the package, bottom first (see the module doc); ``tests/test_layers.py`` enforces them.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_io", "_util"),
    ("data", "methods"),
    ("settings",),
    ("backbones",),
    ("heads", "features"),
    ("train",),
    ("evaluate", "run_folder"),
    ("model",),
    ("select", "gap", "continual", "ensemble", "export", "explaining"),
    ("fitting",),
    ("experiments", "demo"),
    ("cli",),
)

_EXPORTS = {
    "fit": "headstart.fitting",
    "load": "headstart.ensemble",
    "Model": "headstart.model",
    "create_backbone": "headstart.backbones",
    "list_backbones": "headstart.backbones",
    "register_backbone": "headstart.backbones",
    "Backbone": "headstart.backbones",
    "extract_features": "headstart.features",
    "rank_backbones": "headstart.select",
    "domain_gap": "headstart.gap",
    "export_run": "headstart.export",
    "explain": "headstart.explaining",
    "load_splits": "headstart.data",
    "make_shapes": "headstart.data",
    "LabeledDataset": "headstart.data",
    "Splits": "headstart.data",
    "HeadstartError": "headstart.errors",
    "DataError": "headstart.errors",
    "BackboneError": "headstart.errors",
    "WeightsUnavailableError": "headstart.errors",
    "RunFolderError": "headstart.errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
