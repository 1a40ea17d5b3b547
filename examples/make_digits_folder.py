"""Write scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as a real image folder.

    python examples/make_digits_folder.py data/digits     # data/digits/<0..9>/*.png, 64x64 PNGs
    headstart fit data/digits --backbone efficientnet_lite0 --strategy linear

Real scans of real handwriting (UCI "Optical Recognition of Handwritten Digits"), shipped inside
scikit-learn, so the example runs offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(out: str) -> None:
    digits = load_digits()
    root = Path(out)
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = (255 - img / 16.0 * 255).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(grey).resize((64, 64), Image.BICUBIC).save(folder / f"{i:04d}.png")
    print(f"wrote {len(digits.target)} images to {root}/<digit>/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/digits")
