r"""Few-shot contrastive fine-tuning of a sentence encoder (SetFit), through the one training loop.

Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts", arXiv:2209.11055. Two steps:

1. **The encoder on pairs.** :func:`sample_pairs` draws ``n`` pairs of training texts, seeded and
   balanced: :math:`\lceil n/2 \rceil` of the same class (target :math:`t = 1`) and
   :math:`\lfloor n/2 \rfloor` of different classes (:math:`t = 0`), the anchors cycling through
   every training text. The encoder :math:`f` (mean-pooled, as it embeds for the probe) is trained on
   them with sentence-transformers' ``CosineSimilarityLoss``, the mean squared error between the
   cosine of the two embeddings and the target:

   .. math:: \mathcal{L} = \frac{1}{B} \sum_{i=1}^{B} \bigl(\cos(f(a_i), f(b_i)) - t_i\bigr)^2

   One pass over the pairs, :data:`PAIR_BATCH` pairs a step (both sides of a batch in one forward
   pass of ``2B`` texts), every layer group at ``backbone_lr`` (default :data:`SETFIT_LR`, SetFit's),
   AdamW with warm-up and cosine decay: :func:`~headstart.train.train_classifier` with
   :class:`PairCosine` as its head (no parameters: it turns the ``2B`` embeddings into the pairs'
   cosines) and :func:`cosine_pair_loss` as its criterion. The loop's ``train_acc`` is then the
   fraction of pairs on the right side of cosine 0.5. ``max_time`` (``fit --time-limit``) stops it
   between steps.
2. **The probe on the new embeddings.** ``fit`` fits the run's head (the logistic-regression probe)
   on the fine-tuned encoder's features. The encoder's provenance hash is reset here, so the feature
   cache's fingerprint changes (no feature of the old weights is reused) and the fast ONNX path
   (:mod:`headstart.features.text`, keyed by that fingerprint) exports and verifies the new weights.

A hybrid (``minilm_l6+tfidf``) fine-tunes its encoder part(s) on the pairs, then its block scales
are fitted again on the new features. Example::

    a, b, t = sample_pairs([0, 0, 1, 1], 6, seed=0)   # 3 same-class, 3 cross-class pairs
    fit("reviews.csv", backbone="minilm_l6", strategy="setfit", pairs=2000)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HeadstartError
from .strategies import Stage

log = logging.getLogger("headstart")

#: Encoder learning rate (SetFit's ``body_learning_rate``).
SETFIT_LR = 2e-5
#: Pairs per optimiser step (SetFit's batch size).
PAIR_BATCH = 16
#: Pairs when ``pairs`` is not given. SetFit draws 20 iterations x 2 pairs per training text (1,280 at
#: 16 texts per class). Measured on Rotten Tomatoes, 16 texts per class, MiniLM-L6, 3 seeds, shared 2-core
#: CPU (benchmarks/text_strategies.py --pair-sweep; results/text_setfit_rotten_tomatoes.json): 320 pairs
#: 0.659 +- 0.019, 640 pairs 0.670 +- 0.020, 1,280 pairs 0.682 +- 0.018 test accuracy (probe 0.643). 640
#: keeps two thirds of the gain at half the cost (a step of 16 pairs: ~1-5 s of CPU here, by load);
#: --pairs 1280 buys about one more point.
DEFAULT_PAIRS = 640


def auto_setfit(strategy: str, reason: str, per_class: int, has_val: bool, n_groups: int) -> tuple[str, str]:
    """``--strategy auto`` on texts: ``setfit`` where the image rule (``train.recipes.choose_auto``) keeps the
    probe for lack of data (a small class or no validation split) and the encoder has layer groups to train.
    Measured on Rotten Tomatoes, MiniLM-L6, 3 seeds (results/text_setfit_rotten_tomatoes.json): SetFit
    0.591 / 0.670 / 0.718 test accuracy at 8 / 16 / 64 texts per class, the probe 0.577 / 0.643 / 0.704."""
    from .recipes import AUTO_MIN_PER_CLASS

    if strategy != "linear" or n_groups == 0 or (has_val and per_class >= AUTO_MIN_PER_CLASS):
        return strategy, reason
    why = f"{per_class} training texts in the smallest class" if per_class < AUTO_MIN_PER_CLASS else "no validation split"
    return "setfit", (f"{why}: few labeled texts, where contrastive pair training of the encoder (SetFit) beat the linear probe "
                      "on Rotten Tomatoes at 8, 16 and 64 texts per class")


def sample_pairs(labels: Sequence[int], n_pairs: int, seed: int = 0, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, target)``: ``n_pairs`` index pairs into ``labels``, ``ceil(n/2)`` same-class (target 1) and
    ``floor(n/2)`` cross-class (target 0), in a seeded random order; ``a != b`` always.

    Anchors ``a`` run through seeded permutations of every item (each item anchors about equally
    often); a positive partner is drawn uniformly from the anchor's class (itself excluded), a negative
    one uniformly from the items of the other classes. ``classes``: names for the error messages.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    n_pairs = int(n_pairs)
    if n_pairs < 2:
        raise HeadstartError(f"SetFit needs at least 2 pairs (one same-class, one cross-class); got pairs={n_pairs}. Fix: --pairs 2 or more.")
    values, counts = np.unique(y, return_counts=True)
    name = (lambda c: repr(classes[c])) if classes is not None else repr
    if len(values) < 2:
        raise HeadstartError("SetFit learns from same-class and cross-class pairs, and the training texts hold one class. "
                             "Fix: give texts of at least two classes.")
    if counts.min() < 2:
        c = int(values[counts.argmin()])
        raise HeadstartError(f"SetFit needs at least 2 training texts in every class to draw a same-class pair; class {name(c)} has "
                             f"{int(counts.min())}. Fix: add texts of that class (or lower --val/--test), or use --strategy linear.")
    rng = np.random.default_rng(seed)
    members = {int(c): np.flatnonzero(y == c) for c in values}
    others = {int(c): np.flatnonzero(y != c) for c in values}
    position = np.empty(len(y), dtype=np.int64)  # each item's place among its class's members
    for m in members.values():
        position[m] = np.arange(len(m))

    def anchors(k: int) -> np.ndarray:
        return np.concatenate([rng.permutation(len(y)) for _ in range(-(-k // len(y)))])[:k]

    n_pos = n_pairs - n_pairs // 2
    a_pos, a_neg = anchors(n_pos), anchors(n_pairs // 2)
    b_pos, b_neg = np.empty_like(a_pos), np.empty_like(a_neg)
    for c in members:
        sel = np.flatnonzero(y[a_pos] == c)
        r = rng.integers(0, len(members[c]) - 1, size=len(sel))
        r += r >= position[a_pos[sel]]  # skip the anchor itself
        b_pos[sel] = members[c][r]
        sel = np.flatnonzero(y[a_neg] == c)
        b_neg[sel] = others[c][rng.integers(0, len(others[c]), size=len(sel))]
    a, b = np.concatenate([a_pos, a_neg]), np.concatenate([b_pos, b_neg])
    t = np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(n_pairs // 2, dtype=np.int64)])
    order = rng.permutation(n_pairs)
    return a[order], b[order], t[order]


class PairCosine(nn.Module):
    """The contrastive step's "head": ``(2B, D)`` embeddings (the ``a`` sides, then the ``b`` sides) ->
    ``(B, 2)`` logits ``[0.5, cos(a_i, b_i)]``, so that the loop's accuracy is the fraction of pairs on
    the right side of cosine 0.5 (class 1: same class)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(0.5))  # also gives the module a device

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        half = feats.shape[0] // 2
        cos = F.cosine_similarity(feats[:half], feats[half:], dim=-1)
        return torch.stack([self.threshold.expand_as(cos), cos], 1)

    def config(self) -> dict[str, Any]:
        return {"kind": "pair_cosine"}


def cosine_pair_loss(module: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CosineSimilarityLoss``: the mean of ``(cos - target)^2`` over the batch's pairs (``logits[:, 1]`` is the cosine)."""
    return F.mse_loss(logits[:, 1], y.to(logits.dtype))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, texts: Sequence[str], a: np.ndarray, b: np.ndarray, t: np.ndarray):
        self.texts, self.a, self.b, self.t = texts, a, b, t

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> tuple[str, str, int]:
        return str(self.texts[self.a[i]]), str(self.texts[self.b[i]]), int(self.t[i])


def _collate(encoder: Any, batch: Sequence[tuple[str, str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``[(text a, text b, target), ...]`` -> (tokens of the ``a`` texts then the ``b`` texts, targets)."""
    return encoder.tokenize([a for a, _, _ in batch] + [b for _, b, _ in batch], warn=False), torch.as_tensor([t for _, _, t in batch])


def encoders(bb: Any) -> list[Any]:
    """The parts of ``bb`` that SetFit trains: ``bb`` itself, or a hybrid's parts with layer groups; a clear error if none."""
    if not hasattr(bb, "tokenize"):
        raise HeadstartError(f"--strategy setfit fine-tunes a sentence encoder on pairs of texts, and {bb.name!r} is an image backbone. "
                             "Fix: --strategy linear|finetune|progressive|auto for images, or texts with --backbone minilm_l6.")
    parts = list(getattr(bb, "parts", None) or [bb])
    trainable = [p for p in parts if list(p.parameters()) and _groups(p)]
    if not trainable:
        raise HeadstartError(f"--strategy setfit fine-tunes a sentence encoder, and {bb.name!r} has no trainable layers (a bag of words, "
                             "word vectors or an ONNX graph). Fix: --backbone minilm_l6 (or an hf: model, or minilm_l6+tfidf), "
                             "or --strategy linear with this backbone.")
    return trainable


def _groups(p: Any) -> list:
    try:
        return list(p.layer_groups())
    except (NotImplementedError, AttributeError):
        return []


#: Seconds kept under a time limit for exporting the new weights to ONNX and verifying them (measured
#: 10-25 s for MiniLM-L6 on the shared 2-core CPU).
EXPORT_RESERVE_S = 30.0


def _encode_seconds(parts: Sequence[Any], splits: Any, batch_size: int) -> float:
    """Seconds to keep for encoding every split with the trained encoder(s): one eager forward pass of a
    batch of training texts, timed here, scaled to all the texts (the ONNX path is faster: an upper bound)."""
    texts = [str(x) for x in splits.train.items[: max(2, min(batch_size, 32))]]
    n = sum(len(d) for d in (splits.train, splits.val, splits.test) if d is not None)
    total = 0.0
    for enc in parts:
        x = enc.tokenize(texts, warn=False)
        t = time.perf_counter()
        with torch.inference_mode():
            enc.eval()(x)
        total += EXPORT_RESERVE_S + (time.perf_counter() - t) / len(texts) * n
    return total


def fit_setfit(bb: Any, splits: Any, settings: Any, *, timings: dict[str, float], max_time: float | None = None) -> dict[str, Any]:
    """Step 1 of the module doc: train ``bb``'s encoder(s) in place on pairs of ``splits.train``; return
    ``{"setfit": what was done, "history": the loop's rows}``. The caller then fits the probe (step 2)."""
    from ..features.fitted import fit_on_train
    from .loop import train_classifier

    if splits.train.modality != "text":
        raise HeadstartError("--strategy setfit fine-tunes a sentence encoder on pairs of texts; this data holds images. "
                             "Fix: --strategy linear|finetune|progressive|auto for images.")
    tr, hw = settings.training, settings.hardware
    parts = encoders(bb)
    n_pairs = int(tr.pairs or DEFAULT_PAIRS)
    a, b, t = sample_pairs(splits.train.labels, n_pairs, seed=tr.seed, classes=splits.classes)
    lr = float(tr.backbone_lr or SETFIT_LR)
    t0, history, steps, stopped = time.perf_counter(), [], 0, False
    if max_time is not None:  # keep time for what follows: the new weights' export and features of every split
        max_time -= _encode_seconds(parts, splits, tr.batch_size)
    for k, enc in enumerate(parts):
        g = torch.Generator().manual_seed(tr.seed)
        loader = torch.utils.data.DataLoader(_Pairs(splits.train.items, a, b, t), batch_size=PAIR_BATCH, shuffle=True, generator=g,
                                             collate_fn=functools.partial(_collate, enc))
        n_groups = len(_groups(enc))
        top = n_groups if tr.unfreeze in (None, "all") else int(tr.unfreeze)
        if not 1 <= top <= n_groups:
            raise HeadstartError(f"--unfreeze {tr.unfreeze} with --strategy setfit: {enc.name!r} has {n_groups} layer groups. "
                                 f"Fix: --unfreeze between 1 and {n_groups} (the top groups train), or leave it out (all train).")
        left = None if max_time is None else max(1.0, max_time - (time.perf_counter() - t0))
        res = train_classifier(enc, PairCosine(), loader, None, stages=[Stage("setfit", 1, top, lr, (lr,) * n_groups)],
                               criterion=cosine_pair_loss, seed=tr.seed, max_time=left, progress=settings.output.progress,
                               accelerator=hw.accelerator, precision=hw.precision)
        enc.provenance = dataclasses.replace(enc.provenance, source=f"{enc.provenance.source} +setfit", weights_sha256=None)
        enc.eval()
        steps += res.steps
        stopped = stopped or res.steps < len(loader)
        history += [{**row, "stage": 0, "stage_name": "setfit pairs (train_acc: pairs on the right side of cosine 0.5)", "part": k} for row in res.history]
    if getattr(bb, "parts", None) is not None:  # a hybrid: its block scales again, on the new encoder's features
        bb._scaled = False
        fit_on_train(bb, splits.train, batch_size=tr.batch_size, runtime=settings.backbone.runtime, cache=settings.backbone.cache)
    timings["setfit"] = time.perf_counter() - t0
    last = history[-1] if history else {}
    info = {"pairs": n_pairs, "same_class": int(t.sum()), "cross_class": int(len(t) - t.sum()), "batch_pairs": PAIR_BATCH, "lr": lr,
            "steps": steps, "seconds": round(timings["setfit"], 1), "pair_loss": last.get("train_loss"), "pair_acc": last.get("train_acc"),
            **({"stopped": "at the time limit, before the last pair"} if stopped else {})}
    log.info("setfit: %d pairs (%d same-class), %d steps in %.1fs, pair loss %.4f", n_pairs, info["same_class"], steps, timings["setfit"],
             info["pair_loss"] or float("nan"))
    return {"setfit": info, "history": history}
