r"""Structured channel pruning of a run's classifier (``headstart export --prune AMOUNT``), then a short fine-tune.

Pruning removes whole channels, so the exported graph is smaller and really faster (not a sparse
tensor of zeros). torch-pruning (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning",
arXiv:2301.12900) traces the model's dependency graph, so the channels coupled through residual
additions, depthwise convolutions (``groups == channels``: a depthwise conv loses the channels its
input lost), BatchNorm layers and the head's input are removed together. Importance of a group of
coupled channels :math:`g`: the L2 norm of its weights, :math:`I_g = \lVert W_g \rVert_2` (magnitude
pruning, ``GroupMagnitudeImportance(p=2)``); each prunable layer keeps the same share
:math:`1 - a` of its channels (``a`` = ``amount``), rounded to multiples of :data:`ROUND_TO`.

The head's outputs (its classes) are never pruned; its input follows the backbone's last layer.
The head's :class:`~headstart.heads.base.Standardize` buffers are pruned with its input (a pruner
of its own, :class:`_StandardizePruner`).

Right after pruning, the digits run's Lite0 predicts at chance (validation accuracy 0.10): each
layer's input changed, so its BatchNorm statistics are stale. So the statistics are recomputed on
the training images, the head is refit as a linear probe on the pruned features (0.68), and the
fine-tuning recipe of ``fit --strategy finetune`` runs in the one training loop
(:func:`headstart.train.recipes.fit_in_loop`: LP-FT, every layer group unfrozen, layer-wise decayed
rates) on the run's own training split, the epoch kept by validation accuracy and loss (0.93 after
6 epochs at amount 0.3, 0.955 at 0.4). Defaults: :data:`DEFAULT_EPOCHS`, :data:`DEFAULT_AMOUNT`.

    pruned, info = prune_classifier(clf, 0.3, example)   # clf: .backbone + .head, images -> logits
    finetune_pruned(pruned, splits, settings, epochs=6)
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import HeadstartError

log = logging.getLogger("headstart")

#: Channels kept per layer are rounded to multiples of this (CPU kernels vectorise over 8 or 16 channels).
ROUND_TO = 8
#: The share of channels the benchmark prunes (``--prune`` takes a value), and the fine-tune's epochs
#: (``--prune-epochs``' default). Chosen by ``benchmarks/export.py --prune-sweep 0.2,0.3,0.4`` on the digits
#: run (benchmarks/results/export_digits_prune_openvino.json, one seed): 6 epochs beat 3 at every amount by 4-6
#: validation points (3 epochs: 0.90 / 0.89 / 0.90 at 0.2 / 0.3 / 0.4; 6 epochs: 0.952 / 0.933 / 0.955, the run 0.952),
#: and 0.4 at 6 epochs was both the fastest (ONNX fp32 2.9x eager torch) and the most accurate (test 0.956, the run
#: 0.926). The 0.3 dip says one seed's accuracy is good to about 2 points.
DEFAULT_AMOUNT = 0.4
DEFAULT_EPOCHS = 6
#: The pruned model is refused when its validation accuracy is more than this far below the run's.
MAX_ACCURACY_DROP_PRUNED = 0.02
INSTALL = "pip install 'torch-pruning==1.6.1' (or pip install 'headstart[export]')"


def check_amount(amount: Any) -> float:
    """``amount`` as a float in (0, 1), or a :class:`HeadstartError` naming the fix."""
    try:
        a = float(amount)
    except (TypeError, ValueError):
        raise HeadstartError(f"--prune takes the share of channels to remove, a number between 0 and 1 (e.g. 0.3); got {amount!r}.") from None
    if not 0.0 < a < 1.0:
        raise HeadstartError(f"--prune must be between 0 and 1, exclusive (the share of channels removed, e.g. 0.3 removes 30%); got {a:g}.")
    return a


def _tp():
    try:
        import torch_pruning
    except ImportError:
        raise HeadstartError(f"--prune needs torch-pruning, which is not installed. Fix: {INSTALL}.") from None
    return torch_pruning


def check_installed() -> None:
    """A :class:`HeadstartError` naming the install command when torch-pruning is missing."""
    _tp()


def _standardize_pruner(tp):
    from ..heads.base import Standardize

    class _StandardizePruner(tp.pruner.function.BasePruningFunc):
        """Keeps the head's per-feature mean and std of the features that remain."""

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            drop = set(int(i) for i in idxs)
            keep = torch.tensor([i for i in range(layer.mean.numel()) if i not in drop], dtype=torch.long)
            layer.mean, layer.std = layer.mean[keep].clone(), layer.std[keep].clone()
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.mean.numel())

        get_in_channels = get_out_channels

    return {Standardize: _StandardizePruner()}


def count(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``module`` on ``example`` (torch-pruning's counter)."""
    macs, params = _tp().utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def prune_classifier(clf: nn.Module, amount: float, example: torch.Tensor, *, what: str = "this backbone") -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``clf`` (``.backbone`` + ``.head``: images -> logits) with ``amount`` of its channels removed.

    Returns ``(pruned, info)``; ``info`` holds MACs and parameters before and after.
    """
    tp = _tp()
    amount = check_amount(amount)
    clf = copy.deepcopy(clf).eval()
    convs = [m for m in clf.backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise HeadstartError(f"{what} has no convolutions to prune (structured pruning removes conv channels). Fix: export without --prune.")
    before = count(clf, example)
    n_out = clf(example).shape[1]
    ignored = [m for m in clf.head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]  # the classes stay
    try:
        pruner = tp.pruner.MagnitudePruner(clf, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=amount,
                                           ignored_layers=ignored, round_to=ROUND_TO, customized_pruners=_standardize_pruner(tp))
        pruner.step()
        with torch.no_grad():
            out = clf(example)
    except Exception as e:  # noqa: BLE001 - the tracer or a pruned shape: say which model, and why
        raise HeadstartError(f"{what} cannot be pruned by torch-pruning ({type(e).__name__}: {e}). Fix: export without --prune.") from e
    after = count(clf, example)
    if out.shape[1] != n_out:
        raise HeadstartError(f"Pruning changed the number of classes ({n_out} -> {out.shape[1]}); this is a bug. Fix: export without --prune.")
    if after[1] >= before[1]:
        raise HeadstartError(f"{what} has no channels torch-pruning can remove at --prune {amount:g}. Fix: a larger --prune, or none.")
    _sync_sizes(clf)
    return clf, {"amount": amount, "round_to": ROUND_TO, "importance": "L2 magnitude of each group of coupled channels (torch-pruning)",
                 "macs": [before[0], after[0]], "params": [before[1], after[1]]}


def _sync_sizes(clf: nn.Module) -> None:
    """The recorded feature sizes after pruning (the backbone's ``num_features``, the head's ``in_features``)."""
    fc = next((m for m in clf.head.modules() if isinstance(m, nn.Linear)), None)
    if fc is not None:
        clf.backbone.num_features = fc.in_features
        if hasattr(clf.backbone, "model") and hasattr(clf.backbone.model, "num_features"):
            clf.backbone.model.num_features = fc.in_features
        if hasattr(clf.head, "in_features"):
            clf.head.in_features = fc.in_features


def finetune_pruned(clf: nn.Module, splits: Any, settings: Any, *, epochs: int) -> dict[str, Any]:
    """Retrain ``clf`` (in place; its head is replaced) on ``splits.train`` as ``fit --strategy finetune`` does.

    First the BatchNorm statistics are recomputed on the training images (pruning changed every
    layer's input; ``torch.optim.swa_utils.update_bn``), then the fine-tuning recipe runs in the one
    loop (:func:`headstart.train.recipes.fit_in_loop`, the run's ``settings`` with ``epochs``, no
    augmentation): a linear probe on the pruned features (LP-FT), then every layer group unfrozen;
    the epoch kept is chosen on ``splits.val``.
    """
    import dataclasses

    from torch.optim.swa_utils import update_bn

    from ..data import TorchDataset
    from ..train import make_loader
    from ..train.recipes import fit_in_loop

    if int(epochs) < 1:
        raise HeadstartError(f"--prune-epochs must be at least 1 (pruning without fine-tuning loses most of the accuracy); got {epochs}.")
    bb = clf.backbone
    # The weights changed: feature caches key on this hash, which must no longer be the pretrained file's.
    bb.provenance = dataclasses.replace(bb.provenance, source=f"{bb.provenance.source} +pruned", weights_sha256=None)
    t = time.perf_counter()
    bn = make_loader(TorchDataset(splits.train, bb.preprocessing.transform()), settings.training.batch_size, shuffle=True, seed=settings.training.seed)
    update_bn(bn, bb)
    bb.eval()
    t_bn = time.perf_counter() - t
    cw = None
    if settings.head.class_weights == "balanced":
        from ..heads import resolve_class_weight

        cw = resolve_class_weight("balanced", splits.train.labels, len(splits.classes))
    timings: dict[str, float] = {}
    s = settings.replace(epochs=int(epochs), augment="none")
    head, history, info = fit_in_loop(bb, splits, s, strategy="finetune", class_weights=cw, timings=timings)
    clf.head = head.eval()
    clf.eval()
    log.info("pruned model retrained: %s", info.get("kept"))
    return {"epochs": int(epochs), "strategy": "finetune (LP-FT recipe of fit, in the one loop)", "train_items": len(splits.train),
            "seconds": round(time.perf_counter() - t, 1), "bn_recalibration_seconds": round(t_bn, 1),
            "probe_val_acc": info.get("head_init", {}).get("probe_val_acc"), "val_acc": [r.get("val_acc") for r in history],
            "best_epoch": info.get("best_epoch"), "kept": info.get("kept")}
