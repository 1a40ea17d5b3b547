"""``headstart demo``: the seed example of transfer learning, made real and measured.

1. Train the small CNN from scratch on circles / squares / triangles (the source task).
2. Transfer: freeze it and train a new head on stars / pentagons / hexagons (the target task).
3. Baselines on the same target data: the same CNN trained from scratch, and a linear probe on
   ImageNet EfficientNet-Lite0 features.
4. Print test accuracy, test loss and wall time for each; then predict new images, including a
   shape no model has seen (a cross), with each model's softmax confidence and a feature-space
   novelty score: the Mahalanobis distance to the nearest class (Lee et al., 2018, "A Simple Unified
   Framework for Detecting Out-of-Distribution Samples"), divided by the 95th percentile of the
   validation images' distances, so a score above 1 means "unlike anything it was trained on".
   Softmax confidence alone is known to stay high on unseen inputs; the table shows both.
5. One model for all six shapes: the source CNN goes on to learn the new shapes (``fit --from``),
   by plain fine-tuning (which forgets the old shapes) and with rehearsal; old and new accuracy.
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


def novelty_scores(model, train, val, new) -> np.ndarray:
    """Mahalanobis distance of each ``new`` item to its nearest class mean (shared, shrunk covariance
    fit on ``train`` features), relative to the 95th percentile of the ``val`` items' distances.

    d(x) = min_c (f(x) - mu_c)^T S^-1 (f(x) - mu_c); score = d(x) / q95(d(val)); > 1: unfamiliar.
    """
    from sklearn.covariance import LedoitWolf

    f_tr, f_val, f_new = (model.features(ds, runtime="torch") for ds in (train, val, new))
    means = np.stack([f_tr[train.labels == c].mean(0) for c in range(len(train.classes))])
    precision = LedoitWolf().fit(f_tr - means[train.labels]).precision_

    def dist(f: np.ndarray) -> np.ndarray:
        diff = f[:, None, :] - means[None]
        return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(1)

    return dist(f_new) / np.quantile(dist(f_val), 0.95)


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
        ("scratch CNN trained on circles/squares/triangles (source task)", "source", dict(data=src, backbone="scratch_cnn", strategy="finetune", head="mlp", epochs=epochs, lr=lr)),
        ("source CNN frozen, new Dense-ReLU-Dropout head on the new shapes", "transfer", dict(data=tgt, backbone=f"run:{out / 'source'}", strategy="linear", head="mlp")),
        ("the same CNN trained from scratch on the new shapes", "scratch", dict(data=tgt, backbone="scratch_cnn", strategy="finetune", head="mlp", epochs=epochs, lr=lr)),
        ("ImageNet EfficientNet-Lite0 features + logistic regression", "imagenet", dict(data=tgt, backbone="efficientnet_lite0", strategy="linear", head="logreg")),
    ]
    rows, models = [], {}
    for title, key, kw in steps:
        console.print(f"  {key:9s} {title} ...")
        t = time.perf_counter()
        data = kw.pop("data")
        model = fit(data, out=out / key, **kw, **common)
        seconds = time.perf_counter() - t
        m = model.metrics["test"]
        rows.append({"model": key, "what": title, "test_accuracy": m["accuracy"], "test_loss": m["log_loss"], "seconds": seconds, "n_train": sum(model.metrics["counts"]["train"].values())})
        models[key] = model

    table = Table("model", "train images", "test accuracy", "test loss", "wall time (s)", title="source row: circles/squares/triangles; the others: stars/pentagons/hexagons")
    for r in rows:
        table.add_row(r["model"], str(r["n_train"]), f"{r['test_accuracy']:.3f}", f"{r['test_loss']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)

    new = make_shapes(TARGET, n_per_class=1, size=64, seed=seed + 1000)
    images = np.concatenate([new.items, draw_cross(64, seed)[None]])
    names = [f"new {TARGET[i]}" for i in new.labels] + ["a cross (never seen)"]
    new_ds = from_arrays(images, np.zeros(len(images), dtype=np.int64), classes=["?"])
    keys = ("transfer", "scratch", "imagenet")
    probas = {k: models[k].predict_proba(new_ds, runtime="torch") for k in keys}
    novelty = {k: novelty_scores(models[k], tgt.train, tgt.val, new_ds) for k in keys}
    pred_table = Table("image", *keys, title="new images: prediction, softmax confidence, novelty (>1: unlike the training data)")
    for i, name in enumerate(names):
        cells = []
        for k in keys:
            p = probas[k][i]
            cells.append(f"{models[k].classes[int(p.argmax())]} {p.max():.2f}, nov {novelty[k][i]:.1f}")
        pred_table.add_row(name, *cells)
    console.print(pred_table)
    cross_conf = {k: float(probas[k][-1].max()) for k in keys}
    known_conf = {k: float(probas[k][:-1].max(1).mean()) for k in keys}
    cross_nov = {k: float(novelty[k][-1]) for k in keys}
    flagged = [k for k in keys if cross_nov[k] > 1.0]
    console.print(
        "On the unseen cross, softmax confidence is not a novelty detector (it can stay high). The novelty score "
        + (f"flags it for {', '.join(flagged)}" if flagged else "flags it for no model")
        + ": "
        + ", ".join(f"{k} {cross_nov[k]:.1f} (known shapes {novelty[k][:-1].mean():.1f})" for k in keys)
        + ". Features that were never trained to tell many shapes apart cannot see that a shape is new."
    )
    continual = keep_old_shapes(out, src, tgt, seed=seed, epochs=min(epochs, 10), lr=lr, console=console)
    total = time.perf_counter() - t_all
    console.print(f"demo finished in {total:.1f} s; runs in {out}/ (try: headstart predict {out / 'transfer'} IMAGE)")
    return {"rows": rows, "cross_confidence": cross_conf, "known_confidence": known_conf, "cross_novelty": cross_nov, "continual": continual,
            "seconds": total}


def keep_old_shapes(out: Path, src, tgt, *, seed: int, epochs: int, lr: float, console) -> dict:
    """The source CNN goes on to learn the new shapes, one model for all six (``fit --from``): plain
    fine-tuning forgets the old shapes; rehearsal (a memory of old shapes replayed each step) keeps more.
    Returns ``{method: metrics["continual"]}``."""
    from .fitting import fit

    results = {}
    for method in ("naive", "rehearsal"):
        t = time.perf_counter()
        model = fit(tgt, from_run=out / "source", old_data=src, method=method, strategy="finetune", epochs=epochs, lr=lr, seed=seed,
                    out=out / f"six-{method}", overwrite=True, progress=False)
        results[method] = {**model.metrics["continual"], "seconds": time.perf_counter() - t}
    naive, replay = results["naive"], results["rehearsal"]
    verdict = ("replaying a memory of old shapes (rehearsal) keeps more of them" if replay["old_after"] > naive["old_after"]
               else "on this run rehearsal kept no more of them")
    console.print(
        f"One CNN for all six shapes (headstart fit NEW --from {out / 'source'} --keep-old rehearsal --old-data OLD -s finetune): "
        f"old shapes {naive['old_before']:.2f} before; "
        + "; ".join(f"{m}: old {r['old_after']:.2f}, new {r['new_after']:.2f} ({r['seconds']:.0f} s)" for m, r in results.items())
        + f". Fine-tuned on the new shapes alone, the network forgets the old ones (forgetting {naive['forgetting']:.2f}); {verdict}.")
    return results
