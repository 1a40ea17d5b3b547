"""The labeled dataset every loader returns, and the train/val/test splits of one.

Items are image file paths, in-memory arrays (``uint8`` images of shape ``(N, H, W, 3)``, from
numpy arrays or the shapes generator), or, for ``modality="text"``, the texts themselves (``str``). Labels are class indices into
``classes``. Items that could not be used are kept in ``problems`` with the reason: reported,
never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Problem:
    """An item that was skipped, and why (e.g. a truncated JPEG)."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class LabeledDataset:
    items: Sequence[Any] | np.ndarray  # list of image paths, uint8 array (N, H, W, 3), or list of texts
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    modality: str = "image"  # "image" | "text"
    source: str = ""  # where it came from, for reports ("folder:/data/x", "shapes:seed=0", ...)
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, np.ndarray)

    def subset(self, index: Sequence[int] | np.ndarray) -> "LabeledDataset":
        index = np.asarray(index, dtype=np.int64)
        items = self.items[index] if self.in_memory else [self.items[i] for i in index]
        return LabeledDataset(items, self.labels[index], list(self.classes), self.modality, self.source, [])

    def counts(self) -> dict[str, int]:
        if not self.classes:  # unlabeled (a target domain; see .domain)
            return {}
        c = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c)}

    def item_name(self, i: int) -> str:
        """A human name for item ``i`` (its path, or ``source[i]``)."""
        return str(self.items[i]) if not self.in_memory else f"{self.source}[{i}]"

    def load(self, i: int, *, decode_size=None):
        """Item ``i`` ready for a backbone's transform: a PIL RGB image (or the text).

        ``decode_size``: see :func:`~headstart.data.images.open_image`'s ``draft`` (image files only)."""
        from .images import open_image

        if self.modality == "text":
            return str(self.items[i])
        if self.in_memory:
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(self.items[i])).convert("RGB")
        return open_image(self.items[i], draft=decode_size)

    def native_size(self, sample: int = 64) -> int | None:
        """The median short side, in pixels, of the images (a seeded sample of ``sample`` files, read
        from their headers only); ``None`` for texts or when no sampled file can be read."""
        if self.modality == "text" or not len(self):
            return None
        if self.in_memory:
            return int(min(self.items.shape[1:3]))
        from PIL import Image

        idx = np.random.default_rng(0).permutation(len(self))[:sample]
        sides = []
        for i in idx:
            try:
                with Image.open(self.items[i]) as im:  # lazy: the header only
                    sides.append(min(im.size))
            except OSError:
                continue
        return int(np.median(sides)) if sides else None

    def item_bytes(self, i: int) -> bytes:
        """The raw content of item ``i``, for content-keyed caches (a text: its UTF-8 bytes)."""
        if self.modality == "text":
            return str(self.items[i]).encode("utf-8")
        if self.in_memory:
            a = np.ascontiguousarray(self.items[i])
            return str(a.shape).encode() + a.tobytes()
        return Path(self.items[i]).read_bytes()


@dataclass
class Splits:
    train: LabeledDataset
    val: LabeledDataset | None = None
    test: LabeledDataset | None = None

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: ds.counts() for name, ds in (("train", self.train), ("val", self.val), ("test", self.test)) if ds is not None}


class TorchDataset:
    """A ``torch.utils.data.Dataset`` view of a :class:`LabeledDataset`: ``(transform(item), label)``.

    A transform with a ``decode_size`` attribute (a backbone's eval transform) has large JPEGs
    decoded at reduced scale (see :meth:`headstart.backbones.base.Preprocessing.decode_size`)."""

    def __init__(self, ds: LabeledDataset, transform):
        self.ds = ds
        self.transform = transform
        self.decode_size = getattr(transform, "decode_size", None) if ds.modality == "image" else None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds.load(i, decode_size=self.decode_size) if self.decode_size is not None else self.ds.load(i)
        return self.transform(item), int(self.ds.labels[i])
