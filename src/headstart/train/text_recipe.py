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
training module passes the token dict to ``backbone.forward`` as it is.
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


def text_loaders(backbone, splits, batch_size: int, seed: int) -> tuple[Any, Any]:
    """Training (shuffled, seeded) and validation loaders of ``(token dict, labels)`` batches."""
    from torch.utils.data import DataLoader

    from ..data import TorchDataset

    g = torch.Generator().manual_seed(seed)
    identity = str
    train = DataLoader(TorchDataset(splits.train, identity), batch_size=batch_size, shuffle=True, generator=g, collate_fn=backbone.collate)
    val = None
    if splits.val is not None and len(splits.val):
        val = DataLoader(TorchDataset(splits.val, identity), batch_size=batch_size, collate_fn=backbone.collate)
    return train, val


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
) -> tuple[torch.nn.Module, list[dict]]:
    """Stage 1 (head on frozen, cached features) then stage 2 (progressive unfreezing); see the module doc.
    ``method``: a :class:`headstart.methods.Method` used in both stages.

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

    t = time.perf_counter()
    x_tr = torch.from_numpy(extract_features(bb, splits.train, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress))
    head.norm.fit_(x_tr)
    y_tr = torch.as_tensor(splits.train.labels)
    val_feats = None
    if has_val:
        x_val = torch.from_numpy(extract_features(bb, splits.val, batch_size=batch_size, runtime=runtime, cache=cache, progress=progress))
        val_feats = feature_loader(x_val, torch.as_tensor(splits.val.labels), batch_size=1024)
    stage1 = train_classifier(
        None, head, feature_loader(x_tr, y_tr, batch_size=32, shuffle=True), val_feats, epochs=head_epochs, lr=1e-3,
        class_weights=cw, patience=5 if has_val else None, seed=seed, **hooks,
    )
    timings["head"] = time.perf_counter() - t

    t = time.perf_counter()
    train_loader, val_loader = text_loaders(bb, splits, batch_size, seed)
    n_groups = len(bb.layer_groups())
    limit = n_groups if unfreeze in (None, "all") else int(unfreeze)
    if not 1 <= limit <= n_groups:
        raise HeadstartError(f"unfreeze must be between 1 and {n_groups} (the layer groups of {bb.name!r}) or 'all'; got {unfreeze!r}.")
    stages = unfreeze_from_top_plan(n_groups, epochs, lr, TEXT_BACKBONE_LR if backbone_lr is None else backbone_lr, limit=limit)
    was = [(p, p.requires_grad) for p in bb.parameters()]
    try:
        stage2 = train_classifier(
            bb, head, train_loader, val_loader, lr=lr, stages=stages, class_weights=cw,
            patience=patience if val_loader is not None else None, seed=seed, progress=progress, **hooks,
        )
    finally:
        for p, flag in was:
            p.requires_grad_(flag)
    timings["train"] = time.perf_counter() - t
    bb.provenance = dataclasses.replace(bb.provenance, source=f"{bb.provenance.source} +finetune", weights_sha256=None)
    bb.eval()
    head.eval()
    # One history: stage 0 is the head on the frozen encoder, then the unfreezing stages.
    history = [{**row, "stage": 0, "stage_name": "head (encoder frozen)", "unfrozen_groups": 0} for row in stage1.history]
    history += [{**row, "stage": row["stage"] + 1, "epoch": len(stage1.history) + row["epoch"]} for row in stage2.history]
    return head, history
