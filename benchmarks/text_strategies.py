"""Text classifiers against the bag-of-words baseline, on Rotten Tomatoes (issue 17).

    python benchmarks/text_strategies.py --json benchmarks/results/text_rotten_tomatoes.json

Data: ``../shared/data/rotten_tomatoes.csv`` (12,808 fresh/rotten review snippets), headstart's
default seeded 70/15/15 split (8,966 train / 1,921 val / 1,921 test). Regimes:

- ``full``: the whole training split, the validation split for choosing ``C``, the test split;
- ``k`` = 8, 16, 64 labeled texts per class drawn (seeds 0, 1, 2) from the training split, no
  validation split (the probe cross-validates ``C``), the same 1,921 test texts.

Methods, each trained on the same texts and tested on the same test texts:

- ``sklearn tfidf+svm``: ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)`` +
  ``LinearSVC(C=0.5)`` (the issue's baseline; :func:`headstart.backbones.tfidf.sparse_baseline`);
- ``tfidf``: ``headstart.fit(backbone="tfidf")`` (linear probe);
- ``minilm_l6``: ``headstart.fit(backbone="minilm_l6")`` (linear probe; features cached);
- ``minilm_l6+tfidf``: the hybrid (each block at unit total variance on train);
- ``setfit``: ``headstart.fit(backbone="minilm_l6", strategy="setfit")`` (SetFit-style: the encoder
  fine-tuned on ``--pairs`` same-class / cross-class pairs of the training texts, then the probe).

``--pair-sweep 320,640,1280,2560``: ``setfit`` at each pair count (``setfit@N`` rows) in the few-shot
regimes, to choose :data:`headstart.train.setfit.DEFAULT_PAIRS`.

Full data also measures the hybrid's block scaling on the validation split: unscaled blocks (both
are L2-normalised rows), unit total variance (the default), and unit variance with TF-IDF weighted
2x and 0.5x. Wall time per fit (seconds; on a shared 2-core CPU: compare within one run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rows import Rows, add_arguments, merged  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rotten_tomatoes.csv"
METHODS = ("sklearn tfidf+svm", "tfidf", "minilm_l6", "minilm_l6+tfidf", "setfit")


def _subset(ds, k: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(ds.labels == c), k, replace=False) for c in range(len(ds.classes))])
    return ds.subset(np.sort(idx))


def _run(method: str, splits, pairs: int | None = None, seed: int = 0) -> tuple[float, float, dict]:
    import headstart
    from headstart.backbones.tfidf import sparse_baseline

    t = time.perf_counter()
    if method == "sklearn tfidf+svm":
        acc = sparse_baseline(splits.train.items, splits.train.labels, splits.test.items, splits.test.labels)["accuracy"]
        return acc, time.perf_counter() - t, {}
    if method.startswith("setfit"):
        pairs = int(method.partition("@")[2] or 0) or pairs
        model = headstart.fit(splits, backbone="minilm_l6", strategy="setfit", pairs=pairs, seed=seed, save=False)
    else:
        model = headstart.fit(splits, backbone=method, seed=seed, save=False)
    m = model.metrics
    extra = {"dim": int(model.backbone.num_features), "auc": m["test"].get("roc_auc")}
    if method.startswith("setfit"):
        extra.update(setfit={k: v for k, v in m["timings_s"].items() if k in ("setfit", "features", "predict", "total")})
    return m["test"]["accuracy"], time.perf_counter() - t, extra


def _scaling(splits) -> list[dict]:
    """The hybrid's block scaling, chosen on validation: probes on the (cached) parts' features, scaled four ways."""
    from headstart.backbones import create_backbone
    from headstart.features import extract_features
    from headstart.features.fitted import fit_on_train
    from headstart.heads import fit_head

    enc, tf = create_backbone("minilm_l6"), create_backbone("tfidf")
    fit_on_train(tf, splits.train)
    feats = {n: [extract_features(bb, ds) for bb in (enc, tf)] for n, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    sig = [float(np.sqrt(x.astype(np.float64).var(0).sum())) for x in feats["train"]]
    out = []
    for name, scales in (("unscaled", (1.0, 1.0)), ("unit variance", (1 / sig[0], 1 / sig[1])),
                         ("unit, tfidf x2", (1 / sig[0], 2 / sig[1])), ("unit, tfidf x0.5", (1 / sig[0], 0.5 / sig[1]))):
        x = {n: np.concatenate([f[0] * np.float32(scales[0]), f[1] * np.float32(scales[1])], 1) for n, f in feats.items()}
        t = time.perf_counter()
        head, hist = fit_head("linear", x["train"], splits.train.labels, x["val"], splits.val.labels, num_classes=2)
        sel = next(r for r in hist if r["selected"])
        import torch

        with torch.no_grad():
            test_acc = float((head.eval()(torch.as_tensor(x["test"])).argmax(1).numpy() == splits.test.labels).mean())
        out.append({"regime": "full", "method": f"hybrid scaling: {name}", "sigmas": [round(s, 4) for s in sig], "val_loss": round(sel["val_loss"], 4),
                    "val_acc": round(sel["val_acc"], 4), "test_acc": round(test_acc, 4), "C": sel["C"], "seconds": round(time.perf_counter() - t, 1)})
    return out


def _table(rows: list[dict]) -> str:
    methods = [m for m in dict.fromkeys([*METHODS, *(r["method"] for r in rows)]) if any(r["method"] == m and "accuracy" in r for r in rows)]
    lines = ["| regime | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for regime in dict.fromkeys(r["regime"] for r in rows if r["method"] in methods):
        cells = []
        for m in methods:
            rs = [r for r in rows if r["regime"] == regime and r["method"] == m]
            if not rs:
                cells.append("-")
                continue
            a, s = np.array([r["accuracy"] for r in rs]), np.mean([r["seconds"] for r in rs])
            cells.append(f"{a.mean():.3f}" + (f" ± {a.std():.3f}" if len(a) > 1 else "") + f" ({s:.0f} s)")
        lines.append(f"| {regime} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shots", default="8,16,64", help="labeled texts per class (comma-separated); 0: skip")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (seeds seed-start .. seed-start + seeds - 1)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-full", action="store_true", help="skip the full-data regime")
    ap.add_argument("--no-scaling", action="store_true", help="skip the hybrid-scaling comparison")
    ap.add_argument("--pairs", type=int, default=None, help="setfit: pairs (default: headstart's DEFAULT_PAIRS)")
    ap.add_argument("--pair-sweep", default="", help="comma-separated pair counts: adds setfit@N methods")
    add_arguments(ap)
    args = ap.parse_args()
    done = merged(args)
    if done is not None:
        print(_table(done))
        return
    from headstart.data import Splits, load_splits

    rows = Rows(args.json)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] + [f"setfit@{int(n)}" for n in args.pair_sweep.split(",") if n.strip()]
    sp = load_splits(str(DATA), seed=0)
    if not args.no_full:
        for m in methods:
            acc, sec, extra = _run(m, sp, args.pairs)
            rows.add({"regime": "full", "method": m, "seed": 0, "n_train": len(sp.train), "accuracy": round(acc, 4), "seconds": round(sec, 1), **extra})
    for k in [int(s) for s in args.shots.split(",") if s.strip() and int(s) > 0]:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            few = Splits(_subset(sp.train, k, seed), None, sp.test)
            for m in methods:
                acc, sec, extra = _run(m, few, args.pairs, seed)
                rows.add({"regime": f"{k}/class", "method": m, "seed": seed, "n_train": len(few.train), "accuracy": round(acc, 4), "seconds": round(sec, 1), **extra})
    if not args.no_full and not args.no_scaling:  # last: four probes on 25,000-d features
        for r in _scaling(sp):
            rows.add(r)
    print(_table(list(rows)))


if __name__ == "__main__":
    main()
