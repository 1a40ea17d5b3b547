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
  fine-tuned on ``--pairs`` same-class / cross-class pairs of the training texts, then the probe);
- ``finetune``: ``headstart.fit(backbone="minilm_l6", strategy="finetune")`` (the text recipe: the head
  on frozen features, then the encoder unfrozen from the top; bucketed batches; ``--epochs``,
  ``--backbone-lr``, ``--time-limit`` passed on); per-epoch validation accuracy recorded;
- ``finetune+tfidf``: the same recipe on ``minilm_l6+tfidf`` (the encoder fine-tuned beside the fixed
  TF-IDF block, one head on both);
- ``auto``: ``headstart.fit(backbone="minilm_l6", strategy="auto")`` with ``--time-limit`` (what it
  picks, and its accuracy).

``--bucketing``: padding tokens of an epoch of training batches in a shuffled order and in
sequence-length groups (exact counts), and the time of a fine-tuning step of each kind, the two
kinds interleaved over ``--bucket-steps`` steps so both see the same machine load.

``--pair-sweep 320,640,1280,2560``: ``setfit`` at each pair count (``setfit@N`` rows) in the few-shot
regimes, to choose :data:`headstart.train.setfit.DEFAULT_PAIRS`.

Full data also measures the hybrid's block scaling on the validation split: unscaled blocks (both
are L2-normalised rows), unit total variance (the default), and unit variance with TF-IDF weighted
2x and 0.5x. Wall time per fit (seconds; on a shared 2-core CPU: compare within one run) and the process's CPU
seconds (``cpu_s``, user + system, all threads: less sensitive to other jobs on the machine).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rows import Rows, add_arguments, merged  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rotten_tomatoes.csv"
METHODS = ("sklearn tfidf+svm", "tfidf", "minilm_l6", "minilm_l6+tfidf", "setfit", "finetune", "finetune+tfidf", "auto")
FINETUNE = {"finetune": "minilm_l6", "finetune+tfidf": "minilm_l6+tfidf"}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Epochs(logging.Handler):
    """Collects the training loop's per-epoch log lines (validation accuracy by epoch)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("epoch ") or "stage" in msg or "auto chose" in msg or "time limit" in msg:
            self.lines.append(msg)


def _subset(ds, k: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(ds.labels == c), k, replace=False) for c in range(len(ds.classes))])
    return ds.subset(np.sort(idx))


def _run(method: str, splits, pairs: int | None = None, seed: int = 0, tune: dict | None = None) -> tuple[float, float, dict]:
    import headstart
    from headstart.backbones.tfidf import sparse_baseline

    tune = {k: v for k, v in (tune or {}).items() if v is not None}
    t, cpu = time.perf_counter(), _cpu()
    lines = _Epochs()
    for name in ("headstart",):  # the loop's loggers propagate to it
        logging.getLogger(name).addHandler(lines)
        logging.getLogger(name).setLevel(logging.INFO)
    if method == "sklearn tfidf+svm":
        acc = sparse_baseline(splits.train.items, splits.train.labels, splits.test.items, splits.test.labels)["accuracy"]
        return acc, time.perf_counter() - t, {}
    try:
        if method.startswith("setfit"):
            pairs = int(method.partition("@")[2] or 0) or pairs
            model = headstart.fit(splits, backbone="minilm_l6", strategy="setfit", pairs=pairs, seed=seed, save=False)
        elif method in FINETUNE:
            model = headstart.fit(splits, backbone=FINETUNE[method], strategy="finetune", seed=seed, save=False, **tune)
        elif method == "auto":
            model = headstart.fit(splits, backbone="minilm_l6", strategy="auto", seed=seed, save=False, pairs=pairs,
                                  **{k: v for k, v in tune.items() if k == "time_limit"})
        else:
            model = headstart.fit(splits, backbone=method, seed=seed, save=False)
    finally:
        for name in ("headstart",):  # the loop's loggers propagate to it
            logging.getLogger(name).removeHandler(lines)
    m = model.metrics
    extra = {"dim": int(model.backbone.num_features), "auc": m["test"].get("roc_auc"), "cpu_s": round(_cpu() - cpu, 1)}
    if method in FINETUNE or method == "auto":
        extra.update(settings=tune, strategy=m["strategy"], timings={k: round(v, 1) for k, v in m["timings_s"].items()}, log=lines.lines,
                     **({"auto": {k: v for k, v in m["auto"].items() if isinstance(v, (str, int, float))}} if "auto" in m else {}))
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


def _bucketing(splits, batch_size: int, steps: int) -> list[dict]:
    """Padding of one epoch of training batches, shuffled vs length-grouped (exact), and the time of a
    MiniLM-L6 training step (forward, backward, AdamW) of each, interleaved, scaled to an epoch."""
    import torch

    from headstart.backbones import create_backbone
    from headstart.train.text_recipe import length_grouped_indices, padded_tokens, token_lengths

    bb = create_backbone("minilm_l6")
    texts = [str(t) for t in splits.train.items]
    lengths = token_lengths(bb, texts)
    g = torch.Generator().manual_seed(0)
    orders = {"shuffled": torch.randperm(len(texts), generator=g).numpy(), "bucketed": np.array(length_grouped_indices(lengths, batch_size, g))}
    pad = {k: padded_tokens(lengths, o, batch_size) for k, o in orders.items()}
    bb.train()
    opt = torch.optim.AdamW(bb.parameters(), lr=0.0)  # lr 0: the weights stay pretrained; the cost is the same
    n_batches = -(-len(texts) // batch_size)
    secs = {k: [] for k in orders}
    for i in range(steps + 1):  # step 0 of each kind: warm-up, not counted
        b = int(np.random.default_rng(i).integers(n_batches))
        for k, o in orders.items():
            x = bb.tokenize([texts[j] for j in o[b * batch_size : (b + 1) * batch_size]], warn=False)
            t = time.perf_counter()
            bb(x).sum().backward()
            opt.step()
            opt.zero_grad()
            if i:
                secs[k].append(time.perf_counter() - t)
    out = []
    for k in orders:
        out.append({"regime": "full", "method": f"bucketing: {k}", "batch_size": batch_size, "real_tokens": int(lengths.sum()),
                    "padded_tokens": pad[k], "pad_fraction": round(1 - lengths.sum() / pad[k], 3), "steps_timed": steps,
                    "step_s_mean": round(float(np.mean(secs[k])), 3), "epoch_s_estimate": round(float(np.mean(secs[k])) * n_batches, 1)})
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
    ap.add_argument("--epochs", type=int, default=None, help="finetune: stage-2 epochs (default: headstart's text default)")
    ap.add_argument("--backbone-lr", type=float, default=None, help="finetune: encoder learning rate (default: headstart's)")
    ap.add_argument("--time-limit", type=float, default=None, help="finetune and auto: fit's --time-limit, seconds")
    ap.add_argument("--bucketing", action="store_true", help="add the bucketing rows (padding and step time, full data)")
    ap.add_argument("--bucket-steps", type=int, default=10, help="--bucketing: timed steps of each kind")
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
    tune = {"epochs": args.epochs, "backbone_lr": args.backbone_lr, "time_limit": args.time_limit}
    if args.bucketing:
        for r in _bucketing(sp, 64, args.bucket_steps):
            rows.add(r)
    if not args.no_full:
        for m in methods:
            acc, sec, extra = _run(m, sp, args.pairs, tune=tune)
            rows.add({"regime": "full", "method": m, "seed": 0, "n_train": len(sp.train), "accuracy": round(acc, 4), "seconds": round(sec, 1), **extra})
    for k in [int(s) for s in args.shots.split(",") if s.strip() and int(s) > 0]:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            few = Splits(_subset(sp.train, k, seed), None, sp.test)
            for m in methods:
                acc, sec, extra = _run(m, few, args.pairs, seed, tune=tune)
                rows.add({"regime": f"{k}/class", "method": m, "seed": seed, "n_train": len(few.train), "accuracy": round(acc, 4), "seconds": round(sec, 1), **extra})
    if not args.no_full and not args.no_scaling:  # last: four probes on 25,000-d features
        for r in _scaling(sp):
            rows.add(r)
    print(_table(list(rows)))


if __name__ == "__main__":
    main()
