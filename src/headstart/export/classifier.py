"""Predicting from an export folder (``model.onnx`` + ``preprocessing.json``) without torch or training code.

An OpenVINO export (``model.xml``, ``--format openvino``) runs in OpenVINO instead of ONNX Runtime.
Only onnxruntime (or openvino), numpy and Pillow are imported (``tests/test_export.py`` checks ``sys.modules`` in
a fresh process). The preprocessing follows ``preprocessing.json``: RGB, resize (``crop_pct`` < 1:
short side to ``round(min(h, w) / crop_pct)`` then a centre crop; else straight to ``(h, w)``) with
Pillow's filter of the recorded interpolation, scale to [0, 1], ``(x - mean) / std``, NCHW float32.
Pillow's resize can differ from torchvision's by a grey level here and there, so probabilities
match the run closely, not bit for bit (see the tests' tolerance).

    clf = OnnxClassifier("exports/NAME")       # int8 when the folder has it, else fp32
    clf.predict(["img.jpg", array_hw3_uint8])  # class names
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._util import ort_session
from ..errors import HeadstartError

PREPROCESSING_FORMAT = "headstart-onnx-preprocessing"


class OnnxClassifier:
    """A classifier read from an export folder; ``precision`` = ``"int8"`` | ``"fp32"`` | ``None`` (the folder's default)."""

    def __init__(self, folder: str | Path, *, precision: str | None = None, threads: int | None = None, batch_size: int = 32):
        folder = Path(folder)
        meta_path = folder / "preprocessing.json"
        if not meta_path.is_file():
            raise HeadstartError(f"{str(folder)!r} has no preprocessing.json; give a folder written by 'headstart export'.")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise HeadstartError(f"{meta_path} is not valid JSON ({e}); re-run 'headstart export'.") from None
        if self.meta.get("format") != PREPROCESSING_FORMAT:
            raise HeadstartError(f"{meta_path} is not a headstart export's preprocessing file; re-run 'headstart export'.")
        models = self.meta["models"]
        precision = precision or self.meta["default_model"]
        if precision not in models:
            raise HeadstartError(f"This export has no {precision!r} model (it has {sorted(models)}). Fix: precision one of those, "
                                 "or re-export with --quantize int8.")
        self.precision = precision
        self.classes: list[str] = list(self.meta["classes"])
        path = folder / models[precision]
        if path.suffix == ".xml":  # an OpenVINO IR (--format openvino): OpenVINO's runtime, imported only here
            from .openvino import OpenVinoSession

            self.session = OpenVinoSession(path, threads)
        else:
            self.session = ort_session(path, threads)
        self.input_name = self.meta["input"]["name"]
        self.batch_size = batch_size

    def preprocess(self, image: Any) -> np.ndarray:
        """One image (a path, a PIL image, or an ``(H, W)`` / ``(H, W, 3)`` uint8 array) as a ``(3, h, w)`` float32 array."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            from ..data.images import open_image  # PIL and numpy only

            img = open_image(image)
        elif isinstance(image, np.ndarray):
            img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
        elif isinstance(image, Image.Image):
            img = image.convert("RGB")
        else:
            raise HeadstartError(f"Cannot classify a {type(image).__name__}: give image paths, PIL images or uint8 arrays.")
        inp = self.meta["input"]
        h, w = int(inp["height"]), int(inp["width"])
        resample = getattr(Image.Resampling, self.meta["resize"]["interpolation"].upper())
        crop_pct = float(self.meta["resize"]["crop_pct"])
        if crop_pct >= 1.0:
            img = img.resize((w, h), resample)
        else:  # torchvision Resize(int): the short side to `short`, the long side int(short * long / short_side)
            short = int(round(min(h, w) / crop_pct))
            iw, ih = img.size
            size = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
            img = img.resize(size, resample)
            left, top = int(round((img.width - w) / 2.0)), int(round((img.height - h) / 2.0))
            img = img.crop((left, top, left + w, top + h))
        x = np.asarray(img, dtype=np.float32) * np.float32(self.meta["scale"])
        x = (x - np.asarray(self.meta["mean"], np.float32)) / np.asarray(self.meta["std"], np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def logits(self, images: Sequence[Any]) -> np.ndarray:
        """``(n, num_classes)`` logits of ``images`` (see :meth:`preprocess` for what an image may be)."""
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 2):
            images = [images]
        out = []
        for i in range(0, len(images), self.batch_size):
            x = np.stack([self.preprocess(im) for im in images[i : i + self.batch_size]])
            out.append(self.session.run(None, {self.input_name: x})[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:
        z = self.logits(images).astype(np.float64)
        z = np.exp(z - z.max(1, keepdims=True))
        return (z / z.sum(1, keepdims=True)).astype(np.float32)

    def predict(self, images: Sequence[Any]) -> list[str]:
        return [self.classes[i] for i in self.logits(images).argmax(1)]
