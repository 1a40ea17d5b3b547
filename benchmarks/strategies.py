"""Linear probe vs fine-tuning strategies of one backbone on one image folder: test accuracy and wall time.

    python examples/make_digits_folder.py /tmp/digits
    python benchmarks/strategies.py /tmp/digits --backbone efficientnet_lite0 --epochs 4 --unfreeze 2

Each strategy is a separate ``headstart.fit`` on the same split (seeded), feature cache off. With
``--unfreeze N`` the fine-tuning strategies keep the lower groups frozen, so the activation cache
runs them once and every epoch trains only the top ``N`` groups and the head.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--unfreeze", default="2")
    ap.add_argument("--strategies", default="linear,finetune,progressive")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import headstart

    unfreeze = args.unfreeze if args.unfreeze == "all" else int(args.unfreeze)
    rows = []
    for strategy in args.strategies.split(","):
        kw = {} if strategy == "linear" else {"unfreeze": unfreeze, "epochs": args.epochs, "lr": args.lr, **({"backbone_lr": args.backbone_lr} if args.backbone_lr else {})}
        t0 = time.perf_counter()
        model = headstart.fit(args.data, backbone=args.backbone, strategy=strategy, cache=False, save=False, seed=args.seed, **kw)
        seconds = time.perf_counter() - t0
        m = model.metrics
        rows.append((strategy, kw, m["test"]["accuracy"], m["test"]["macro_f1"], seconds, m["timings_s"]))
        print(f"{strategy} {kw}: test accuracy {m['test']['accuracy']:.4f}, {seconds:.1f} s, timings {m['timings_s']}", flush=True)
    print("\n| strategy | options | test accuracy | macro F1 | wall time (s) |\n|---|---|---|---|---|")
    for strategy, kw, acc, f1, seconds, _ in rows:
        print(f"| {strategy} | {', '.join(f'{k}={v}' for k, v in kw.items()) or '-'} | {acc:.4f} | {f1:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
