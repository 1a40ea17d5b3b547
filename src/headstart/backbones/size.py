"""The input size images are resized to for a backbone: ``--image-size``, or ``auto`` from the data's native size."""

from __future__ import annotations

from typing import Any

# Measured on MNIST 5k (28 px; 1,000 train / 500 val / 3,500 test), EfficientNet-Lite0, 2 cores:
# linear probe 0.881 / 0.906 / 0.921 test accuracy at 64 / 112 / 224 px, so the probe, which runs the
# backbone once, gets 4x the native side (112 px); a fine-tuning step costs 0.9 s per 32 images at
# 64 px and 3.6 s at 112 px, and 6 epochs at 64 px reached 0.936, so anything that trains the
# backbone gets 2x (at least 64 px).
AUTO_SIZE_FACTOR = {"linear": 4, "train": 2}
AUTO_MIN_SIZE = 64


def resolve_image_size(image_size: int | str, bb: Any, train: Any, strategy: str = "linear") -> int:
    """The side, in pixels, that images are resized to for ``bb``.

    ``"auto"``: the backbone's own size, unless the images (``train``, a LabeledDataset) are much
    smaller: then a multiple of their native short side (``AUTO_SIZE_FACTOR[strategy]``: 4 for a probe
    on frozen features, ``"linear"``; 2 for anything that trains the backbone; at least
    ``AUTO_MIN_SIZE``), rounded up to a multiple of 16, so a 28-px image is not blown up to 224 px (64
    times the pixels it has). A number is returned as it is (checked by the caller's settings).
    """
    default = int(bb.preprocessing.input_size[0])
    if image_size == "auto":
        native = train.native_size()
        if native is None:
            return default
        factor = AUTO_SIZE_FACTOR["linear" if strategy == "linear" else "train"]
        return min(default, max(AUTO_MIN_SIZE, -(-int(factor * native) // 16) * 16))
    return int(image_size)
