"""headstart: transfer learning for PyTorch.

The public API fits on one page::

    import headstart
    model = headstart.fit("data/", backbone="efficientnet_lite0", strategy="linear")
    model.predict(["img.jpg"]); model.evaluate("data/test")
    model = headstart.load("runs/NAME")

Names are imported on first use, so ``import headstart`` is cheap and changes no global state.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "headstart.fitting",
    "load": "headstart.model",
    "Model": "headstart.model",
    "create_backbone": "headstart.backbones",
    "list_backbones": "headstart.backbones",
    "register_backbone": "headstart.backbones",
    "Backbone": "headstart.backbones",
    "extract_features": "headstart.features",
    "rank_backbones": "headstart.select",
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


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
