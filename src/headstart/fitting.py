"""``headstart.fit``: from a labeled dataset to a trained classifier and its run folder.

Strategies: ``linear`` (frozen backbone, features extracted once through the fastest runtime and
cached, a head fit on them in seconds); ``finetune`` (backbone and head trained together in the one
training loop; by default the fastai-style recipe, or the last ``unfreeze`` layer groups; with
random-init backbones this is training from scratch); ``progressive`` (gradual unfreezing from the
top, one stage per layer group); ``auto`` (linear or finetune, from the data size, the linear
probe's validation score). The plans live in :mod:`headstart.train.recipes`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import HeadstartError
from .run_folder import read_config  # noqa: F401  (re-exported: headstart.fitting.read_config)
from .settings import STRATEGIES, Settings  # noqa: F401  (STRATEGIES: re-exported)

log = logging.getLogger("headstart")

LOOP_STRATEGIES = ("finetune", "progressive")


def fit(data: Any = None, settings: Settings | None = None, *, resume: str | Path | None = None, **overrides: Any):
    """Train a classifier on ``data`` by transfer from a backbone; write the run folder; return the Model.

    ``settings``: a :class:`~headstart.settings.Settings` (every setting, grouped: data, backbone,
    head, training, hardware, output; defaults when ``None``); ``overrides``: settings by their flat
    names (``fit(data, strategy="finetune", epochs=5)``), applied on top. Every setting, its default
    and what it accepts: :mod:`headstart.settings` (``headstart fit --help`` prints the same).
    ``resume=RUN`` continues a killed run with its own settings (``config.yaml``).

    ``backbone`` defaults to ``"minilm_l6"`` for texts and ``"efficientnet_lite0"`` for images.
    Texts: a CSV/TSV/JSONL table (``text_col``/``label_col``, auto-detected by default) or a folder
    of ``.txt`` files per class; ``strategy="finetune"`` on texts trains the head on the frozen
    encoder first, then unfreezes it from the top (encoder at ``backbone_lr``, default 2e-5; see
    :mod:`headstart.train.text_recipe`).

    ``data``: a folder (``root/<class>/*``, with optional train/val/test subfolders), a CSV manifest
    (``path,label``), an ``.npz`` of arrays, ``"shapes:<names>"``, or a LabeledDataset/Splits.

    ``strategy`` (images):

    * ``"linear"`` (default): features extracted once and cached, a head fit on them.
    * ``"finetune"``: **by default (``unfreeze=None``) the fastai-style recipe**: ``freeze_epochs``
      epochs of head warm-up on the frozen backbone, then every layer group unfrozen for ``epochs``
      epochs at half the rate, with discriminative rates (top group at ``backbone_lr``, default
      ``lr/2``, each group below ``lr_decay`` times the one above). ``unfreeze=N`` trains the last
      ``N`` layer groups (``"all"``: every group) and the head from the start, for ``epochs``.
    * ``"progressive"``: the head, then one more layer group from the top per stage (up to
      ``unfreeze`` groups; all by default), each stage at most ``epochs`` epochs at a lower rate;
      stops when a stage does not lower the validation loss; the best weights are kept.
    * ``finetune`` and ``progressive`` on pretrained weights start from a head fit on the cached
      frozen features (the logistic-regression probe: LP-FT; or the MLP trained on them), which
      replaces the plans' head-only stages (they would run the frozen backbone every step).
    * ``"auto"``: a linear probe first; keeps it for tiny data, a near-perfect probe, or a time
      limit too short for one epoch, else runs ``finetune`` from a probe (as many epochs as fit).
      Small images are probed at 4x and fine-tuned at 2x their side: then the 4x probe stays a
      candidate, and whichever of it and the fine-tuned model is better on validation is kept.
      The choice and its reasons go into ``config.yaml`` and ``metrics.json``.

    Loop options: ``augment`` (``none``/``light``/``strong``; default none, ``auto`` fine-tunes with
    ``light``), ``schedule`` (``cosine``/``onecycle``),
    ``label_smoothing``, ``clip_grad``, ``patience`` (epochs without a lower validation loss before a
    stage ends), ``activation_cache`` (when the lower groups stay frozen and augmentation is off,
    run them once and train only the top), ``train_bn`` (let BatchNorm layers update their running
    statistics while fine-tuning; off by default: every BN normalises with its running statistics),
    ``logger`` (``csv``, plus ``tensorboard``/``mlflow``),
    ``accelerator``/``devices``/``dist`` (Lightning's strategy, e.g. ``"ddp"``)/``precision``.
    Loop strategies create the run folder at the start (``config.yaml`` first) and checkpoint every
    epoch into ``RUN/checkpoints``; ``resume=RUN`` continues a killed run with its own settings.

    ``image_size``: the side images are resized to; ``"auto"`` keeps the backbone's own size unless
    the images are much smaller (see :func:`headstart.backbones.size.resolve_image_size`); recorded in ``model.json``, so
    ``predict`` uses the same. ``time_limit``: seconds for the whole call; the loop stops in time
    with the best weights so far, and ``auto`` fine-tunes only when an epoch fits, for as many epochs
    as fit. Fine-tuned weights replace the probe's only when better on validation accuracy and loss
    together (:mod:`headstart.train.selection`); the run log and ``config.yaml`` say which were kept.
    """
    if resume is not None:
        return _resume(resume, progress=bool(overrides.get("progress", False)), data=data)
    if data is None:
        raise HeadstartError("Give the data to train on (a folder, CSV manifest, .npz, 'shapes:<names>' or a dataset), or resume=RUN.")
    s = Settings.from_flat(settings, **overrides)  # validated here, in one place
    d, b, h, tr, hw, o = s.data, s.backbone, s.head, s.training, s.hardware, s.output
    backbone, epochs, augment, out = b.name, tr.epochs, tr.augment, o.out  # resolved or decided below
    method = _create_method(s)
    _check_unused_inputs(s, method)
    cont = _continuation(s, method)  # --from RUN: the old run, loaded and checked before any work
    if cont is not None:
        backbone = cont.backbone
    from .train.budget import Budget

    budget = Budget(tr.time_limit)  # the whole call counts, backbone ranking and the report included
    from .backbones import create_backbone
    from .backbones.size import resolve_image_size
    from .data import load_splits
    from .evaluate.metrics import classification_metrics
    from .model import Model
    from ._io import write_json
    from .run_folder import check_run_dir, new_run_dir, write_config, write_history, write_metrics, write_predictions

    if o.save:
        check_run_dir(out, overwrite=o.overwrite)  # before the work, not after it
    # what config.yaml records to rerun (--config) or resume the run: the data (None in memory: a run
    # folder cannot rebuild it; resume from Python) and every setting as given
    rerun = {"data": str(data) if isinstance(data, (str, Path)) else None, "settings": s.to_dict()}
    for key in ("target", "target_test", "unlabeled", "old_data"):  # data given in memory (Python): recorded as None, like the data
        if not isinstance(rerun["settings"]["data"][key], (str, type(None))):
            rerun["settings"]["data"][key] = None
    import torch

    torch.manual_seed(tr.seed)  # random-init backbones and heads: the same seed, the same run (--config reruns it exactly)
    # backbone="auto": rank the candidates by LogME on the training split, fit the top one (select/).
    from .select.rank import resolve_backbone

    if backbone is None:
        from .data.load import guess_modality

        backbone = "minilm_l6" if guess_modality(data, text_col=d.text_col) == "text" else "efficientnet_lite0"
    backbone, ranking = resolve_backbone(data, backbone, b.candidates, weights=b.weights, val=d.val, test=d.test, seed=tr.seed, strict=d.strict, text_col=d.text_col, label_col=d.label_col, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache, progress=o.progress)

    t0 = time.perf_counter()
    splits = load_splits(data, val=d.val, test=d.test, seed=tr.seed, strict=d.strict, text_col=d.text_col, label_col=d.label_col,
                         classes=d.classes)
    if cont is not None:  # the joint classes (old first); the old task's validation and test items join the new ones
        splits = cont.join(splits, s)
    bb = ranking.best_backbone if ranking is not None else create_backbone(backbone, weights=b.weights)  # the instance scored (random-init too)
    if (splits.train.modality == "text") != hasattr(bb, "tokenize"):
        kind = "text" if splits.train.modality == "text" else "image"
        raise HeadstartError(
            f"The data holds {kind}s but backbone {backbone!r} is {'an image' if kind == 'text' else 'a text'} backbone. "
            f"Fix: pass a {kind} backbone with --backbone (see 'headstart backbones --modality {kind}')."
        )
    from .features.fitted import fit_on_train  # TF-IDF (and hybrids with it): vocabulary from the training split only
    fit_on_train(bb, splits.train, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache)
    if splits.train.modality == "image":
        # auto probes at the probe's size; _auto moves to the training size if it fine-tunes
        size = (cont.input_size() if cont is not None and d.image_size == "auto"  # the size the old head was trained at
                else resolve_image_size(d.image_size, bb, splits.train, "linear" if tr.strategy == "auto" else tr.strategy))
        bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(size, size))
        log.info("input size %d px (%s)", size, "auto" if d.image_size == "auto" else "set")
        from .features.precision import choose_for_run
        choose_for_run(bb, splits, s)  # bf16 features only where they agree with fp32 on the run's images
    _load_inputs(method, s, splits)
    if cont is not None:
        cont.old_task(method, bb, splits, s)  # the old run's figures on the old task; a continual method gets the old model
    target_test = _load_target_test(s, splits)
    classes = splits.classes
    if h.threshold is not None:  # a binary run only: said before any training
        from .evaluate.operating import check_binary
        check_binary(h.threshold, classes)
    cw = _class_weights(splits.train.labels, len(classes)) if h.class_weights == "balanced" else None
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    secondary = _secondary_rank()  # a DDP worker process: trains, writes nothing
    save = o.save and not secondary
    run_dir = None
    target_before = gap_before = None  # the probe's figures on --target-test and the features' gap, when the backbone is then trained
    loop_info: dict[str, Any] = {}
    auto_choice = None
    if tr.strategy == "auto":
        train_size = resolve_image_size(d.image_size, bb, splits.train, "finetune") if splits.train.modality == "image" else None
        auto_choice = _auto(bb, splits, s, cw, timings, budget, train_size)
        log.info("auto chose %s because %s", auto_choice["strategy"], auto_choice["reason"])
        epochs = auto_choice.get("epochs", epochs)
        if augment is None and auto_choice["strategy"] != "linear" and splits.train.modality == "image":
            augment = auto_choice["augment"] = AUTO_AUGMENT
    trained = auto_choice["strategy"] if auto_choice is not None else tr.strategy
    if save and trained in LOOP_STRATEGIES and splits.train.modality != "text":
        # A resumable run: its folder and config.yaml exist before the first epoch.
        run_dir = new_run_dir(out, name=f"{backbone.replace(':', '_').replace('/', '_')}-{tr.strategy}", overwrite=o.overwrite)
        out = run_dir
        write_config(run_dir, {"status": "training", **rerun})
        os.environ["HEADSTART_RUN_DIR"] = str(run_dir.resolve())  # DDP workers (started from this process) use it too
    elif secondary and trained in LOOP_STRATEGIES and os.environ.get("HEADSTART_RUN_DIR"):
        run_dir = Path(os.environ["HEADSTART_RUN_DIR"])  # checkpoints are collective: every rank takes part

    if trained in LOOP_STRATEGIES and splits.train.modality == "text":
        # Texts: 'finetune' and 'progressive' are one recipe (BERT/ULMFiT): the head on the frozen encoder's
        # cached features, then the encoder unfrozen from the top, one more layer group per epoch (train.text_recipe).
        from .train.recipes import default_lr
        from .train.text_recipe import fit_text_finetune, text_epochs
        head_mod, history = fit_text_finetune(
            bb, splits, seed=tr.seed, class_weights=cw, batch_size=tr.batch_size, epochs=text_epochs(epochs), lr=default_lr(tr.lr), backbone_lr=tr.backbone_lr,
            patience=tr.patience, progress=o.progress, dropout=None, timings=timings, runtime=b.runtime, cache=b.cache, unfreeze=tr.unfreeze,
            method=method, max_time=budget.left(_reserve_seconds(splits, timings, budget)))
    elif trained == "setfit":  # texts: the encoder trained on pairs in the loop, then the probe on its new embeddings (train.setfit)
        from .train.setfit import fit_setfit
        loop_info = fit_setfit(bb, splits, s, timings=timings, max_time=budget.left(_reserve_seconds(splits, timings, budget)))
        head_mod, history = _fit_linear(bb, splits, s, cw, timings)
        history = loop_info.pop("history") + history
    elif auto_choice is not None and trained == "linear":
        head_mod, history = auto_choice.pop("probe")
    elif trained in LOOP_STRATEGIES:
        from .train.recipes import fit_in_loop

        probe = auto_choice.get("probe_score") if auto_choice is not None else None
        if cont is not None:
            # The old head grown by the new classes is where training starts, not a model to keep: it has not
            # learned the new task with the backbone (an MLP's new rows are untrained), and on the joint
            # validation items, mostly old ones, it won every comparison (benchmarks/continual.py, shapes,
            # demo CNN: kept by all five methods at 0.0 new-task accuracy). --strategy linear is that model.
            probe = (cont.head(bb, splits, s, cw), None)
        if target_test is not None and probe is None and bb.provenance.source != "random-init":
            # the probe fine-tuning starts from, fit here so that its target figures are the "before" of the run
            probe_head, _ = _fit_linear(bb, splits, s, cw, timings)
            probe = (probe_head, _val_score(bb, probe_head, splits, s, cw))
        if target_test is not None and probe is not None:
            target_before = _head_metrics(bb, probe[0], target_test, s, classes)
            gap_before = _domain_gap(bb, splits, target_test, s)
        head_mod, history, loop_info = fit_in_loop(
            bb, splits, s.replace(epochs=epochs, augment=augment), strategy=trained, class_weights=cw, timings=timings, run_dir=run_dir,
            resume=_resuming(run_dir), max_time=budget.left(_reserve_seconds(splits, timings, budget)), probe=probe, method=method,
            task_of_class=cont.task_of_class() if cont is not None else None,
        )
    elif cont is not None:
        head_mod, history = cont.head(bb, splits, s, cw).eval(), []
    else:
        head_mod, history = _fit_linear(bb, splits, s, cw, timings)
    if auto_choice is not None and "wide_probe" in auto_choice:
        head_mod, trained = _keep_wide_probe(bb, head_mod, trained, auto_choice, loop_info, history)
    if auto_choice is not None:
        for key in ("probe", "probe_score", "wide_history"):  # objects, not settings: not for config.yaml
            auto_choice.pop(key, None)

    model = Model(bb, head_mod, classes, modality=splits.train.modality)
    if secondary:
        return model
    config = {
        **copy.deepcopy(rerun),  # every setting as given (copied: no YAML aliases): a valid --config
        "trained_on": splits.train.source,
        "backbone": backbone,  # as resolved (backbone auto: the top of the ranking)
        "auto": auto_choice,
        "training": loop_info or None,
        "classes": classes,
        "split_sizes": {k: sum(v.values()) for k, v in splits.summary().items()},
        "versions": _versions(),
    }
    model.info = {"strategy": tr.strategy, "head": head_mod.config()["kind"], "backbone": backbone, "trained_on": splits.train.source}
    from .evaluate.operating import fit_decision  # calibration, then the threshold on calibrated probabilities: on validation, never test
    model.info.update(fit_decision(model, splits.val, calibrate=h.calibrate, threshold=h.threshold, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache and trained == "linear"))
    if cont is not None:
        cont.record(config, model.info, method)  # parent (lineage); tasks with --heads separate
    metrics: dict[str, Any] = {"strategy": trained, **({"auto": auto_choice} if auto_choice else {}), "classes": classes, "counts": splits.summary(), "problems": [str(p) for ds in (splits.train, splits.val, splits.test) if ds is not None for p in ds.problems]}
    if ranking is not None:  # why this backbone; the report renders metrics["backbone_ranking"]
        config["backbone_selection"] = {"requested": "auto", "candidates": [r.backbone for r in ranking.rows], "score": ranking.score_name}
        metrics["backbone_ranking"] = ranking.to_dicts()
    eval_ds = _eval_split(splits)
    if eval_ds is not None and len(eval_ds):
        t = time.perf_counter()
        proba = model.predict_proba(eval_ds, task=model.task_of_labels(eval_ds.labels), batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache and (trained == "linear" or loop_info.get("best_epoch") == -1))  # an unchanged backbone: its cached features
        timings["predict"] = time.perf_counter() - t
        split_name = "test" if eval_ds is splits.test else "val"
        metrics[split_name] = {**classification_metrics(eval_ds.labels, proba, classes), **model.decision_metrics(eval_ds.labels, proba)}
        if splits.train.modality == "text":  # the bag-of-words baseline on the same split, beside the run's figures
            from .backbones.tfidf import sparse_baseline
            metrics["sparse_baseline"] = {"split": split_name, **sparse_baseline(splits.train.items, splits.train.labels, eval_ds.items, eval_ds.labels)}
        if cont is not None:
            metrics["continual"] = cont.measures(eval_ds.labels, proba)
        metrics.update(method.run_metrics(model, eval_ds, proba, s) if method is not None else {})  # e.g. distill: teacher vs student
    else:
        proba, split_name = None, None
    if target_test is not None:
        t = time.perf_counter()
        metrics["target_test"] = classification_metrics(target_test.labels, model.predict_proba(target_test, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache and trained == "linear"), classes)
        if target_before is not None:
            metrics["target_test_before"] = target_before
        metrics["target_test_source"] = target_test.source
        metrics["domain_gap"] = {**({"before": gap_before} if gap_before else {}), "after": _domain_gap(bb, splits, target_test, s, trained=trained != "linear")}
        timings["target_test"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    model.metrics = metrics
    if save:
        run_dir = new_run_dir(out, name=f"{backbone.replace(':', '_').replace('/', '_')}-{tr.strategy}", overwrite=o.overwrite)
        model.save(run_dir)
        write_config(run_dir, config)
        for name, content in (method.run_files() if method is not None else {}).items():
            write_json(run_dir / name, content)
        write_history(run_dir, history)
        write_metrics(run_dir, metrics)
        _drop_training_state(run_dir)
        if proba is not None:
            write_predictions(run_dir, [eval_ds.item_name(i) for i in range(len(eval_ds))], eval_ds.labels, proba, classes, split_name)
        log.info("run written to %s", run_dir)
        from .evaluate.report import report_after_fit  # report.html, report.md, plots/; warns, never raises

        report_after_fit(run_dir, model, eval_ds if proba is not None else None)
    return model


# What auto fine-tunes with when augment is not given (explicit strategies default to none): measured
# with 64-px fine-tuning from the probe, light augmentation (random resized crop 0.8-1, flip) took
# BreastMNIST from 0.814 (probe kept) to 0.853 test accuracy, and left MNIST 5k within noise (0.947
# vs 0.950).
AUTO_AUGMENT = "light"


def _resume(run: str | Path, *, progress: bool, data: Any = None):
    """Continue the killed run in folder ``run`` from ``run/checkpoints/last.ckpt`` with its own settings."""
    from .errors import RunFolderError

    run = Path(run)
    cfg_path = run / "config.yaml"
    if (run / "model.json").exists():
        raise RunFolderError(f"{str(run)!r} holds a finished run: there is nothing to resume. Start a new run with --out.")
    if not cfg_path.is_file():
        raise RunFolderError(f"{str(run)!r} has no config.yaml: it is not a run folder written by 'headstart fit' (check the path).")
    data_given, settings = read_config(cfg_path)
    data = data if data is not None else data_given  # e.g. the same in-memory dataset again
    if data is None:
        raise RunFolderError(f"{str(run)!r} was trained on in-memory data; resume it from Python: fit(data, resume={str(run)!r}).")
    log.info("resuming %s", run)
    return fit(data, settings, out=str(run), progress=progress, overwrite=False)


def _resuming(run_dir: Path | None) -> bool:
    return run_dir is not None and (run_dir / "checkpoints" / "last.ckpt").is_file()


def _drop_training_state(run_dir: Path) -> None:
    """A finished run keeps no checkpoints or activation files (the model is model.safetensors + model.json)."""
    import shutil

    for name in ("checkpoints", "activations"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _secondary_rank() -> bool:
    """True in the worker processes of a multi-process run (Lightning/torchrun set RANK or LOCAL_RANK)."""
    return any(int(os.environ.get(v, "0") or 0) > 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _auto(bb, splits, s: Settings, cw, timings: dict[str, float], budget, train_size: int | None = None) -> dict[str, Any]:
    """Fit the probe, then choose: ``{"strategy", "reason", "probe_val_acc", "probe": (head, history), ...}``.

    Fine-tuning starts from a probe and keeps it unless an epoch beats it on validation
    (:mod:`headstart.train.selection`). When it trains at a smaller input size than the probe's
    (``train_size``; small images: 2x instead of 4x their side), it starts from a probe fit at that
    size, and the probe at the larger size (``"wide_probe"``) stays a candidate: fit keeps whichever
    of it and the fine-tuned model is better on validation (:func:`_keep_wide_probe`). So without a
    time limit ``auto`` does not lose to the probe on validation. With one, it fine-tunes only if at
    least one epoch fits in what is left.
    """
    from .train.budget import epoch_seconds
    from .train.freeze import num_groups
    from .train.recipes import choose_auto

    epochs = s.training.epochs
    if splits.train.modality == "text":
        from .train.text_recipe import text_epochs
        epochs = text_epochs(epochs)

    probe = _fit_linear(bb, splits, s, cw, timings)
    score = _val_score(bb, probe[0], splits, s, cw)
    per_class = int(np.bincount(splits.train.labels, minlength=len(splits.classes)).min())
    strategy, reason = choose_auto(per_class, score.acc if score else None, num_groups(bb))
    if splits.train.modality == "text":  # few labeled texts: SetFit's regime (train.setfit.auto_setfit)
        from .train.setfit import auto_setfit
        strategy, reason = auto_setfit(strategy, reason, per_class, score is not None, num_groups(bb))
    out = {"strategy": strategy, "reason": reason, "probe_val_acc": score.acc if score else None, "min_train_per_class": per_class, "probe": probe}
    size = int(bb.preprocessing.input_size[0]) if splits.train.modality == "image" else None
    if strategy != "linear" and score is not None and train_size is not None and train_size != size:
        # fine-tune at the training size, from a probe fit there; the probe at the probe's size stays a candidate
        out["wide_probe"] = (probe[0], score, size, {k: v.detach().clone() for k, v in bb.state_dict().items()}, bb.provenance)
        out["wide_history"] = probe[1]
        bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(train_size, train_size))
        probe = _fit_linear(bb, splits, s, cw, timings)
        score = _val_score(bb, probe[0], splits, s, cw)
        out.update(probe=probe, probe_sizes={"probe_px": size, "train_px": train_size, "train_probe_val_acc": score.acc})
    left = budget.left(_reserve_seconds(splits, timings, budget))
    if strategy not in ("linear", "setfit") and left is not None:  # setfit keeps to the time limit itself
        t = time.perf_counter()
        n_val = len(splits.val) if splits.val is not None else 0
        if splits.train.modality == "text":
            from .train.text_recipe import text_epoch_seconds
            per_epoch = text_epoch_seconds(bb, splits, batch_size=s.training.batch_size)
        else:
            per_epoch = epoch_seconds(bb, probe[0], (3, *bb.preprocessing.input_size), len(splits.train), n_val, batch_size=s.training.batch_size)
        left = max(0.0, left - (time.perf_counter() - t))
        fits = int(left // per_epoch) if per_epoch > 0 else epochs
        out.update({"time_left_s": round(left, 1), "epoch_estimate_s": round(per_epoch, 1)})
        if fits < 1:
            out.update(strategy="linear", reason=f"{reason}, but one fine-tuning epoch takes about {per_epoch:.0f} s and {left:.0f} s of the time limit are left")
            if "wide_probe" in out:  # back to the probe at the probe's size
                wide_head, score, size, _, _ = out.pop("wide_probe")
                out["probe"] = (wide_head, out.pop("wide_history"))
                bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(size, size))
        else:
            out.update(epochs=min(epochs, fits), reason=f"{reason}; {min(epochs, fits)} epoch(s) of about {per_epoch:.0f} s fit in the {left:.0f} s left of the time limit")
    if out["strategy"] != "linear" and score is not None:
        out["probe_score"] = (probe[0], score)  # fine-tuning starts from this probe (not fit twice)
    return out


def _create_method(s: Settings):
    """The method of ``s`` (``None`` without one); only the training loop runs methods."""
    if s.method.name is None:
        return None
    from .methods import NEEDS, create_method

    method = create_method(s.method.name, s.method.options)
    if s.training.strategy == "linear":  # a continual run cannot use auto (it would refit the old head): not offered
        raise HeadstartError(f"Method {s.method.name!r} trains through the loop, and strategy 'linear' fits a probe on frozen features "
                             f"without it. Fix: use --strategy finetune, progressive{'' if method.continual else ' or auto'}.")
    for need in method.needs:  # before any work: a missing input is named with its fix
        spec = NEEDS[need]
        if getattr(s.data, spec.setting) is None:
            raise HeadstartError(f"Method {s.method.name!r} needs {spec.what}. Fix: pass {spec.flag} DATA "
                                 f"(Python: {spec.setting}=...).")
    return method


def _continuation(s: Settings, method):
    """The old run a fit continues (``--from``), or ``None``; a continual method or --old-data without --from is an error."""
    if s.data.from_run is None:
        if method is not None and method.continual:
            raise HeadstartError(f"Method {method.name!r} keeps an old task while learning a new one, and continues a finished run. "
                                 "Fix: pass --from RUN (Python: from_run=...), the run folder of the old task.")
        if s.data.old_data is not None:
            raise HeadstartError("--old-data is the old task's data of a continued run. Fix: add --from RUN (or drop --old-data).")
        return None
    from .continual import Continuation

    return Continuation.open(s, method)


def _check_unused_inputs(s: Settings, method) -> None:
    """A data input that no method of the run reads is a mistake to report, not to ignore."""
    from .methods import NEEDS, list_methods, method_class

    used = {NEEDS[n].setting for n in ((*method.needs, *method.optional_needs) if method is not None else ())}
    for need, spec in NEEDS.items():
        if getattr(s.data, spec.setting) is not None and spec.setting not in used:
            users = [name for name in list_methods() if need in (*method_class(name).needs, *method_class(name).optional_needs)]
            raise HeadstartError(f"{spec.flag} is read by method(s) {', '.join(users)}, and this run has "
                                 f"{'method ' + repr(s.method.name) if s.method.name else 'no method'}. "
                                 f"Fix: add --method {users[0]} (or drop {spec.flag}).")


def _load_inputs(method, s: Settings, splits) -> None:
    """Load each of the method's ``needs`` with the data checks and attach it to the method."""
    from .data import align_classes, load_domain
    from .methods import NEEDS

    if method is None or not method.inputs(s.data):
        return
    if splits.train.modality != "image":
        raise HeadstartError(f"Method {method.name!r} trains an image backbone on extra image data; this data holds texts. "
                             "Fix: run it on image data, or drop --method.")
    for need in method.inputs(s.data):
        spec = NEEDS[need]
        role = spec.flag.lstrip("-").replace("-", " ") + " data"
        ds = load_domain(getattr(s.data, spec.setting), role=role, seed=s.training.seed, strict=s.data.strict, modality=splits.train.modality)
        method.attach(need, align_classes(ds, splits.classes, role=role))
        log.info("%s: %d item(s) from %s", role, len(ds), ds.source)


def _load_target_test(s: Settings, splits):
    """The labeled target test set (``--target-test``) on the source's classes, or ``None``."""
    if s.data.target_test is None:
        return None
    from .data import align_classes, is_labeled, load_domain

    ds = load_domain(s.data.target_test, role="target test", seed=s.training.seed, strict=s.data.strict, modality=splits.train.modality)
    if not is_labeled(ds):
        raise HeadstartError(f"--target-test needs labeled data to score against, and {ds.source} has no labels. Fix: give a folder of "
                             "class folders (or a labeled .npz/.csv), or pass the unlabeled images as --target.")
    return align_classes(ds, splits.classes, role="target test")


def _head_metrics(bb, head_mod, ds, s: Settings, classes) -> dict[str, Any]:
    """The metrics of ``head_mod`` on ``bb``'s (cached) features of ``ds``: a probe's figures before the backbone trains."""
    import torch

    from .evaluate.metrics import classification_metrics
    from .features import extract_features

    x = extract_features(bb, ds, batch_size=s.training.batch_size, runtime=s.backbone.runtime, cache=s.backbone.cache, progress=False)
    with torch.no_grad():
        proba = torch.softmax(head_mod.eval()(torch.as_tensor(x, dtype=torch.float32)), 1).numpy()
    head_mod.train()
    return classification_metrics(ds.labels, proba, classes)


def _eval_split(splits):
    """The split a run is scored on: test, else validation (may be ``None`` or empty)."""
    return splits.test if splits.test is not None and len(splits.test) else splits.val


def _domain_gap(bb, splits, target, s: Settings, *, trained: bool = False) -> dict[str, Any]:
    """:func:`headstart.gap.run.run_gap` between the source's evaluation split (else train) and ``target``."""
    from .gap.run import run_gap

    source = _eval_split(splits)
    return run_gap(bb, source if source is not None and len(source) else splits.train, target, batch_size=s.training.batch_size,
                   runtime=s.backbone.runtime, cache=s.backbone.cache, seed=s.training.seed, trained=trained)


def _val_score(bb, head_mod, splits, s: Settings, cw):
    """The head's validation :class:`~.train.selection.Score` on ``bb``'s (cached) features; ``None`` without a validation split."""
    if splits.val is None or not len(splits.val):
        return None
    from .features import extract_features

    x_val = extract_features(bb, splits.val, batch_size=s.training.batch_size, runtime=s.backbone.runtime, cache=s.backbone.cache, progress=False)
    return _head_score(head_mod, x_val, splits.val.labels, cw)


def _keep_wide_probe(bb, head_mod, trained: str, auto_choice: dict, loop_info: dict, history: list[dict]):
    """``auto`` trained at a smaller size than its first probe: keep that probe instead when it is better on
    validation than what training kept (:func:`~.train.selection.better`); restores the pretrained
    backbone and the probe's input size then. Returns ``(head, strategy trained)``; says why in
    ``auto_choice["final"]``."""
    from .train.selection import Score, better, why

    wide_head, wide_score, size, state, provenance = auto_choice.pop("wide_probe")
    best = loop_info.get("best_epoch")
    if trained == "linear" or best == -1:
        kept = auto_choice["probe_score"][1] if "probe_score" in auto_choice else None
    else:
        row = next((r for r in history if r.get("epoch") == best and r.get("val_acc") is not None), None)
        kept = Score(row["val_acc"], row["val_loss"], wide_score.n) if row else None
    if kept is None:
        return head_mod, trained
    px = int(bb.preprocessing.input_size[0])
    auto_choice["final"] = why(wide_score, kept, new_name=f"the linear probe at {size} px", old_name=f"the {trained} result at {px} px")
    log.info("auto: %s", auto_choice["final"])
    if not better(wide_score, kept):
        return head_mod, trained
    bb.load_state_dict(state)
    bb.provenance = provenance
    bb.preprocessing = dataclasses.replace(bb.preprocessing, input_size=(size, size))
    loop_info["kept"] = auto_choice["final"]
    return wide_head, "linear"


def _reserve_seconds(splits, timings: dict[str, float], budget) -> float:
    """Seconds to keep, under a time limit, for what follows training: predicting the evaluation split
    with the trained backbone (export and verification included) and writing the report; at most a
    quarter of the limit."""
    n_eval = len(splits.test) if splits.test is not None and len(splits.test) else (len(splits.val) if splits.val is not None else 0)
    n_feat = len(splits.train) + (len(splits.val) if splits.val is not None else 0)
    per_item = timings.get("features", 0.0) / max(n_feat, 1)
    return min(0.25 * (budget.limit or 0.0), RESERVE_FIXED_S + RESERVE_EVAL_FACTOR * per_item * n_eval)


# Measured on the 2-core CPU, EfficientNet-Lite0 fine-tuned at 112 px: exporting and verifying the
# fine-tuned backbone plus the report took 8-14 s; predicting a split costs about twice the probe's
# extraction rate (a fresh export is compiled once, not cached).
RESERVE_FIXED_S = 15.0
RESERVE_EVAL_FACTOR = 2.0


def _head_score(head_mod, x, y, cw=None):
    import torch

    from .train.selection import Score

    with torch.no_grad():
        logits = head_mod.eval()(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        yt = torch.as_tensor(np.asarray(y))
        loss = float(torch.nn.functional.cross_entropy(logits, yt, weight=None if cw is None else torch.as_tensor(cw, dtype=torch.float32)))
    return Score(float((logits.argmax(1) == yt).float().mean()), loss, len(yt))


def _class_weights(labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return (len(labels) / (k * np.maximum(counts, 1))).astype(np.float32)


def _fit_linear(bb, splits, s: Settings, cw, timings: dict[str, float]):
    """The head of ``s.head`` fit on ``bb``'s (cached) features of the training split, chosen on validation."""
    from .features import extract_features
    from .heads import fit_head
    from .train.recipes import default_lr

    b, h, tr = s.backbone, s.head, s.training
    t = time.perf_counter()
    x_tr = extract_features(bb, splits.train, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache, progress=s.output.progress)
    x_val = (extract_features(bb, splits.val, batch_size=tr.batch_size, runtime=b.runtime, cache=b.cache, progress=s.output.progress)
             if splits.val is not None and len(splits.val) else None)
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    kind = "linear" if h.kind == "logreg" else h.kind
    head_mod, history = fit_head(
        kind, x_tr, splits.train.labels, x_val, splits.val.labels if x_val is not None else None,
        num_classes=len(splits.classes), seed=tr.seed, class_weight=cw,
        **({"hidden": h.hidden, "dropout": h.dropout, "epochs": max(tr.epochs, 50), "lr": default_lr(tr.lr), "patience": tr.patience} if kind == "mlp" else {}),
    )
    timings["head"] = time.perf_counter() - t
    return head_mod, history


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"headstart": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version()}
