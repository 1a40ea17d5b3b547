"""Scoring speed of the transferability scores on n x d features (run by hand).

    python benchmarks/select_speed.py [--n 10000] [--d 1280] [--classes 10] [--repeats 3]

Random Gaussian features with the class added on 10 dimensions (float32, as ``extract_features``
returns them), labels balanced; a linear "source head" of 1000 classes for LEEP/NCE. Prints the
best-of-``repeats`` and median seconds per score, plus the share of LogME spent on the shared
eigendecomposition. Other processes on the machine skew timings: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from headstart.select import hscore, hscore_shrinkage, leep, logme, nce
    from headstart.select._spectral import check_inputs, spectrum

    rng = np.random.default_rng(0)
    y = np.arange(args.n) % args.classes
    f = rng.normal(size=(args.n, args.d)).astype(np.float32)
    f[:, : min(args.classes, args.d)] += 2.0 * np.eye(args.classes)[y][:, : args.d]
    logits = f @ (rng.normal(size=(args.d, 1000)).astype(np.float32) * 0.05)
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)

    def decomposition() -> object:
        return spectrum(*check_inputs(f, y, "bench"))

    cases = {
        "LogME": lambda: logme(f, y),
        "  of which: eigendecomposition": decomposition,
        "H-score": lambda: hscore(f, y),
        "H-score (shrinkage)": lambda: hscore_shrinkage(f, y),
        "LEEP (1000 source classes)": lambda: leep(proba, y),
        "NCE (1000 source classes)": lambda: nce(proba.argmax(1), y),
    }
    print(f"{args.n} x {args.d} float32 features, {args.classes} classes, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'score':32s} {'best s':>8s} {'median s':>9s}")
    for name, fn in cases.items():
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(f"{name:32s} {min(times):8.3f} {statistics.median(times):9.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
