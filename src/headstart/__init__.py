"""headstart: transfer learning for PyTorch.

The public API fits on one page::

    import headstart
    model = headstart.fit("data/", backbone="efficientnet_lite0", strategy="linear")
    model.predict(["img.jpg"]); model.evaluate("data/test")
    model = headstart.load("runs/NAME")
"""

__version__ = "0.1.0"

from .backbones import Backbone, create_backbone, list_backbones, register_backbone  # noqa: E402
from .errors import BackboneError, DataError, HeadstartError, RunFolderError, WeightsUnavailableError  # noqa: E402
from .fit import fit  # noqa: E402
from .model import Model, load  # noqa: E402


def __getattr__(name: str):
    # Data helpers, imported lazily so `import headstart` stays light.
    if name in {"load_splits", "make_shapes", "LabeledDataset", "Splits", "extract_features"}:
        if name == "extract_features":
            from .features import extract_features

            return extract_features
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


__all__ = [
    "Backbone",
    "BackboneError",
    "DataError",
    "HeadstartError",
    "Model",
    "RunFolderError",
    "WeightsUnavailableError",
    "create_backbone",
    "extract_features",
    "fit",
    "list_backbones",
    "load",
    "load_splits",
    "make_shapes",
    "register_backbone",
]
