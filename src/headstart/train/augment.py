"""Augmentation presets that match the backbone's preprocessing (torchvision ``transforms.v2``).

The seed examples augment with Keras' ``ImageDataGenerator`` (random crops/zooms, flips, rotations,
brightness); these presets are their torchvision v2 counterparts, ending in exactly the backbone's
size, scaling and normalisation (:class:`~headstart.backbones.Preprocessing`), so training and
inference see the same tensor statistics:

* ``none``: the backbone's own evaluation transform;
* ``light``: ``RandomResizedCrop(size, scale=(0.8, 1))`` + horizontal flip;
* ``strong``: ``light`` + ``RandomRotation(15)`` + ``ColorJitter(0.2, 0.2, 0.2)``.

Every piece is configurable (:class:`Augment`): e.g. ``Augment.preset("light", hflip=False)`` for
digits or text-like images, where a mirror image is another class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

PRESETS = ("none", "light", "strong")


@dataclass(frozen=True)
class Augment:
    """A training-time augmentation: crop scale range, flip, rotation (degrees), colour jitter strength."""

    name: str = "none"
    crop_scale: tuple[float, float] | None = None
    hflip: bool = False
    rotation: float = 0.0
    jitter: float = 0.0

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Augment":
        if name not in PRESETS:
            raise ValueError(f"The 'augment' parameter must be one of {set(PRESETS)}; got {name!r}.")
        base = {
            "none": cls("none"),
            "light": cls("light", crop_scale=(0.8, 1.0), hflip=True),
            "strong": cls("strong", crop_scale=(0.8, 1.0), hflip=True, rotation=15.0, jitter=0.2),
        }[name]
        return replace(base, **overrides)

    @property
    def is_identity(self) -> bool:
        return self.crop_scale is None and not self.hflip and not self.rotation and not self.jitter

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_scale"] = list(self.crop_scale) if self.crop_scale else None
        return d

    def transform(self, preprocessing: Any) -> Callable[[Any], torch.Tensor]:
        """The training transform for ``preprocessing`` (its eval transform when this is ``none``)."""
        if self.is_identity or getattr(preprocessing, "modality", "image") != "image":
            if not self.is_identity:
                raise ValueError(f"Image augmentation {self.name!r} does not apply to {preprocessing.modality} data; use augment='none'.")
            return preprocessing.transform()
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        interp = InterpolationMode(preprocessing.interpolation)
        h, w = preprocessing.input_size
        steps: list[Any] = [T.ToImage()]
        if self.crop_scale is not None:
            steps.append(T.RandomResizedCrop((h, w), scale=tuple(self.crop_scale), interpolation=interp, antialias=True))
        else:
            steps.append(T.Resize((h, w), interpolation=interp, antialias=True))
        if self.hflip:
            steps.append(T.RandomHorizontalFlip())
        if self.rotation:
            steps.append(T.RandomRotation(self.rotation, interpolation=InterpolationMode.BILINEAR))
        if self.jitter:
            steps.append(T.ColorJitter(brightness=self.jitter, contrast=self.jitter, saturation=self.jitter))
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]
        return T.Compose(steps)
