"""What ``headstart.fit`` runs for the strategies trained in the loop: finetune, progressive, auto.

:func:`build_plan` turns a strategy and its options into a plan of stages (:mod:`.strategies`);
:func:`fit_in_loop` builds the data loaders (augmented, or the activation cache of the frozen
prefix), runs :func:`~headstart.train.train_classifier` and returns the head, the history and
what was done; :func:`choose_auto` is the rule behind ``strategy="auto"``.

With the ``logreg`` head, fine-tuning starts from the linear probe (LP-FT; Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
arXiv:2202.10054): the head is first fit exactly (L-BFGS logistic regression) on the frozen
features, so the first gradient steps into the backbone come from a good head rather than a random
one. The features come from the activation cache (one forward pass of the top) when there is one,
else from the fast extraction runtime.

BatchNorm statistics stay fixed by default (``train_bn=False``: every BN layer normalises with its
running statistics, its affine parameters still train): with batches of 64 digits, letting the
unfrozen BN layers use batch statistics moved EfficientNet-Lite0's features so far from the ones
the probe was fit on that the validation loss went from 0.17 to 220 in one epoch (at lr 1e-4);
with the statistics fixed it stayed near 0.2.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import HeadstartError
from .augment import Augment
from .freeze import num_groups, resolve_unfreeze
from .selection import Score, resolve_keep
from .strategies import Stage, finetune_plan, frozen_prefix, progressive_plan, recipe_plan

log = logging.getLogger("headstart")

# auto: below this many training items per class, or at/above this linear-probe validation accuracy,
# fine-tuning has little to gain and much to overfit; the probe is kept.
AUTO_MIN_PER_CLASS = 20

# Discriminative learning rates of fine-tuning: the top layer group at BACKBONE_LR_RATIO times the
# head's rate, each group below LR_DECAY times the one above. Measured on MNIST 5k (1,000 training
# digits, EfficientNet-Lite0, 64 px, 6 epochs of the recipe from the probe): 0.5 / 0.85 gave 0.936
# test accuracy (probe 0.89), while 0.1 / 0.7 left the lower groups nearly still (the lowest at
# 4e-6) and ended at 0.893.
BACKBONE_LR_RATIO = 0.5
LR_DECAY = 0.85
# The head's learning rate when none is given. Fine-tuning a pretrained image backbone: 2e-3 (so the
# top group at 1e-3). Measured on MNIST 5k (1,000 training digits, Lite0 at 56 px, the recipe from
# the probe, 10 epochs, light augmentation, idle 2-core CPU): 2e-3 gave 0.9634 test accuracy in
# 261 s, 1e-3 gave 0.9549 in 237 s (probe 0.9109); on BreastMNIST 2e-3 gave 0.872 / AUC 0.892 in
# 123 s. Everything else (heads on cached features, text, training from scratch) keeps 1e-3.
HEAD_LR = 1e-3
FINETUNE_LR = 2e-3
AUTO_GOOD_ENOUGH = 0.98


def default_lr(lr: float | None, *, finetune_pretrained: bool = False) -> float:
    """``lr`` if given, else :data:`FINETUNE_LR` when fine-tuning a pretrained image backbone, :data:`HEAD_LR` otherwise."""
    if lr is not None:
        return float(lr)
    return FINETUNE_LR if finetune_pretrained else HEAD_LR


def build_plan(
    strategy: str, n_groups: int, *, epochs: int, lr: float, unfreeze: int | str | None = None,
    backbone_lr: float | None = None, lr_decay: float = LR_DECAY, freeze_epochs: int = 1,
) -> tuple[list[Stage], bool]:
    """``(stages, stop_on_plateau)`` for ``finetune`` (``unfreeze=None``: the default recipe) or ``progressive``.

    The top layer group trains at ``backbone_lr`` (default ``BACKBONE_LR_RATIO * lr``) and each group below at
    ``lr_decay`` times the one above; ``progressive`` runs ``epochs`` per stage at most.
    """
    try:
        n = resolve_unfreeze(unfreeze, n_groups) if unfreeze is not None else None
    except ValueError as e:
        raise HeadstartError(f"{e} Fix: pass --unfreeze between 0 and {n_groups}, or --unfreeze all.") from None
    if n_groups == 0 and strategy in ("finetune", "progressive") and unfreeze not in (None, 0, "0"):
        raise HeadstartError("This backbone has no layer groups to unfreeze; use --strategy linear.")
    ratio = (backbone_lr / lr) if backbone_lr is not None else BACKBONE_LR_RATIO
    if strategy == "progressive":
        return progressive_plan(n_groups, epochs, lr, max_unfreeze=n, backbone_ratio=ratio, decay=lr_decay), True
    if strategy == "finetune":
        if n is None:
            return recipe_plan(n_groups, epochs, lr, freeze_epochs=freeze_epochs, backbone_ratio=ratio, decay=lr_decay), False
        return finetune_plan(n_groups, n, epochs, lr, backbone_ratio=ratio, decay=lr_decay), False
    raise HeadstartError(f"No training plan for strategy {strategy!r}.")


def choose_auto(n_train_per_class: int, probe_val_acc: float | None, n_groups: int) -> tuple[str, str]:
    """``(strategy, reason)``: ``linear`` for tiny data, a near-perfect probe, no validation split or no
    layer groups; otherwise ``finetune`` (the recipe, from the probe: it keeps the probe unless an epoch
    beats it on validation). ``finetune`` rather than ``progressive``: on MNIST 5k (1,000 training
    digits, EfficientNet-Lite0, 64 px) the recipe gained 5.5 points over the probe in 4 minutes,
    while progressive spends its first stages on the top groups alone (see ``benchmarks/strategies.py``)."""
    if n_groups == 0:
        return "linear", "the backbone has no layer groups to fine-tune"
    if probe_val_acc is None:
        return "linear", "there is no validation split to tell whether fine-tuning helps"
    if n_train_per_class < AUTO_MIN_PER_CLASS:
        return "linear", f"the smallest class has {n_train_per_class} training items (< {AUTO_MIN_PER_CLASS}): fine-tuning would overfit"
    if probe_val_acc >= AUTO_GOOD_ENOUGH:
        return "linear", f"the linear probe already reaches {probe_val_acc:.3f} validation accuracy (>= {AUTO_GOOD_ENOUGH})"
    return "finetune", (
        f"the linear probe reaches {probe_val_acc:.3f} validation accuracy (< {AUTO_GOOD_ENOUGH}) with "
        f"{n_train_per_class}+ training items per class: fine-tuning from it may gain, and keeps the probe if not"
    )


def fit_in_loop(
    bb: Any, splits: Any, settings: Any, *, strategy: str, class_weights: Any, timings: dict[str, float],
    run_dir: Path | None = None, resume: bool = False, max_time: float | None = None, probe: tuple[Any, Score] | None = None,
    method: Any = None, head_init: str = "probe", task_of_class: Any = None,
) -> tuple[Any, list[dict], dict[str, Any]]:
    """Train ``bb`` + a new head on ``splits`` with the plan of ``strategy``; return ``(head, history, info)``.

    ``settings``: a :class:`headstart.settings.Settings` (its head, training, hardware, backbone and
    output groups; ``strategy`` is given apart: ``auto`` passes what it chose). ``class_weights``:
    the per-class weights (``None``: unweighted). ``probe``: a ``(head, validation Score)`` already
    fit on the frozen features (``auto``'s), used as the starting head instead of fitting it again
    (and kept unless an epoch beats its Score; Score ``None``: a start only, e.g. a grown continual head).
    ``max_time``: seconds for the loop. ``method``: a :class:`headstart.methods.Method` whose
    training loss, loss terms and callbacks the loop uses. ``head_init``: ``"probe"`` (LP-FT) or
    ``"random"``. ``task_of_class``: each class's task (task-incremental continual runs, ``--heads separate``).
    """
    tr, hd, hw, bk, out = settings.training, settings.head, settings.hardware, settings.backbone, settings.output
    seed, batch_size, epochs, patience = tr.seed, tr.batch_size, tr.epochs, tr.patience
    lr = default_lr(tr.lr, finetune_pretrained=bb.provenance.source != "random-init")
    unfreeze, backbone_lr, lr_decay, train_bn, activation_cache = tr.unfreeze, tr.backbone_lr, tr.lr_decay, tr.train_bn, tr.activation_cache
    runtime, cache, num_workers = bk.runtime, bk.cache, 0
    from ..data import TorchDataset
    from ..heads import create_head
    from .cache import StagedActivations, cache_activations, can_split
    from .checkpoint import make_loader
    from .loop import train_classifier

    G = num_groups(bb)
    if bb.provenance.source == "random-init" and strategy == "finetune":
        # Training from scratch: the fine-tuning recipe's care (a low, decaying backbone lr, BatchNorm
        # statistics kept, a probe-initialised head) protects pretrained weights, and there are none:
        # every layer trains at the full lr and BatchNorm learns its statistics (measured on the demo's
        # source CNN: 0.92 test accuracy this way, 0.55 with the fine-tuning defaults).
        log.info("random-init backbone: training from scratch (all layers at lr %g, BatchNorm statistics updated)", lr)
        unfreeze = "all" if unfreeze is None else unfreeze
        if backbone_lr is None:
            backbone_lr, lr_decay = lr, 1.0
        train_bn, head_init = True, "random"
    stages, stop_on_plateau = build_plan(strategy, G, epochs=epochs, lr=lr, unfreeze=unfreeze, backbone_lr=backbone_lr, lr_decay=lr_decay, freeze_epochs=tr.freeze_epochs)
    aug = _augment(tr.augment or "none")
    kind = "linear" if hd.kind == "logreg" else "mlp"
    has_val = splits.val is not None and len(splits.val) > 0
    info: dict[str, Any] = {"augment": aug.to_dict(), "activation_cache": None}
    if head_init == "probe":
        # The head fit on the frozen features (logistic regression, or the MLP trained on cached features)
        # is what the plan's head-only stages would train, with the backbone run every step: drop them.
        skipped = [s.name for s in _leading_head_stages(stages)]
        stages = stages[len(skipped):]
        if skipped:
            info["skipped_stages"] = {"stages": skipped, "why": f"the {kind} head was fit on cached features instead"}
    info["stages"] = [s.to_dict() for s in stages]
    k = frozen_prefix(stages, G) if stages else G
    use_cache = bool(stages) and activation_cache and aug.is_identity and k > 0 and can_split(bb, k)
    # Progressive: the frozen prefix shrinks stage by stage; each stage gets the cache at its own boundary.
    bounds = sorted({G - (s.unfreeze or 0) for s in stages if s.unfreeze is not None})
    staged = None
    eval_tf = bb.preprocessing.transform()
    if tr.sampler == "balanced":  # class-balanced batches (train.checkpoint.EpochBalanced); validation batches stay as they are
        make_loader = functools.partial(make_loader, labels=splits.train.labels)
        info["sampler"] = "balanced"
    domains = method.data if method is not None else {}  # a method's extra data (a target domain) runs through the backbone too
    if method is not None:
        method.begin(splits, settings)
    per_item = method is not None and method.indexed  # batches carry item indices: the stage caches' own loaders do not
    if activation_cache and aug.is_identity and has_val and not domains and not per_item and len(bounds) > 1 and all(b == 0 or can_split(bb, b) for b in bounds):
        staged = StagedActivations(bb, TorchDataset(splits.train, eval_tf), TorchDataset(splits.val, eval_tf), batch_size=batch_size,
                                   make_loader=make_loader, seed=seed, disk_dir=run_dir / "activations" if run_dir is not None else None, num_groups=G)
        use_cache = False
        info["activation_cache"] = {"per_stage": bounds[::-1], "of": G}
        log.info("activation cache per stage: each stage runs only the layer groups it trains (boundaries %s of %d)", bounds[::-1], G)
    t = time.perf_counter()
    if use_cache:
        acts_dir = run_dir / "activations" if run_dir is not None else None
        train_ds = cache_activations(bb, k, TorchDataset(splits.train, eval_tf), batch_size=batch_size, disk_dir=acts_dir, num_groups=G)
        val_ds = cache_activations(bb, k, TorchDataset(splits.val, eval_tf), batch_size=batch_size, disk_dir=acts_dir, num_groups=G) if has_val else None
        info["activation_cache"] = {"group": k, "of": G, "seconds": round(time.perf_counter() - t, 3), "megabytes": round((train_ds.nbytes + (val_ds.nbytes if val_ds else 0)) / 1e6, 1)}
        timings["activation_cache"] = time.perf_counter() - t
        num_workers = 0
    else:
        if activation_cache and k > 0 and not aug.is_identity:
            log.info("activation cache off: augmentation %r changes the frozen part's input every epoch", aug.name)
        train_ds = TorchDataset(splits.train, aug.transform(bb.preprocessing))
        val_ds = TorchDataset(splits.val, eval_tf) if has_val else None
    initial = None
    if head_init == "probe" and probe is not None:
        head_mod, initial = copy.deepcopy(probe[0]).train(), probe[1]
        info["head_init"] = {"from": "linear probe (LP-FT), fit before the loop", **({"probe_val_acc": initial.acc, "probe_val_loss": initial.loss} if initial else {})}
    elif head_init == "probe":
        t = time.perf_counter()
        head_mod, score = _probe_head(bb, splits, train_ds if use_cache else None, val_ds if use_cache else None, k if use_cache else 0, kind=kind,
                                      seed=seed, class_weights=class_weights, batch_size=batch_size, runtime=runtime, cache=cache, hidden=hd.hidden, dropout=hd.dropout)
        initial = score
        info["head_init"] = {"from": "linear probe (LP-FT)" if kind == "linear" else "MLP head trained on cached features",
                             **({"probe_val_acc": score.acc, "probe_val_loss": score.loss} if score else {}), "seconds": round(time.perf_counter() - t, 3)}
        timings["probe"] = time.perf_counter() - t
    else:
        head_mod = create_head(kind, bb.num_features, len(splits.classes), hidden=hd.hidden, dropout=hd.dropout)
    if not stages:
        log.info("the plan trains no backbone layer group: the head fit on the frozen features is the result")
        info.update({"steps": 0, "best_epoch": -1, "kept": "the head fit on frozen features (no backbone stage in the plan)"})
        bb.eval()
        return head_mod.eval(), [], info
    train_loader = make_loader(method.items("train", train_ds) if method is not None else train_ds, batch_size, shuffle=True, seed=seed, num_workers=num_workers)
    if domains:
        def domain_ds(ds: Any) -> Any:  # as the training batches: cached activations at the same boundary, or the training transform
            if use_cache:
                return cache_activations(bb, k, TorchDataset(ds, eval_tf), batch_size=batch_size, num_groups=G)
            return TorchDataset(ds, aug.transform(bb.preprocessing))

        method.prepare({need: make_loader(method.items(need, domain_ds(ds)), batch_size, shuffle=True, seed=seed + 1, num_workers=num_workers, labels=None) for need, ds in domains.items()},
                       num_features=bb.num_features, num_classes=len(splits.classes))
        info["method_data"] = {need: len(ds) for need, ds in domains.items()}
    val_loader = make_loader(val_ds, batch_size, shuffle=False, num_workers=num_workers) if val_ds is not None else None
    hooks = method.loop_hooks() if method is not None else {}
    if "keep" not in hooks:  # a method's own rule (domain adaptation: latest) wins
        # auto's "final" compares the end of the schedule with a scored probe; with none (training from scratch, a
        # continued run's grown head) it would keep the last epoch blindly, so auto stays "best" there
        # (tests/test_continual.py: naive and rehearsal runs on the toy sequence).
        keep = tr.keep if tr.keep != "auto" or initial is not None else "best"
        hooks["keep"] = resolve_keep(keep, splits.val.labels if has_val else None, len(splits.classes))
        info["keep"] = hooks["keep"]
    t = time.perf_counter()
    result = train_classifier(
        bb, head_mod, train_loader, val_loader, lr=lr, stages=stages, stop_on_plateau=stop_on_plateau, schedule=tr.schedule,
        class_weights=class_weights, label_smoothing=tr.label_smoothing, clip_grad=tr.clip_grad, start_group=k if use_cache else 0,
        bn_stats_frozen=not train_bn, train_bn=train_bn,
        patience=patience if has_val else None, seed=seed, progress=out.progress, initial=initial,
        log_dir=run_dir / "logs" if run_dir is not None else None, logger=out.logger,
        checkpoint_dir=run_dir / "checkpoints" if run_dir is not None else None, resume=resume,
        accelerator=hw.accelerator, devices=hw.devices, dist=hw.dist, precision=hw.precision, max_time=max_time, staged=staged,
        task_of_class=task_of_class, **hooks,
    )
    timings["train"] = time.perf_counter() - t
    if staged is not None:
        info["activation_cache"]["seconds"] = round(staged.seconds, 3)
    log.info("%s", result.kept)
    info.update({"steps": result.steps, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                 "global_rank": result.global_rank, "kept": result.kept})
    if result.best_epoch != -1:
        # The weights changed in place: their hash is no longer the pretrained file's (feature caches key on it).
        bb.provenance = dataclasses.replace(bb.provenance, source=f"{bb.provenance.source} +{strategy}", weights_sha256=None)
    bb.eval()
    head_mod.eval()
    return head_mod, result.history, info


def _leading_head_stages(stages: list[Stage]) -> list[Stage]:
    out = []
    for s in stages:
        if s.unfreeze != 0:
            break
        out.append(s)
    return out


def _probe_head(bb: Any, splits: Any, train_acts: Any, val_acts: Any, group: int, *, kind: str, seed: int, class_weights: Any,
                batch_size: int, runtime: str, cache: bool, hidden: int, dropout: float) -> tuple[Any, Score | None]:
    """Fit the head (``kind``: logistic regression, or the MLP) on the frozen features; ``(head, validation score)``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from ..heads import fit_head

    def top_features(ds: Any) -> np.ndarray:
        was = bb.training
        bb.eval()
        try:
            with torch.no_grad():
                return torch.cat([bb.forward_from(group, h) for h, _ in DataLoader(ds, batch_size=batch_size)]).numpy()
        finally:
            bb.train(was)

    has_val = splits.val is not None and len(splits.val) > 0
    if train_acts is not None:
        x_tr = top_features(train_acts)
        x_val = top_features(val_acts) if val_acts is not None else None
    else:
        from ..features import extract_features

        x_tr = extract_features(bb, splits.train, batch_size=batch_size, runtime=runtime, cache=cache)
        x_val = extract_features(bb, splits.val, batch_size=batch_size, runtime=runtime, cache=cache) if has_val else None
    y_val = splits.val.labels if x_val is not None else None
    head, _ = fit_head(kind, x_tr, splits.train.labels, x_val, y_val, num_classes=len(splits.classes), seed=seed,
                       class_weight=class_weights, **({"hidden": hidden, "dropout": dropout} if kind == "mlp" else {}))
    score = None
    if x_val is not None:
        with torch.no_grad():
            logits = head.eval()(torch.as_tensor(x_val, dtype=torch.float32))
            y = torch.as_tensor(y_val)
            cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
            loss = float(torch.nn.functional.cross_entropy(logits, y, weight=cw))  # the loop's validation loss
            score = Score(float((logits.argmax(1) == y).float().mean()), loss, len(y))
    head.train()
    return head, score


def _augment(name: str) -> Augment:
    try:
        return Augment.preset(name)
    except ValueError as e:
        raise HeadstartError(f"{e} Fix: --augment none|light|strong.") from None
