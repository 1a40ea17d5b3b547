"""``headstart.fit``: from a labeled dataset to a trained classifier and its run folder.

Strategies: ``linear`` (frozen backbone, features extracted once through the fastest runtime and
cached, a head fit on them in seconds) and ``finetune`` (backbone and head trained together in the
one training loop; with random-init backbones this is training from scratch).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import HeadstartError

log = logging.getLogger("headstart")

STRATEGIES = ("linear", "finetune")
HEADS = ("logreg", "mlp")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HeadstartError(f"The {name!r} parameter must be one of {{{', '.join(repr(c) for c in choices)}}}; got {value!r}.")


def _check_fraction(name: str, value: float) -> None:
    if not (0.0 <= float(value) < 1.0):
        raise HeadstartError(f"The {name!r} parameter must be a fraction in [0, 1); got {value!r}.")


def fit(
    data: Any,
    *,
    backbone: str | None = None,
    candidates: str | Sequence[str] | None = None,
    strategy: str = "linear",
    head: str = "logreg",
    out: str | Path | None = None,
    weights: str | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    hidden: int = 256,
    dropout: float = 0.3,
    class_weights: str | None = None,
    patience: int | None = 5,
    strict: bool = False,
    cache: bool = True,
    runtime: str = "auto",
    progress: bool = False,
    overwrite: bool = False,
    save: bool = True,
    text_col: str | None = None,
    label_col: str | None = None,
    backbone_lr: float | None = None,
):
    """Train a classifier on ``data`` by transfer from ``backbone``; write the run folder; return the Model.

    ``backbone`` defaults to ``"minilm_l6"`` for texts and ``"efficientnet_lite0"`` for images.
    Texts: a CSV/TSV/JSONL table (``text_col``/``label_col``, auto-detected by default) or a folder
    of ``.txt`` files per class; ``strategy="finetune"`` on texts trains the head on the frozen
    encoder first, then unfreezes it from the top (encoder at ``backbone_lr``, default 2e-5; see
    :mod:`headstart.text_finetune`).

    ``data``: a folder (``root/<class>/*``, with optional train/val/test subfolders), a CSV manifest
    (``path,label``), an ``.npz`` of arrays, ``"shapes:<names>"``, or a LabeledDataset/Splits.
    """
    from .backbones import create_backbone
    from .data import load_splits
    from .evaluate.metrics import classification_metrics
    from .model import Model
    from .run_folder import check_run_dir, new_run_dir, write_config, write_history, write_metrics, write_predictions

    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("head", head, HEADS)
    _check_choice("class_weights", class_weights, (None, "balanced"))
    _check_fraction("val", val)
    _check_fraction("test", test)
    if epochs < 1:
        raise HeadstartError(f"The 'epochs' parameter must be at least 1; got {epochs!r}.")
    if save:
        check_run_dir(out, overwrite=overwrite)  # before the work, not after it
    # backbone="auto": rank the candidates by LogME on the training split, fit the top one (select/).
    from .select.rank import resolve_backbone

    if backbone is None:
        from .data.load import guess_modality

        backbone = "minilm_l6" if guess_modality(data, text_col=text_col) == "text" else "efficientnet_lite0"
    backbone, ranking = resolve_backbone(data, backbone, candidates, weights=weights, val=val, test=test, seed=seed, strict=strict, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)

    t0 = time.perf_counter()
    splits = load_splits(data, val=val, test=test, seed=seed, strict=strict, text_col=text_col, label_col=label_col)
    bb = create_backbone(backbone, weights=weights)
    if (splits.train.modality == "text") != hasattr(bb, "tokenize"):
        kind = "text" if splits.train.modality == "text" else "image"
        raise HeadstartError(
            f"The data holds {kind}s but backbone {backbone!r} is {'an image' if kind == 'text' else 'a text'} backbone. "
            f"Fix: pass a {kind} backbone with --backbone (see 'headstart backbones --modality {kind}')."
        )
    classes = splits.classes
    cw = _class_weights(splits.train.labels, len(classes)) if class_weights == "balanced" else None
    timings: dict[str, float] = {"load": time.perf_counter() - t0}

    if strategy == "finetune" and splits.train.modality == "text":
        from .text_finetune import fit_text_finetune

        head_mod, history = fit_text_finetune(
            bb, splits, seed=seed, class_weights=cw, batch_size=batch_size, epochs=epochs, lr=lr, backbone_lr=backbone_lr,
            patience=patience, progress=progress, dropout=None, timings=timings, runtime=runtime, cache=cache,
        )
    elif strategy == "linear":
        head_mod, history = _fit_linear(bb, splits, head, seed, cw, batch_size, runtime, cache, progress, hidden, dropout, timings, epochs, lr, patience)
    else:
        head_mod, history = _fit_finetune(bb, splits, head, seed, cw, batch_size, epochs, lr, patience, progress, hidden, dropout, timings)

    model = Model(bb, head_mod, classes, modality=splits.train.modality)
    config = {
        "data": str(data) if not hasattr(data, "classes") else splits.train.source,
        "backbone": backbone,
        "weights": weights,
        "strategy": strategy,
        "head": head,
        "val": val,
        "test": test,
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "hidden": hidden,
        "dropout": dropout,
        "class_weights": class_weights,
        "patience": patience,
        "strict": strict,
        "text_col": text_col,
        "label_col": label_col,
        "backbone_lr": backbone_lr,
        "cache": cache,
        "runtime": runtime,
        "classes": classes,
        "split_sizes": {k: sum(v.values()) for k, v in splits.summary().items()},
        "versions": _versions(),
    }
    model.info = {"strategy": strategy, "head": head, "backbone": backbone, "trained_on": splits.train.source}
    metrics: dict[str, Any] = {"classes": classes, "counts": splits.summary(), "problems": [str(p) for ds in (splits.train, splits.val, splits.test) if ds is not None for p in ds.problems]}
    if ranking is not None:  # why this backbone; the report renders metrics["backbone_ranking"]
        config["backbone_selection"] = {"requested": "auto", "candidates": [r.backbone for r in ranking.rows], "score": ranking.score_name}
        metrics["backbone_ranking"] = ranking.to_dicts()
    eval_ds = splits.test if splits.test is not None and len(splits.test) else splits.val
    if eval_ds is not None and len(eval_ds):
        t = time.perf_counter()
        proba = model.predict_proba(eval_ds, batch_size=batch_size, runtime=runtime, cache=cache and strategy == "linear")
        timings["predict"] = time.perf_counter() - t
        split_name = "test" if eval_ds is splits.test else "val"
        metrics[split_name] = classification_metrics(eval_ds.labels, proba, classes)
    else:
        proba, split_name = None, None
    timings["total"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    model.metrics = metrics
    if save:
        run_dir = new_run_dir(out, name=f"{backbone.replace(':', '_').replace('/', '_')}-{strategy}", overwrite=overwrite)
        model.save(run_dir)
        write_config(run_dir, config)
        write_history(run_dir, history)
        write_metrics(run_dir, metrics)
        if proba is not None:
            write_predictions(run_dir, [eval_ds.item_name(i) for i in range(len(eval_ds))], eval_ds.labels, proba, classes, split_name)
        log.info("run written to %s", run_dir)
        from .evaluate.report import report_after_fit  # report.html, report.md, plots/; warns, never raises

        report_after_fit(run_dir, model, eval_ds if proba is not None else None)
    return model


def _class_weights(labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return (len(labels) / (k * np.maximum(counts, 1))).astype(np.float32)


def _fit_linear(bb, splits, head, seed, cw, batch_size, runtime, cache, progress, hidden, dropout, timings, epochs, lr, patience):
    from .features import extract_features
    from .heads import fit_head

    t = time.perf_counter()
    x_tr = extract_features(bb, splits.train, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress)
    x_val = extract_features(bb, splits.val, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress) if splits.val is not None and len(splits.val) else None
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    kind = "linear" if head == "logreg" else "mlp"
    head_mod, history = fit_head(
        kind, x_tr, splits.train.labels, x_val, splits.val.labels if x_val is not None else None,
        num_classes=len(splits.classes), seed=seed, class_weight=cw,
        **({"hidden": hidden, "dropout": dropout, "epochs": max(epochs, 50), "lr": lr, "patience": patience} if kind == "mlp" else {}),
    )
    timings["head"] = time.perf_counter() - t
    return head_mod, history


def _fit_finetune(bb, splits, head, seed, cw, batch_size, epochs, lr, patience, progress, hidden, dropout, timings):
    import torch
    from torch.utils.data import DataLoader

    from .data import TorchDataset
    from .heads import create_head
    from .train import train_classifier

    kind = "linear" if head == "logreg" else "mlp"
    head_mod = create_head(kind, bb.num_features, len(splits.classes), hidden=hidden, dropout=dropout)
    tf = bb.preprocessing.transform()
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TorchDataset(splits.train, tf), batch_size=batch_size, shuffle=True, generator=g)
    val_loader = DataLoader(TorchDataset(splits.val, tf), batch_size=batch_size) if splits.val is not None and len(splits.val) else None
    t = time.perf_counter()
    result = train_classifier(
        bb, head_mod, train_loader, val_loader, epochs=epochs, lr=lr, trainable="all",
        class_weights=cw, patience=patience if val_loader is not None else None, seed=seed, progress=progress,
    )
    timings["train"] = time.perf_counter() - t
    # The weights changed in place: their hash is no longer the pretrained file's (feature caches key on it).
    bb.provenance = dataclasses.replace(bb.provenance, source=f"{bb.provenance.source} +finetune", weights_sha256=None)
    bb.eval()
    head_mod.eval()
    return head_mod, result.history


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"headstart": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version()}
