"""``headstart demo``: the seed example of transfer learning, made real and measured.

1. Train the small CNN from scratch on circles / squares / triangles (the source task).
2. Transfer: freeze it and train a new head on stars / pentagons / hexagons (the target task).
3. Baselines on the same target data: the same CNN trained from scratch, and a linear probe on
   ImageNet EfficientNet-Lite0 features.
4. Print test accuracy, test loss and wall time for each; then predict new images, including a
   shape no model has seen (a cross), and show the models' confidence on it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("headstart.demo")

SOURCE = ("circle", "square", "triangle")
TARGET = ("star", "pentagon", "hexagon")


def draw_cross(size: int = 64, seed: int = 0) -> np.ndarray:
    """An image of a shape that none of the demo's models was trained on: a plus-shaped cross."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, 3)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    c, arm, w = size / 2, size * 0.35, size * 0.1
    colour = tuple(int(v) for v in (255 - bg))
    d.rectangle([c - arm, c - w, c + arm, c + w], fill=colour)
    d.rectangle([c - w, c - arm, c + w, c + arm], fill=colour)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def run_demo(*, out: str | Path = "runs/demo", n_source: int = 500, n_target: int = 150, seed: int = 0, epochs: int = 20, lr: float = 3e-3, console=None) -> dict:
    """Run the demo; return the result rows (also printed as a table)."""
    from rich.console import Console
    from rich.table import Table

    from .fitting import fit
    from .data import from_arrays, make_shapes, stratified_split

    console = console or Console()
    out = Path(out)
    t_all = time.perf_counter()
    src = stratified_split(make_shapes(SOURCE, n_per_class=n_source, size=64, seed=seed), val=0.15, test=0.15, seed=seed)
    tgt = stratified_split(make_shapes(TARGET, n_per_class=n_target, size=64, seed=seed + 1), val=0.15, test=0.15, seed=seed)
    console.print(
        f"[bold]headstart demo[/bold]: source {', '.join(SOURCE)} ({n_source} images per class) -> "
        f"target {', '.join(TARGET)} ({n_target} per class, 70/15/15 split); 64x64 images"
    )

    common = dict(seed=seed, overwrite=True, progress=False)
    steps = [
        ("source: scratch CNN on circles/squares/triangles", "source", dict(data=src, backbone="scratch_cnn", strategy="finetune", head="mlp", epochs=epochs, lr=lr)),
        ("transfer: frozen source CNN + new head", "transfer", dict(data=tgt, backbone=f"run:{out / 'source'}", strategy="linear", head="mlp")),
        ("scratch: same CNN trained on the new shapes", "scratch", dict(data=tgt, backbone="scratch_cnn", strategy="finetune", head="mlp", epochs=epochs, lr=lr)),
        ("ImageNet EfficientNet-Lite0 features + logistic regression", "imagenet", dict(data=tgt, backbone="efficientnet_lite0", strategy="linear", head="logreg")),
    ]
    rows, models = [], {}
    for title, key, kw in steps:
        console.print(f"  training {title} ...")
        t = time.perf_counter()
        data = kw.pop("data")
        model = fit(data, out=out / key, **kw, **common)
        seconds = time.perf_counter() - t
        m = model.metrics["test"]
        rows.append({"model": key, "what": title, "test_accuracy": m["accuracy"], "test_loss": m["log_loss"], "seconds": seconds, "n_train": sum(model.metrics["counts"]["train"].values())})
        models[key] = model

    table = Table("model", "what", "train images", "test accuracy", "test loss", "wall time (s)", title="test accuracy (source row: on circles/squares/triangles; others: on stars/pentagons/hexagons)")
    for r in rows:
        table.add_row(r["model"], r["what"], str(r["n_train"]), f"{r['test_accuracy']:.3f}", f"{r['test_loss']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)

    new = make_shapes(TARGET, n_per_class=1, size=64, seed=seed + 1000)
    images = np.concatenate([new.items, draw_cross(64, seed)[None]])
    names = [f"new {TARGET[i]}" for i in new.labels] + ["a cross (never seen)"]
    pred_table = Table("image", *[f"{k}: prediction (confidence)" for k in ("transfer", "scratch", "imagenet")], title="predictions on new images")
    probas = {k: models[k].predict_proba(from_arrays(images, np.zeros(len(images), dtype=np.int64), classes=["?"]), runtime="torch") for k in ("transfer", "scratch", "imagenet")}
    for i, name in enumerate(names):
        cells = []
        for k in ("transfer", "scratch", "imagenet"):
            p = probas[k][i]
            cells.append(f"{models[k].classes[int(p.argmax())]} ({p.max():.2f})")
        pred_table.add_row(name, *cells)
    console.print(pred_table)
    cross_conf = {k: float(probas[k][-1].max()) for k in probas}
    known_conf = {k: float(probas[k][:-1].max(1).mean()) for k in probas}
    console.print(
        "confidence on the unseen cross vs. mean on the new known shapes: "
        + ", ".join(f"{k} {cross_conf[k]:.2f} vs {known_conf[k]:.2f}" for k in probas)
    )
    total = time.perf_counter() - t_all
    console.print(f"demo finished in {total:.1f} s; runs in {out}/ (try: headstart predict {out / 'transfer'} IMAGE)")
    return {"rows": rows, "cross_confidence": cross_conf, "known_confidence": known_conf, "seconds": total}
