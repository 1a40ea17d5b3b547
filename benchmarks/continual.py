"""Learning new classes without forgetting the old ones: naive fine-tuning vs ewc, lwf, rehearsal, l2sp.

    python benchmarks/continual.py                                  # every sequence, seeds 0,1,2
    python benchmarks/continual.py --sequences shapes-lite0 --seeds 0 --methods naive,lwf

Sequences (old task -> new task), each a real two-task sequence of class-incremental learning:

- ``shapes-cnn``: circle/square/triangle -> star/pentagon/hexagon (headstart's shapes, 64 px, 200
  per class, 70/15/15), the demo's own CNN (``scratch_cnn``, MLP head) trained from scratch on the
  old shapes as the demo trains it (500 old shapes per class, 20 epochs at 3e-3).
- ``shapes-lite0``: the same shapes, ImageNet EfficientNet-Lite0 fine-tuned on the old shapes.
- ``digits-lite0``: scikit-learn digits 0-4 -> 5-9 (8 px, upscaled), Lite0 fine-tuned on 0-4.

For each sequence and seed the old run is one ``headstart.fit(old, strategy="finetune")``; each
method is then one ``headstart.fit(new, from_run=OLD, method=M, strategy="finetune")`` (the old
run's data given as ``old_data``: it is scored before and after, and rehearsal / ewc use its
training items). Reported (mean ± std over seeds): the old task's test accuracy before and after
(over all classes: class-incremental), the new task's, forgetting (before - after), the average
over every test item, which weights the keep rule kept, and the wall time of the continuation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rows import Rows, add_arguments, merged  # noqa: E402

OLD_SHAPES, NEW_SHAPES = ("circle", "square", "triangle"), ("star", "pentagon", "hexagon")


def shapes(seed: int, n_old: int = 200):
    from headstart.data import load_splits, make_shapes

    old = load_splits(make_shapes(OLD_SHAPES, n_per_class=n_old, size=64, seed=seed), seed=seed)
    new = load_splits(make_shapes(NEW_SHAPES, n_per_class=200, size=64, seed=seed + 1), seed=seed)
    return old, new


def digits(seed: int):
    import numpy as np
    from sklearn.datasets import load_digits

    from headstart.data import from_arrays, load_splits

    d = load_digits()

    def part(lo: int):
        keep = (d.target >= lo) & (d.target < lo + 5)
        return load_splits(from_arrays(d.images[keep], d.target[keep] - lo, [str(i) for i in range(lo, lo + 5)], value_range=(0, 16),
                                       source=f"sklearn-digits:{lo}-{lo + 4}"), seed=seed)

    return part(0), part(5)


# sequence -> (data, old run's fit options, continuation's fit options)
SEQUENCES = {
    "shapes-cnn": (lambda seed: shapes(seed, n_old=500), dict(backbone="scratch_cnn", head="mlp", epochs=20, lr=3e-3), dict(epochs=10, lr=3e-3)),
    "shapes-lite0": (shapes, dict(backbone="efficientnet_lite0", epochs=3), dict(epochs=3)),
    "digits-lite0": (digits, dict(backbone="efficientnet_lite0", epochs=3), dict(epochs=3)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", default=",".join(SEQUENCES))
    ap.add_argument("--methods", default="naive,ewc,lwf,rehearsal,l2sp")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--options", default="{}", help="JSON of extra fit options for every continuation, e.g. '{\"method_opt\": {\"lam\": 100}}'")
    add_arguments(ap)
    args = ap.parse_args()
    if merged(args) is not None:
        table(merged(args), f"merged from {args.merge}")
        return

    import yaml

    import headstart

    rows = Rows(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sequences.split(","):
            data, old_kw, new_kw = SEQUENCES[name]
            for seed in map(int, args.seeds.split(",")):
                old, new = data(seed)
                t0 = time.perf_counter()
                headstart.fit(old, strategy="finetune", seed=seed, out=f"{tmp}/{name}-{seed}/old", **old_kw)
                old_seconds = time.perf_counter() - t0
                for method in args.methods.split(","):
                    out = Path(f"{tmp}/{name}-{seed}/{method}")
                    t0 = time.perf_counter()
                    model = headstart.fit(new, strategy="finetune", seed=seed, from_run=f"{tmp}/{name}-{seed}/old", old_data=old,
                                          method=method, out=str(out), **{**new_kw, **json.loads(args.options)})
                    c = model.metrics["continual"]
                    training = yaml.safe_load((out / "config.yaml").read_text()).get("training") or {}
                    row = {"sequence": name, "seed": seed, "method": method, "old_before": c["old_before"], "old_after": c["old_after"],
                           "new_after": c["new_after"], "forgetting": c["forgetting"], "average": c["average_after"],
                           "old_within": c["old_after_within_task"], "new_within": c["new_after_within_task"],
                           "kept": training.get("best_epoch"), "seconds": time.perf_counter() - t0, "old_seconds": old_seconds}
                    rows.add(row)
    table(rows, f"seeds {args.seeds}, options {args.options}")


def table(rows: list[dict], title: str) -> None:
    import numpy as np

    def ms(rs, key, scale=1.0):
        v = np.array([r[key] for r in rs], dtype=float) * scale
        return f"{v.mean():.3f} ± {v.std():.3f}" if scale == 1 else f"{v.mean():+.1f} ± {v.std():.1f}"

    print(f"\n{title}\n")
    print("| sequence | method | old before | old after | new after | forgetting (points) | average | kept epoch (-1: start) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq in dict.fromkeys(r["sequence"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["sequence"] == seq):
            rs = [r for r in rows if r["sequence"] == seq and r["method"] == method]
            print(f"| {seq} | {method} (n={len(rs)}) | {ms(rs, 'old_before')} | {ms(rs, 'old_after')} | {ms(rs, 'new_after')} | "
                  f"{ms(rs, 'forgetting', 100)} | {ms(rs, 'average')} | {','.join(str(r['kept']) for r in rs)} | {np.mean([r['seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
