"""Transfer vs. scratch: test accuracy against the number of labels, with time and compute.

"Evaluation beyond accuracy" (data efficiency, convergence speed, compute cost): for each
fraction of the training labels and each seed, :func:`transfer_curve` subsamples the training
and validation splits (stratified, at least one item per class, seeded by ``(seed, fraction)``)
and trains

- ``linear``: a linear probe on the frozen pretrained ``backbone`` (``strategy="linear"``),
- ``finetune``: the pretrained ``backbone`` fine-tuned end to end (``strategy="finetune"``),
- ``scratch``: ``scratch_backbone`` from random weights, trained end to end (``strategy="finetune"``),

each evaluated on the same fixed test split (``headstart.fit(..., save=False)``; the test split
is never subsampled). What is measured per fit: test accuracy (and macro F1, log loss), wall
seconds, and CPU seconds of this process and its finished children (user + system over all
threads, from :func:`os.times`) as the compute used. The validation split shrinks with the
training split: in a low-label regime the labels of a validation set are labels too.

"Time to reach the target accuracy" of a method is the mean wall time of one fit at the smallest
fraction whose mean accuracy over seeds reaches ``target_acc`` (``None`` if none does), next to
the labels per class it needed. Results: ``curve.csv`` (one row per fit), ``curve.json`` (the
settings and these summaries), ``plots/curve.png``, and a report (``report.html``, ``report.md``);
``out`` may be a run folder, whose report then includes the curve.
Feature caching is off by default so that every linear probe pays for its own feature extraction.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import HeadstartError

log = logging.getLogger("headstart.curve")

METHODS = ("linear", "finetune", "scratch")


def subsample(ds: Any, fraction: float, seed: int) -> Any:
    """A stratified ``fraction`` of ``ds``: ``max(1, round(fraction * n_c))`` items of each class ``c``."""
    rng = np.random.default_rng([seed, int(round(fraction * 1e6))])
    keep = []
    for c in np.unique(ds.labels):
        idx = np.flatnonzero(ds.labels == c)
        keep.append(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False))
    return ds.subset(np.sort(np.concatenate(keep)))


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _parse_fractions(fractions: Sequence[float] | str) -> list[float]:
    if isinstance(fractions, str):
        try:
            fractions = [float(f) for f in fractions.split(",") if f.strip()]
        except ValueError as e:
            raise HeadstartError(f"The 'fractions' parameter must be comma-separated numbers in (0, 1], e.g. '0.05,0.1,0.25,0.5,1'; got {fractions!r}.") from e
    fr = sorted({float(f) for f in fractions})
    if not fr or fr[0] <= 0 or fr[-1] > 1:
        raise HeadstartError(f"The 'fractions' parameter must hold numbers in (0, 1], e.g. '0.05,0.1,0.25,0.5,1'; got {list(fractions)!r}.")
    return fr


def method_summary(rows: list[dict[str, Any]], target: float | None) -> dict[str, dict[str, Any]]:
    """Per method: labels per class and seconds per fit at the first fraction whose mean accuracy
    reaches ``target``; total wall and CPU seconds of all its fits."""
    out: dict[str, dict[str, Any]] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        d: dict[str, Any] = {"labels_per_class_to_target": None, "seconds_to_target": None,
                             "total_seconds": round(sum(r["seconds"] for r in mine), 2), "total_cpu_seconds": round(sum(r["cpu_seconds"] for r in mine), 2)}
        for f in sorted({r["fraction"] for r in mine}):
            at = [r for r in mine if r["fraction"] == f]
            if target is not None and np.mean([r["accuracy"] for r in at]) >= target:
                d["labels_per_class_to_target"] = at[0]["labels_per_class"]
                d["seconds_to_target"] = round(float(np.mean([r["seconds"] for r in at])), 2)
                break
        out[m] = d
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from .._io import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def transfer_curve(
    data: Any,
    *,
    backbone: str = "efficientnet_lite0",
    fractions: Sequence[float] | str = (0.05, 0.1, 0.25, 0.5, 1.0),
    seeds: int = 3,
    scratch_backbone: str = "scratch_cnn",
    methods: Sequence[str] = METHODS,
    target_acc: float | None = 0.9,
    epochs: int = 10,
    scratch_epochs: int | None = None,
    lr: float = 1e-3,
    scratch_lr: float | None = None,
    batch_size: int = 32,
    val: float = 0.15,
    test: float = 0.15,
    n_per_class: int = 200,
    runtime: str = "auto",
    cache: bool = False,
    out: str | Path | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Fit every method at every fraction and seed; write the results into ``out`` (see the module doc).

    Returns ``{"rows": [...], "summary": {...}, "out": Path}``. ``scratch_epochs`` defaults to
    ``epochs`` and ``scratch_lr`` to ``lr`` (a network from scratch often wants more epochs and a
    higher learning rate than fine-tuning; give it the budget you mean to compare).
    """
    from ..data import Splits, load_splits
    from ..fitting import fit
    from ..run_folder import new_run_dir

    fr = _parse_fractions(fractions)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise HeadstartError(f"The 'methods' parameter must hold some of {{{', '.join(repr(m) for m in METHODS)}}}; got {list(methods)!r}.")
    if seeds < 1:
        raise HeadstartError(f"The 'seeds' parameter must be at least 1; got {seeds!r}.")
    splits = load_splits(data, val=val, test=test, seed=0, n_per_class=n_per_class)
    if splits.test is None or not len(splits.test):
        raise HeadstartError("The data has no test split to measure the curve on; give --test > 0 or a folder with a test/ folder.")
    out_dir = new_run_dir(out, name="curve", add=True)  # may be a run folder, kept: its report then shows the curve
    settings = {"backbone": backbone, "scratch_backbone": scratch_backbone}
    rows: list[dict[str, Any]] = []
    for f in fr:
        for seed in range(seeds):
            train = subsample(splits.train, f, seed)
            val_ds = subsample(splits.val, f, seed) if splits.val is not None and len(splits.val) else None
            sub = Splits(train, val_ds, splits.test)
            per_class = int(np.bincount(train.labels, minlength=len(splits.classes)).min())
            for method in methods:
                bb = settings["scratch_backbone" if method == "scratch" else "backbone"]
                strategy = "linear" if method == "linear" else "finetune"
                n_epochs = (scratch_epochs or epochs) if method == "scratch" else epochs
                m_lr = (scratch_lr or lr) if method == "scratch" else lr
                t, c = time.perf_counter(), _cpu_seconds()
                model = fit(sub, backbone=bb, strategy=strategy, seed=seed, epochs=n_epochs, lr=m_lr, batch_size=batch_size,
                            runtime=runtime, cache=cache, save=False)
                seconds, cpu = time.perf_counter() - t, _cpu_seconds() - c
                m = model.metrics["test"]
                rows.append({"fraction": f, "labels_per_class": per_class, "n_train": len(train), "method": method, "backbone": bb,
                             "strategy": strategy, "seed": seed, "accuracy": round(m["accuracy"], 6), "macro_f1": round(m["macro_f1"], 6),
                             "log_loss": round(m["log_loss"], 6), "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "n_test": m["n"]})
                log.info("curve: fraction %g seed %d %s: accuracy %.3f in %.1f s", f, seed, method, m["accuracy"], seconds)
                _write_csv(out_dir / "curve.csv", rows)  # after every fit: a long curve can be watched and survives a crash
    import torch

    summary = {
        "data": str(data) if isinstance(data, (str, Path)) else splits.train.source, "backbone": backbone, "scratch_backbone": scratch_backbone,
        "fractions": fr, "seeds": seeds, "epochs": epochs, "scratch_epochs": scratch_epochs or epochs, "lr": lr, "scratch_lr": scratch_lr or lr, "n_test": len(splits.test),
        "n_train_full": len(splits.train), "target_accuracy": target_acc, "torch_threads": torch.get_num_threads(),
        "compute_note": "Compute is CPU seconds of the process and its finished children (user + system, all threads; os.times) and wall seconds. "
                        "'Seconds per fit there' is the mean wall time of one fit at the smallest fraction whose mean accuracy reaches the target.",
        "methods": method_summary(rows, target_acc),
    }
    from .._io import write_json

    write_json(out_dir / "curve.json", summary)
    if report:
        from ..evaluate.report import write_report

        try:
            write_report(out_dir)
        except Exception as e:  # noqa: BLE001 - the measured curve is saved; the report is a view of it
            log.warning("the curve report could not be written (%s: %s); curve.csv is saved: run 'headstart report %s'", type(e).__name__, e, out_dir)
    return {"rows": rows, "summary": summary, "out": out_dir}
