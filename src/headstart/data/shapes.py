"""Synthetic shapes: the project's seed example of transfer (circles/squares/triangles ->
stars/pentagons/hexagons).

Each image is one filled shape of random size (a good fraction of the image), position (fully
inside), rotation and colour on a random background colour, plus Gaussian noise. Shapes are drawn
at 4x with ``PIL.ImageDraw`` and box-downsampled (anti-aliasing). The same ``seed`` gives
byte-identical images, and each class has its own random stream, so the circles of
``make_shapes(("circle", "star"))`` are those of ``make_shapes(("circle",), ...)``.

>>> ds = make_shapes(("circle", "square"), n_per_class=10, size=32)
>>> ds.items.shape, ds.classes
((20, 32, 32, 3), ['circle', 'square'])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from .dataset import LabeledDataset

#: Every shape class :func:`make_shapes` can draw: name -> (number of vertices, is a star).
_SHAPES = {"circle": (0, False), "square": (4, False), "triangle": (3, False),
           "star": (5, True), "pentagon": (5, False), "hexagon": (6, False)}
SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)

_SUPERSAMPLE = 4
_NOISE_STD = 6.0
_STAR_INNER = 0.42  # inner / outer radius of the star


def make_shapes(
    classes: Sequence[str] = ("circle", "square", "triangle"),
    n_per_class: int = 200,
    size: int = 64,
    seed: int = 0,
) -> LabeledDataset:
    """``n_per_class`` synthetic ``size`` x ``size`` RGB images of each shape in ``classes``.

    Items are a uint8 array ``(N, size, size, 3)``, grouped by class in the order given; labels
    index ``classes``. Names must be among :data:`SHAPE_NAMES`.
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in _SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise DataError(f"shape classes must be distinct names among {list(SHAPE_NAMES)}; got {classes}")
    if n_per_class < 1 or size < 8:
        raise DataError(f"need n_per_class >= 1 and size >= 8; got n_per_class={n_per_class}, size={size}")
    images = np.concatenate([_class_images(name, n_per_class, size, seed) for name in classes])
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    names = ",".join(classes)
    return LabeledDataset(images, labels, classes, "image", f"shapes:{names}:n={n_per_class}:size={size}:seed={seed}")


def _class_images(name: str, n: int, size: int, seed: int) -> np.ndarray:
    """``n`` images of one shape, from the random stream of ``(seed, shape)``."""
    rng = np.random.default_rng([seed, SHAPE_NAMES.index(name)])
    radius = rng.uniform(0.22, 0.45, n) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    angle = rng.uniform(0, 2 * np.pi, n)
    fg, bg = _colours(rng, n)
    masks = np.stack([_mask(name, size, r, x, y, a) for r, x, y, a in zip(radius, cx, cy, angle)])
    alpha = masks[..., None].astype(np.float32) * (1 / 255)
    img = bg[:, None, None, :] * (1 - alpha) + fg[:, None, None, :] * alpha
    img += rng.standard_normal(img.shape, dtype=np.float32) * _NOISE_STD
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random fill and background colours, pushed apart where they would be hard to tell apart."""
    fg = rng.integers(0, 256, (n, 3))
    bg = rng.integers(0, 256, (n, 3))
    close = np.abs(fg - bg).sum(axis=1) < 150
    fg[close] = (bg[close] + 128) % 256
    return fg.astype(np.float32), bg.astype(np.float32)


def _mask(name: str, size: int, radius: float, cx: float, cy: float, angle: float) -> np.ndarray:
    """A uint8 ``size`` x ``size`` coverage mask of one shape, anti-aliased by supersampling."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    vertices, star = _SHAPES[name]
    if vertices == 0:
        draw.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s, (cy + radius) * s], fill=255)
    else:
        draw.polygon(_polygon(vertices, star, radius * s, cx * s, cy * s, angle), fill=255)
    return np.asarray(canvas.reduce(s))


def _polygon(vertices: int, star: bool, radius: float, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or star, alternating outer and inner radius)."""
    k = np.arange(vertices * (2 if star else 1))
    theta = angle + np.pi * k / vertices if star else angle + 2 * np.pi * k / vertices
    r = np.where(k % 2 == 1, radius * _STAR_INNER, radius) if star else np.full(len(k), radius)
    return list(zip((cx + r * np.cos(theta)).tolist(), (cy + r * np.sin(theta)).tolist()))
