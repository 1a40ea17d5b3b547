"""``headstart explain RUN IMAGE... --out DIR``: Grad-CAM heat maps of a run over its input images.

:func:`explain` loads the run (or takes a loaded :class:`~headstart.model.Model`), computes the map of
one class per image at the backbone's last convolution (:mod:`headstart.evaluate.gradcam`: Grad-CAM,
or Grad-CAM++), and with ``out`` writes per image ``<stem>.<class>.<method>.png``, the image (enlarged
to at least 224 px when small) with the map blended over it, and ``explain.json`` (image, class
explained, its probability, the file written). Works for linear-probe and fine-tuned runs alike: the
probe's head sits on the same backbone, whose last convolution the gradient reaches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError, HeadstartError

log = logging.getLogger("headstart")


def explain(run: Any, images: Sequence[str | Path], *, class_name: str | None = None, out: str | Path | None = None,
            method: str = "gradcam") -> list[dict[str, Any]]:
    """Heat maps of ``run`` (a run folder or a Model) over ``images`` (paths); returns per image
    ``{"image", "class", "probability", "map" (H, W) in [0, 1] at the image's size, "file" (with out)}``.
    ``class_name``: the class explained for every image (default: each image's predicted class)."""
    from .data.images import open_image
    from .evaluate.gradcam import check_explainable, explain_images, overlay
    from .model import Model, load

    model = run if isinstance(run, Model) else load(run)
    check_explainable(model)
    paths = [str(p) for p in images]
    if not paths:
        raise DataError("Nothing to explain: give one or more image files.")
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"Cannot read {p!r}: no such file. Check the path.")
    target = None
    if class_name is not None:
        if class_name not in model.classes:
            raise HeadstartError(f"Unknown class {class_name!r}; this run's classes are {', '.join(map(repr, model.classes))}. "
                                 "Fix: --class with one of them (or drop it to explain each image's predicted class).")
        target = model.classes.index(class_name)
    # every image is decoded (and checked: size, truncation; a DataError naming it) before any map is computed
    results = explain_images(model, [open_image(p) for p in paths], target=target, method=method)
    rows = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    for p, r in zip(paths, results):
        row = {"image": p, "class": model.classes[r["class"]], "probability": float(r["proba"][r["class"]]), "map": r["map"]}
        if out is not None:
            from PIL import Image

            from ._io import atomic_path

            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in row["class"])
            dest = out / f"{Path(p).stem}.{safe}.{method.replace('+', 'pp')}.png"
            with atomic_path(dest) as tmp:
                Image.fromarray(overlay(r["image"], r["map"])).save(tmp, format="PNG")
            row["file"] = str(dest)
        rows.append(row)
    if out is not None:
        from ._io import write_json

        write_json(out / "explain.json", {"run": str(getattr(model, "run_dir", None) or run), "method": method,
                                          "layer": "the backbone's last convolution", "images": [{k: v for k, v in r.items() if k != "map"} for r in rows]})
        log.info("%d heat map(s) written to %s", len(rows), out)
    return rows

