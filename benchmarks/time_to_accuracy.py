"""Time to accuracy: the seed examples' recipe vs headstart, in one process, on the same data.

(a) seed-style baseline (the Keras examples, in eager PyTorch): a frozen pretrained base that is
    run again on every batch of every epoch, a Dense-ReLU-Dropout-Dense head trained with Adam for
    a fixed number of epochs; test accuracy after each epoch;
(b) headstart: ``headstart.fit`` with ``--strategy`` (default ``linear``: features extracted once
    through the fastest verified runtime, a logistic-regression head fit on them), the on-disk
    feature cache off so that nothing is reused from an earlier run.

Both read the same images from the same train/test split. The ratio is the baseline's wall time
until its test accuracy first reaches headstart's (equal or better), divided by headstart's wall
time; when the baseline never gets there, its full time gives a lower bound ("> x").

    python examples/make_digits_folder.py /tmp/digits
    python benchmarks/time_to_accuracy.py /tmp/digits --max-train 600 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def _subset(ds, n: int | None, seed: int):
    """A stratified random subset of about ``n`` items (all of ``ds`` when ``n`` is None)."""
    if n is None or n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(ds.labels == c) for c in range(len(ds.classes))]
    take = np.concatenate([rng.permutation(ix)[: max(1, round(n * len(ix) / len(ds)))] for ix in per_class])
    return ds.subset(np.sort(take))


def baseline(bb, train, test, *, epochs: int, batch_size: int, seed: int, hidden: int = 256, dropout: float = 0.5) -> list[tuple[float, float]]:
    """Seed recipe: frozen base recomputed per batch + Dense-ReLU-Dropout head, Adam. Returns [(seconds, test acc)] per epoch."""
    from torch.utils.data import DataLoader

    from headstart.data import TorchDataset

    torch.manual_seed(seed)
    tf = bb.preprocessing.transform()
    base = bb.eval().requires_grad_(False)
    head = nn.Sequential(nn.Linear(bb.num_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, len(train.classes)))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loader = DataLoader(TorchDataset(train, tf), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    test_loader = DataLoader(TorchDataset(test, tf), batch_size=batch_size)
    out, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        head.train()
        for x, y in loader:
            with torch.no_grad():
                f = base(x)
            loss = nn.functional.cross_entropy(head(f), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((head(base(x)).argmax(1) == y).sum())
        out.append((time.perf_counter() - t0, correct / len(test)))
        print(f"  baseline epoch {epoch + 1}: test accuracy {out[-1][1]:.4f} at {out[-1][0]:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="an image folder root/<class>/*")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strategy", default="linear", help="headstart's strategy (linear | finetune | progressive)")
    ap.add_argument("--epochs", type=int, default=3, help="baseline epochs")
    ap.add_argument("--max-train", type=int, default=None, help="use a stratified subset of the training split")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-args", default="", help="extra headstart.fit keyword args as k=v,k=v (e.g. unfreeze=2,epochs=3)")
    args = ap.parse_args()

    import headstart
    from headstart.backbones import create_backbone
    from headstart.data import Splits, load_splits

    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = load_splits(args.data, val=0.15, test=0.15, seed=args.seed)
    train = _subset(splits.train, args.max_train, args.seed)
    val = _subset(splits.val, None if args.max_train is None else max(1, args.max_train // 4), args.seed)
    test = splits.test
    print(f"data: {args.data}: {len(train)} train, {len(val)} val, {len(test)} test images, {len(train.classes)} classes; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    print(f"(a) seed-style baseline: frozen {args.backbone} recomputed every batch, Dense-ReLU-Dropout head, Adam, {args.epochs} epochs")
    curve = baseline(create_backbone(args.backbone), train, test, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)

    extra = dict(kv.split("=", 1) for kv in args.fit_args.split(",") if kv)
    extra = {k: (int(v) if v.isdigit() else v) for k, v in extra.items()}
    print(f"(b) headstart.fit(strategy={args.strategy!r}{''.join(f', {k}={v!r}' for k, v in extra.items())}), feature cache off")
    t0 = time.perf_counter()
    model = headstart.fit(Splits(train, val, test), backbone=args.backbone, strategy=args.strategy, cache=False, save=False, seed=args.seed,
                          batch_size=args.batch_size, **extra)
    t_hs = time.perf_counter() - t0
    acc_hs = float((model.predict_proba(test, cache=False).argmax(1) == test.labels).mean())
    t_pred = time.perf_counter() - t0 - t_hs
    print(f"  headstart: test accuracy {acc_hs:.4f} in {t_hs:.1f} s (+{t_pred:.1f} s to predict the test split again)")

    reach = next((t for t, a in curve if a >= acc_hs), None)
    best_a = max(a for _, a in curve)
    print()
    print(f"| method | test accuracy | wall time (s) |")
    print(f"|---|---|---|")
    for i, (t, a) in enumerate(curve):
        print(f"| baseline, {i + 1} epoch(s) | {a:.4f} | {t:.1f} |")
    print(f"| headstart {args.strategy} | {acc_hs:.4f} | {t_hs:.1f} |")
    if reach is not None:
        print(f"\nspeed-up to equal or better accuracy: {reach / t_hs:.1f}x (baseline reaches {acc_hs:.4f} after {reach:.1f} s; headstart {t_hs:.1f} s)")
    else:
        print(f"\nbaseline never reaches headstart's {acc_hs:.4f} in {args.epochs} epochs (best {best_a:.4f}): "
              f"speed-up > {curve[-1][0] / t_hs:.1f}x (baseline {curve[-1][0]:.1f} s, headstart {t_hs:.1f} s)")


if __name__ == "__main__":
    main()
