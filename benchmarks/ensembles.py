"""Ensembles vs their best member: runs combined (average, vote, stack) and ensemble heads on cached features.

    python benchmarks/ensembles.py                       # digits and breastmnist, seeds 0,1,2
    python benchmarks/ensembles.py --datasets digits --seeds 0

For each dataset and seed, the members are linear-strategy runs on one split (the same seed):
EfficientNet-Lite0, -Lite1 and -Lite2 with the logistic-regression probe, and Lite0 with the MLP
head. ``headstart ensemble`` combines them by averaging, voting and stacking (its combiner fit on
the validation split); ``--head bagging|boosting|stacking`` are the scikit-learn ensembles on
Lite0's cached features. Everything is scored on the same test split; printed (mean ± std over
seeds): test accuracy and log loss of each, and each ensemble's difference from the best member of
that seed (by test accuracy, ties by log loss: the most favourable single model to compare with).

Datasets: ``digits`` (scikit-learn's 1,797 8-px digits, 70/15/15 seeded) and ``breastmnist``
(``../shared/data/breastmnist.npz``, its official 546 / 78 / 156 split).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import Rows, add_arguments, merged  # noqa: E402
from strategies import breastmnist  # noqa: E402


def digits(seed: int):
    from sklearn.datasets import load_digits

    from headstart.data import from_arrays, load_splits

    d = load_digits()
    return load_splits(from_arrays(d.images, d.target, [str(i) for i in range(10)], value_range=(0, 16), source="sklearn-digits"), seed=seed)


DATASETS = {"digits": digits, "breastmnist": lambda seed: breastmnist()}
MEMBERS = {"lite0": dict(backbone="efficientnet_lite0"), "lite1": dict(backbone="efficientnet_lite1"),
           "lite2": dict(backbone="efficientnet_lite2"), "lite0-mlp": dict(backbone="efficientnet_lite0", head="mlp")}
HEADS = ("bagging", "boosting", "stacking")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="0,1,2")
    add_arguments(ap)
    args = ap.parse_args()
    if merged(args) is not None:
        table(merged(args), f"merged from {args.merge}")
        return

    import headstart
    from headstart.ensemble import build_ensemble

    rows = Rows(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for seed in map(int, args.seeds.split(",")):
                splits = DATASETS[name](seed)
                runs = {}
                for member, kw in MEMBERS.items():
                    t0 = time.perf_counter()
                    m = headstart.fit(splits, strategy="linear", seed=seed, out=f"{tmp}/{name}-{seed}/{member}", **kw)
                    runs[member] = f"{tmp}/{name}-{seed}/{member}"
                    rows.add(_row(name, seed, member, "member", m.metrics["test"], time.perf_counter() - t0))
                for method in ("average", "vote", "stack"):
                    t0 = time.perf_counter()
                    ens = build_ensemble(list(runs.values()), method=method, data=splits, save=False)
                    rows.add(_row(name, seed, f"ensemble {method}", "ensemble", ens.metrics["test"], time.perf_counter() - t0))
                for head in HEADS:
                    t0 = time.perf_counter()
                    m = headstart.fit(splits, backbone="efficientnet_lite0", strategy="linear", head=head, seed=seed, save=False)
                    rows.add(_row(name, seed, f"lite0 head {head}", "ensemble", m.metrics["test"], time.perf_counter() - t0))
    table(rows, f"seeds {args.seeds}")


def _row(dataset: str, seed: int, model: str, kind: str, test: dict, seconds: float) -> dict:
    return {"dataset": dataset, "seed": seed, "model": model, "kind": kind, "accuracy": test["accuracy"], "log_loss": test["log_loss"],
            "seconds": seconds}


def table(rows: list[dict], title: str) -> None:
    import numpy as np

    print(f"\n{title}\n")
    print("| dataset | model | test accuracy | log loss | vs best member: accuracy (points) | vs best member: log loss | seconds |")
    print("|---|---|---|---|---|---|---|")
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        best = {}
        for seed in {r["seed"] for r in rows if r["dataset"] == ds}:
            members = [r for r in rows if r["dataset"] == ds and r["seed"] == seed and r["kind"] == "member"]
            best[seed] = max(members, key=lambda r: (r["accuracy"], -r["log_loss"]))
        for model in dict.fromkeys(r["model"] for r in rows if r["dataset"] == ds):
            rs = [r for r in rows if r["dataset"] == ds and r["model"] == model]
            acc, ll = np.array([r["accuracy"] for r in rs]), np.array([r["log_loss"] for r in rs])
            dacc = np.array([r["accuracy"] - best[r["seed"]]["accuracy"] for r in rs]) * 100
            dll = np.array([r["log_loss"] - best[r["seed"]]["log_loss"] for r in rs])
            print(f"| {ds} | {model} (n={len(rs)}) | {acc.mean():.4f} ± {acc.std():.4f} | {ll.mean():.4f} ± {ll.std():.4f} | "
                  f"{dacc.mean():+.2f} ± {dacc.std():.2f} | {dll.mean():+.4f} | {np.mean([r['seconds'] for r in rs]):.1f} |")


if __name__ == "__main__":
    main()
