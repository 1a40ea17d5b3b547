"""Ensembles vs their best member: runs combined (average, vote, stack) and ensemble heads on cached features.

    python benchmarks/ensembles.py                       # digits and breastmnist, seeds 0,1,2
    python benchmarks/ensembles.py --datasets digits --seeds 0

For each dataset and seed, the members are runs on one split (the same seed): by default
EfficientNet-Lite0, -Lite1 and -Lite2 with the logistic-regression probe, and Lite0 with the MLP
head; ``--groups`` names more (probes at other input sizes, a fine-tuned Lite0) and the sets of
them to combine. ``headstart ensemble`` combines each set by averaging, voting and stacking (its
combiner fit on the validation split); ``--head bagging|boosting|stacking`` are the scikit-learn
ensembles on Lite0's cached features. Every row holds test and validation accuracy and log loss
(stacking's validation figures out of fold: its combiner is fit there). Printed (mean ± std over
seeds): each model's figures and its difference from the best member of that seed picked on
validation (accuracy, ties by log loss: what a practitioner can pick) and picked on test (the most
favourable single model to compare with: optimistic); then the best ensemble vs the best member,
both picked on validation (the honest comparison), and both picked on test.

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
# Members: linear-strategy runs (probes; sizes "auto" unless named: 4x a small image's side, 112 px for 28-px BreastMNIST)
# and one fine-tuned run (Lite0, the finetune recipe from its probe, 56 px for BreastMNIST, 10 epochs, light augmentation).
MEMBERS = {"lite0": dict(backbone="efficientnet_lite0"), "lite1": dict(backbone="efficientnet_lite1"),
           "lite2": dict(backbone="efficientnet_lite2"), "lite0-mlp": dict(backbone="efficientnet_lite0", head="mlp"),
           "lite0-64px": dict(backbone="efficientnet_lite0", image_size=64), "lite0-224px": dict(backbone="efficientnet_lite0", image_size=224),
           "lite2-224px": dict(backbone="efficientnet_lite2", image_size=224),
           "lite0-finetuned": dict(backbone="efficientnet_lite0", strategy="finetune", epochs=10, augment="light")}
GROUPS = "base=lite0,lite1,lite2,lite0-mlp"
HEADS = ("bagging", "boosting", "stacking")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--groups", default=GROUPS, help="';'-separated NAME=MEMBER,MEMBER,...: the members fit (their union) and the "
                    f"sets combined (each by average, vote and stack); members: {', '.join(MEMBERS)}")
    ap.add_argument("--heads", default=",".join(HEADS), help="ensemble heads on Lite0's cached features ('' for none)")
    add_arguments(ap)
    args = ap.parse_args()
    if merged(args) is not None:
        table(merged(args), f"merged from {args.merge}")
        return

    import headstart
    from headstart.ensemble import build_ensemble

    groups = {g.split("=")[0]: g.split("=")[1].split(",") for g in args.groups.split(";")}
    rows = Rows(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for seed in map(int, args.seeds.split(",")):
                splits = DATASETS[name](seed)
                runs = {}
                for member in dict.fromkeys(m for g in groups.values() for m in g):
                    kw = {"strategy": "linear", **MEMBERS[member]}
                    t0 = time.perf_counter()
                    m = headstart.fit(splits, seed=seed, out=f"{tmp}/{name}-{seed}/{member}", **kw)
                    runs[member] = f"{tmp}/{name}-{seed}/{member}"
                    val = m.evaluate(splits.val, cache=kw["strategy"] == "linear")  # an unchanged backbone: its cached features
                    rows.add(_row(name, seed, member, "member", m.metrics["test"], val, time.perf_counter() - t0))
                for group, members in groups.items():
                    for method in ("average", "vote", "stack"):
                        t0 = time.perf_counter()
                        ens = build_ensemble([runs[m] for m in members], method=method, data=splits, save=False, cache=True)
                        rows.add(_row(name, seed, f"ensemble {method} [{group}]", "ensemble", ens.metrics["test"], _ensemble_val(ens, splits),
                                      time.perf_counter() - t0, members=members))
                for head in filter(None, args.heads.split(",")):
                    t0 = time.perf_counter()
                    m = headstart.fit(splits, backbone="efficientnet_lite0", strategy="linear", head=head, seed=seed, save=False)
                    rows.add(_row(name, seed, f"lite0 head {head}", "ensemble", m.metrics["test"], m.evaluate(splits.val, cache=True),
                                  time.perf_counter() - t0))
    table(rows, f"seeds {args.seeds}")


def _ensemble_val(ens, splits) -> dict:
    """The ensemble's validation figures. ``stack`` fits its combiner on the validation split, so its in-sample figures
    there would flatter it: out-of-fold instead (each validation item predicted by a combiner fit on the other folds,
    the folds and C of :func:`headstart.ensemble.fit_stacker`; C was chosen by the same folds' log loss, a small optimism)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from headstart.ensemble import stack_features
    from headstart.evaluate.metrics import classification_metrics

    p = ens.member_proba(splits.val, cache=True)
    y = np.asarray(splits.val.labels)
    if ens.method != "stack":
        return classification_metrics(y, ens.combine(p), ens.classes)
    x, st = stack_features(p), ens.info["stacker"]
    proba = np.zeros((len(y), len(ens.classes)))
    for tr, te in StratifiedKFold(st["cv_folds"], shuffle=True, random_state=0).split(x, y):
        clf = LogisticRegression(C=st["C"], max_iter=2000).fit(x[tr], y[tr])
        proba[np.ix_(te, clf.classes_)] = clf.predict_proba(x[te])
    return {**classification_metrics(y, np.clip(proba, 1e-7, 1.0) / np.clip(proba, 1e-7, 1.0).sum(1, keepdims=True), ens.classes),
            "out_of_fold": True}


def _row(dataset: str, seed: int, model: str, kind: str, test: dict, val: dict, seconds: float, **extra) -> dict:
    return {"dataset": dataset, "seed": seed, "model": model, "kind": kind, "accuracy": test["accuracy"], "log_loss": test["log_loss"],
            "val_accuracy": val["accuracy"], "val_log_loss": val["log_loss"], **({"val_out_of_fold": True} if val.get("out_of_fold") else {}),
            "seconds": seconds, **extra}


def _best(rows: list[dict], on: str) -> dict:
    """The row a practitioner would pick: by validation (``on="val"``; ties by validation log loss), or by test (optimistic)."""
    a, ll = ("val_accuracy", "val_log_loss") if on == "val" else ("accuracy", "log_loss")
    return max(rows, key=lambda r: (r[a], -r[ll]))


def table(rows: list[dict], title: str) -> None:
    import numpy as np

    def ms(v, fmt=".4f", signed=False):
        v = np.asarray(v, dtype=float)
        return f"{v.mean():{'+' if signed else ''}{fmt}} ± {v.std():{fmt}}"

    print(f"\n{title}\n")
    print("| dataset | model | test accuracy | test log loss | val accuracy | val log loss | vs best member picked on val: accuracy (points) | "
          "log loss | vs best member picked on test (optimistic): accuracy (points) | log loss | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        seeds = sorted({r["seed"] for r in rows if r["dataset"] == ds})
        has_val = all("val_accuracy" in r for r in rows if r["dataset"] == ds)
        members = {s: [r for r in rows if r["dataset"] == ds and r["seed"] == s and r["kind"] == "member"] for s in seeds}
        ensembles = {s: [r for r in rows if r["dataset"] == ds and r["seed"] == s and r["kind"] == "ensemble"] for s in seeds}
        best_test = {s: _best(members[s], "test") for s in seeds}
        best_val = {s: _best(members[s], "val") for s in seeds} if has_val else None
        for model in dict.fromkeys(r["model"] for r in rows if r["dataset"] == ds):
            rs = [r for r in rows if r["dataset"] == ds and r["model"] == model]
            val = (f"{ms([r['val_accuracy'] for r in rs])} | {ms([r['val_log_loss'] for r in rs])}" + (" (out of fold)" if rs[0].get("val_out_of_fold") else "")
                   if has_val else "- | -")
            vs_val = (f"{ms([(r['accuracy'] - best_val[r['seed']]['accuracy']) * 100 for r in rs], '.2f', True)} | "
                      f"{ms([r['log_loss'] - best_val[r['seed']]['log_loss'] for r in rs], '.4f', True)}" if has_val else "- | -")
            print(f"| {ds} | {model} (n={len(rs)}) | {ms([r['accuracy'] for r in rs])} | {ms([r['log_loss'] for r in rs])} | {val} | {vs_val} | "
                  f"{ms([(r['accuracy'] - best_test[r['seed']]['accuracy']) * 100 for r in rs], '.2f', True)} | "
                  f"{ms([r['log_loss'] - best_test[r['seed']]['log_loss'] for r in rs], '.4f', True)} | {np.mean([r['seconds'] for r in rs]):.1f} |")
        for on in (("val", "test") if has_val else ("test",)):
            bm = {s: _best(members[s], on) for s in seeds}
            be = {s: _best(ensembles[s], on) for s in seeds}
            summary.append((ds, on, [bm[s]["model"] for s in seeds], [be[s]["model"] for s in seeds],
                            [bm[s]["accuracy"] for s in seeds], [be[s]["accuracy"] for s in seeds],
                            [bm[s]["log_loss"] for s in seeds], [be[s]["log_loss"] for s in seeds]))
    print("\nThe best ensemble vs the best single member, each picked per seed by validation accuracy (ties: validation log loss; "
          "the honest comparison) or by test accuracy (optimistic: what no practitioner can do); scored on test.\n")
    print("| dataset | picked on | best member (per seed) | best ensemble (per seed) | member test acc | ensemble test acc | gain (points) | "
          "member log loss | ensemble log loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ds, on, mn, en, ma, ea, ml, el in summary:
        print(f"| {ds} | {on}{' (optimistic)' if on == 'test' else ''} | {', '.join(mn)} | {', '.join(en)} | {ms(ma)} | {ms(ea)} | "
              f"{ms((np.array(ea) - np.array(ma)) * 100, '.2f', True)} | {ms(ml)} | {ms(el)} |")


if __name__ == "__main__":
    main()
