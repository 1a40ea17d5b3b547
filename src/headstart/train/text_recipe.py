r"""Fine-tuning a text encoder with a classification head, through the one training loop.

The recipe of the BERT / ULMFiT papers, on :func:`headstart.train.train_classifier`:

1. **Encoder frozen.** The head (``dropout_linear``: dropout on the pooled output, then a linear
   layer; Devlin et al., 2019) is trained on the frozen encoder's features. They are extracted once
   through the fast, cached path (:func:`headstart.features.extract_features`), so this stage
   costs one pass over the data, not ``head_epochs`` passes.
2. **Progressive unfreezing from the top** (Howard & Ruder, 2018, ULMFiT). Encoder and head then
   train together: AdamW with the encoder at ``backbone_lr`` (default :math:`2\cdot10^{-5}`) and
   the head at ``lr``, each stage with its own warm-up and cosine decay (a plan of
   :class:`headstart.train.Stage` s run by the one loop, so the freeze state is checkpointed with it). With
   :math:`G` layer groups ``[embeddings, layer.0 .. layer.N-1, rest]`` and :math:`E` epochs, epoch
   :math:`e` (0-based) trains the top

   .. math:: n_e = \min\bigl(G,\ (e + 1)\,\lceil G / E \rceil\bigr)

   groups, so the top layers move first and the whole encoder trains in the last epoch
   (``unfreeze=N`` caps :math:`n_e` at :math:`N`: the bottom groups then stay frozen).

Batches are tokenized in the ``DataLoader``'s collate function (``backbone.collate``); the
training module passes the token dict to ``backbone.forward`` as it is. **Sequence-length
bucketing** (:class:`LengthGroupedSampler`): a batch is padded to its longest text, so training
batches are drawn from texts of similar token length (each text once per epoch, in a seeded random
order of groups), and validation runs longest first; the token counts come from the tokenizer, once.
Measured on Rotten Tomatoes' training split, batches of 64 (``benchmarks/text_strategies.py
--bucketing``): 498,674 token positions per epoch shuffled vs 251,116 bucketed (242,074 real tokens:
51.5% padding vs 3.6%), and a MiniLM-L6 training step 29.8 s vs 16.8 s on average (10 steps of each,
interleaved, on a shared 2-core CPU under a load of ~10: the ratio, 0.56, is the figure to keep).
``max_time`` (``fit --time-limit``) stops stage 2 between steps, with the best weights so far.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from ..errors import HeadstartError
from .strategies import Stage

log = logging.getLogger("headstart")

#: Encoder learning rate for text fine-tuning (BERT's range is 2e-5 .. 5e-5).
TEXT_BACKBONE_LR = 2e-5
#: Dropout on the pooled output before the linear layer (BERT's value).
TEXT_HEAD_DROPOUT = 0.1


def unfreeze_from_top_plan(n_groups: int, epochs: int, lr: float, backbone_lr: float, *, limit: int | None = None) -> list[Stage]:
    """The stages of step 2: epoch ``e`` trains the top ``min(G, limit, (e + 1) * ceil(limit / E))``
    groups (consecutive epochs with the same count are one stage), every group at ``backbone_lr``."""
    limit = n_groups if limit is None else int(limit)
    step = math.ceil(limit / epochs)
    counts = [min(n_groups, limit, (e + 1) * step) for e in range(epochs)]
    stages: list[Stage] = []
    for n in counts:
        if stages and stages[-1].unfreeze == n:
            stages[-1] = dataclasses.replace(stages[-1], epochs=stages[-1].epochs + 1)
        else:
            stages.append(Stage(f"unfreeze{n}", 1, n, float(lr), (float(backbone_lr),) * n_groups))
    return stages


def token_lengths(backbone, texts) -> np.ndarray:
    """Tokens per text (after truncation at the backbone's max length), from its tokenizer."""
    ids, _ = backbone.encode_ids([str(t) for t in texts])
    return np.asarray([len(x) for x in ids], dtype=np.int64)


def length_grouped_indices(lengths: np.ndarray, batch_size: int, generator: torch.Generator, mega_batch_mult: int = 50) -> list[int]:
    """Every index once, so that each run of ``batch_size`` consecutive indices holds texts of similar length.

    The algorithm of Hugging Face's ``get_length_grouped_indices`` (``transformers.trainer_pt_utils``,
    the Trainer's ``group_by_length``), written here because importing that module costs ~12 s of
    start-up on this CPU: a seeded random permutation, cut into mega-batches of
    ``min(50, n // (4 * batch_size)) * batch_size`` items, each sorted by length (longest first); the
    mega-batch holding the longest text goes first. A new permutation each call (each epoch).
    """
    n = len(lengths)
    mult = max(1, min(n // (batch_size * 4), mega_batch_mult))
    perm = torch.randperm(n, generator=generator).numpy()
    size = mult * batch_size
    megas = [perm[i : i + size] for i in range(0, n, size)]
    megas = [m[np.argsort(-lengths[m], kind="stable")] for m in megas]
    if megas:
        top = int(np.argmax([lengths[m[0]] for m in megas]))
        megas[0], megas[top] = megas[top], megas[0]
    return [int(i) for m in megas for i in m]


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A ``DataLoader`` sampler of :func:`length_grouped_indices` (training: a new order each epoch)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = np.asarray(lengths), int(batch_size), generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.generator))


def padded_tokens(lengths: np.ndarray, order, batch_size: int) -> int:
    """Token positions the batches of ``order`` (consecutive runs of ``batch_size``) carry, padding included."""
    order = np.asarray(list(order))
    return int(sum(lengths[order[i : i + batch_size]].max() * len(order[i : i + batch_size]) for i in range(0, len(order), batch_size)))


def text_loaders(backbone, splits, batch_size: int, seed: int, *, bucket: bool = True) -> tuple[Any, Any]:
    """Training (seeded, shuffled; ``bucket``: by length groups) and validation (``bucket``: longest first)
    loaders of ``(token dict, labels)`` batches."""
    from torch.utils.data import DataLoader

    from ..data import TorchDataset

    g = torch.Generator().manual_seed(seed)
    identity = str
    train_ds = TorchDataset(splits.train, identity)
    if bucket:
        sampler = LengthGroupedSampler(token_lengths(backbone, splits.train.items), batch_size, g)
        train = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, collate_fn=backbone.collate)
    else:
        train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=g, collate_fn=backbone.collate)
    val = None
    if splits.val is not None and len(splits.val):
        order = None
        if bucket:  # validation loss and accuracy do not depend on the order: longest first, the least padding
            order = [int(i) for i in np.argsort(-token_lengths(backbone, splits.val.items), kind="stable")]
        val = DataLoader(TorchDataset(splits.val, identity), batch_size=batch_size, sampler=order, collate_fn=backbone.collate)
    return train, val


#: Epochs of text fine-tuning when ``--epochs`` is left at its default (20, the image loops': on Rotten
#: Tomatoes' 8,966 texts that is hours on 2 cores). Chosen on the two full-data runs of
#: benchmarks/results/text_finetune_rotten_tomatoes.json (seed 0, shared 2-core CPU under load): 1 epoch
#: (every group trains in it) reached validation accuracy 0.805 (test 0.813) in 899 CPU seconds, while
#: the 3-epoch plan under --time-limit 900 stopped after its first epoch (top 3 groups) at validation
#: 0.767, below the stage-1 head's 0.774. Only these two: no lr sweep (the encoder stays at BERT's
#: 2e-5) and no longer runs could be afforded; no max-length cap either (no Rotten Tomatoes text
#: exceeds 72 tokens, so the max length, 256, costs nothing there once batches are bucketed).
TEXT_EPOCHS = 1


def text_epochs(epochs: int) -> int:
    """Stage-2 epochs: ``epochs``, or :data:`TEXT_EPOCHS` when it is the settings' default (``TrainingSettings.epochs``; logged)."""
    from ..settings import TrainingSettings

    if int(epochs) != int(TrainingSettings.__dataclass_fields__["epochs"].default):
        return int(epochs)
    log.info("text fine-tuning: %d epochs (the text default; --epochs N to change)", TEXT_EPOCHS)
    return TEXT_EPOCHS


#: Feature rows per step of stage 1 (the head on cached features). It was 32: on Rotten Tomatoes (8,966
#: training texts) an epoch of those 281 steps took 57 s on the shared, loaded 2-core CPU, the loop's
#: per-step cost, not the head's arithmetic; 256 cuts the steps eightfold.
HEAD_BATCH = 256
#: Fewest seconds worth starting stage 2 for under a time limit (a few steps of MiniLM-L6 on 2 cores).
MIN_TRAIN_S = 10.0


def encode_reserve(bb, splits, batch_size: int, runtime: str = "auto") -> float:
    """Seconds to keep, under a time limit, for what follows stage 2: exporting the fine-tuned encoder
    (:data:`headstart.train.setfit.EXPORT_RESERVE_S`; none with ``runtime="torch"``) and the validation and test texts' features (an
    eager forward pass of a batch of training texts, timed here and scaled; the ONNX path is faster:
    an upper bound)."""
    from .setfit import EXPORT_RESERVE_S

    texts = [str(x) for x in splits.train.items[: max(2, min(batch_size, 32))]]
    n = sum(len(d) for d in (splits.val, splits.test) if d is not None)
    x = bb.tokenize(texts, warn=False)
    t = time.perf_counter()
    with torch.inference_mode():
        bb.eval()(x)
    return (0.0 if runtime == "torch" else EXPORT_RESERVE_S) + (time.perf_counter() - t) / len(texts) * n


def text_epoch_seconds(bb, splits, *, batch_size: int) -> float:
    """Estimated seconds of one stage-2 epoch with every layer group trainable, plus its validation pass:
    a training step on a batch of training texts of median token length (bucketed batches are about
    that long), after one warm-up step, scaled to the training split (``headstart.train.budget.VAL_COST``
    for validation)."""
    from .budget import VAL_COST

    b = max(2, min(int(batch_size), len(splits.train)))
    lengths = token_lengths(bb, splits.train.items)
    pick = np.argsort(np.abs(lengths - np.median(lengths)), kind="stable")[:b]
    x = bb.tokenize([str(splits.train.items[i]) for i in pick], warn=False)
    flags = [(p, p.requires_grad) for p in bb.parameters()]
    was = bb.training
    try:
        bb.eval()
        for p, _ in flags:
            p.requires_grad_(True)
        for _ in range(2):
            t = time.perf_counter()
            bb(x).sum().backward()
            step = time.perf_counter() - t
    finally:
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)
        bb.train(was)
    n_val = len(splits.val) if splits.val is not None else 0
    return step / b * (len(splits.train) + VAL_COST * n_val)


def fit_text_finetune(
    bb,
    splits,
    *,
    seed: int,
    class_weights: np.ndarray | None,
    batch_size: int,
    epochs: int,
    lr: float,
    backbone_lr: float | None,
    patience: int | None,
    progress: bool,
    dropout: float | None,
    timings: dict[str, float],
    runtime: str = "auto",
    cache: bool = True,
    head_epochs: int = 20,
    unfreeze: int | str | None = None,
    method: Any = None,
    max_time: float | None = None,
    bucket: bool = True,
) -> tuple[torch.nn.Module, list[dict]]:
    """Stage 1 (head on frozen, cached features) then stage 2 (progressive unfreezing); see the module doc.
    ``method``: a :class:`headstart.methods.Method` used in both stages. ``max_time``: seconds for this
    call; stage 2 gets what stage 1 left, less :func:`encode_reserve` (the fine-tuned encoder's export
    and the validation and test texts' features, after training), and is skipped when nothing is left
    (the head on the frozen encoder is then the model). ``bucket``: sequence-length bucketing.

    Returns ``(head, history)``; ``bb`` is trained in place (its provenance then says so and its
    weights hash is reset, so feature caches no longer match it).
    """
    from ..features import extract_features
    from ..heads import create_head, feature_loader
    from .loop import train_classifier

    hooks = method.loop_hooks() if method is not None else {}

    if not list(bb.parameters()) or not bb.layer_groups():
        raise HeadstartError(
            f"Backbone {bb.name!r} has no trainable layers (an ONNX graph), so it cannot be fine-tuned; "
            "use --strategy linear with it, or fine-tune 'minilm_l6' or an 'hf:' model."
        )
    head = create_head("dropout_linear", bb.num_features, len(splits.classes), dropout=TEXT_HEAD_DROPOUT if dropout is None else dropout)
    has_val = splits.val is not None and len(splits.val) > 0
    cw = None if class_weights is None else torch.as_tensor(class_weights)

    t = t_call = time.perf_counter()
    x_tr = torch.from_numpy(extract_features(bb, splits.train, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress))
    head.norm.fit_(x_tr)
    y_tr = torch.as_tensor(splits.train.labels)
    val_feats = None
    if has_val:
        x_val = torch.from_numpy(extract_features(bb, splits.val, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress))
        val_feats = feature_loader(x_val, torch.as_tensor(splits.val.labels), batch_size=1024)
    stage1 = train_classifier(
        None, head, feature_loader(x_tr, y_tr, batch_size=HEAD_BATCH, shuffle=True), val_feats, epochs=head_epochs, lr=1e-3,
        class_weights=cw, patience=5 if has_val else None, seed=seed, **hooks,
    )
    timings["head"] = time.perf_counter() - t

    t = time.perf_counter()
    n_groups = len(bb.layer_groups())
    limit = n_groups if unfreeze in (None, "all") else int(unfreeze)
    if not 1 <= limit <= n_groups:
        raise HeadstartError(f"unfreeze must be between 1 and {n_groups} (the layer groups of {bb.name!r}) or 'all'; got {unfreeze!r}.")
    left = None
    if max_time is not None:
        left = max_time - (time.perf_counter() - t_call) - encode_reserve(bb, splits, batch_size, runtime)
        if left < MIN_TRAIN_S:
            log.info("text fine-tuning: %.0f s of the time limit left after the head, less the time kept for the "
                     "fine-tuned encoder's export and features: the encoder stays frozen", max(left, 0.0))
            timings["train"] = 0.0
            bb.eval()
            head.eval()
            return head, [{**row, "stage": 0, "stage_name": "head (encoder frozen)", "unfrozen_groups": 0} for row in stage1.history]
    train_loader, val_loader = text_loaders(bb, splits, batch_size, seed, bucket=bucket)
    stages = unfreeze_from_top_plan(n_groups, epochs, lr, TEXT_BACKBONE_LR if backbone_lr is None else backbone_lr, limit=limit)
    was = [(p, p.requires_grad) for p in bb.parameters()]
    try:
        stage2 = train_classifier(
            bb, head, train_loader, val_loader, lr=lr, stages=stages, class_weights=cw,
            patience=patience if val_loader is not None else None, seed=seed, progress=progress, max_time=left, **hooks,
        )
    finally:
        for p, flag in was:
            p.requires_grad_(flag)
    timings["train"] = time.perf_counter() - t
    parts = getattr(bb, "parts", None)
    if parts is not None:  # a hybrid extracts part by part, under each part's fingerprint: the trained parts' hashes go
        for part in parts:
            if list(part.parameters()) and part.layer_groups():
                part.provenance = dataclasses.replace(part.provenance, source=f"{part.provenance.source} +finetune", weights_sha256=None)
        bb.refresh()
    else:
        bb.provenance = dataclasses.replace(bb.provenance, source=f"{bb.provenance.source} +finetune", weights_sha256=None)
    bb.eval()
    head.eval()
    # One history: stage 0 is the head on the frozen encoder, then the unfreezing stages.
    history = [{**row, "stage": 0, "stage_name": "head (encoder frozen)", "unfrozen_groups": 0} for row in stage1.history]
    history += [{**row, "stage": row["stage"] + 1, "epoch": len(stage1.history) + row["epoch"]} for row in stage2.history]
    return head, history
