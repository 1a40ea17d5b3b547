"""Temperature scaling, measured: ECE and NLL on the test split before and after a temperature fit on validation.

    python benchmarks/calibration.py --json benchmarks/results/calibration.json

What chose ``fit --calibrate``'s default (``headstart.settings.HeadSettings.calibrate``). Data:
scikit-learn digits (70/15/15 seeded), MNIST 5k (1,000 / 500 / 3,500) and BreastMNIST (official
546 / 78 / 156); EfficientNet-Lite0, the linear probe (features at the auto size) and fine-tuning
(default recipe from the probe, 64 px, light augmentation, 4 epochs). ``--calibrate temperature``
on every run; the figures before are the same model's at ``T = 1``. Seed 0.
The fine-tuned BreastMNIST rows come from ``benchmarks/medical.py`` (112 px, 3 seeds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import Rows, add_arguments, merged  # noqa: E402
from strategies import breastmnist, mnist5k  # noqa: E402


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    from headstart.data import from_arrays, load_splits

    d = load_digits()
    return load_splits(from_arrays(d.images, d.target, [str(i) for i in range(10)], value_range=(0, 16), source="sklearn-digits"), seed=seed)


DATASETS = {"digits": digits, "mnist5k": mnist5k, "breastmnist": lambda seed=0: breastmnist()}
STRATEGIES = {"probe": dict(strategy="linear"), "finetune": dict(strategy="finetune", image_size=64, augment="light", epochs=4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    add_arguments(ap)
    args = ap.parse_args()
    rows = merged(args)
    if rows is None:
        import headstart

        rows = Rows(args.json)
        for strategy in args.strategies.split(","):
            for name in args.datasets.split(","):
                t0 = time.perf_counter()
                m = headstart.fit(DATASETS[name](0), backbone="efficientnet_lite0", calibrate="temperature", seed=0, save=False, **STRATEGIES[strategy])
                cal, val = m.metrics["test"]["calibration"], m.info["calibration"]["val"]
                rows.add({"dataset": name, "model": strategy, "temperature": cal["temperature"], "n_val": m.info["calibration"]["n"],
                          **{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": cal[k] for k in ("ece_before", "ece_after", "nll_before", "nll_after")},
                          "test_accuracy": m.metrics["test"]["accuracy"], "seconds": round(time.perf_counter() - t0, 1)})
    print(f"\n{'dataset':<12} {'model':<9} {'T':>6} {'n val':>6} {'test ECE before->after':>23} {'test NLL before->after':>23}")
    for r in rows:
        print(f"{r['dataset']:<12} {r['model']:<9} {r['temperature']:>6.3f} {r['n_val']:>6} {r['test_ece_before']:>10.4f} -> {r['test_ece_after']:<10.4f}"
              f" {r['test_nll_before']:>10.4f} -> {r['test_nll_after']:<10.4f}")


if __name__ == "__main__":
    main()
