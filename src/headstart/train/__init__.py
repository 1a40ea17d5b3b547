"""Training: the one loop (Lightning) that every strategy and method plugs into.

``train_classifier(backbone, head, train_loader, val_loader, ...)`` trains in place and returns a
:class:`TrainResult`; :class:`ClassifierModule` is the LightningModule behind it. Strategies are
plans of :class:`Stage` s (:mod:`.strategies`); freezing works on the backbone's layer groups
(:mod:`.freeze`); augmentation presets (:mod:`.augment`); the activation cache of a frozen prefix
(:mod:`.cache`); resumable checkpoints (:mod:`.checkpoint`). The recipes ``fit`` runs in the loop:
images (:mod:`.recipes`) and text fine-tuning (:mod:`.text_recipe`).
"""

from .checkpoint import AtomicCheckpointIO, EpochShuffle, make_loader
from .freeze import layerwise_lrs, resolve_unfreeze, set_trainable_groups, trainable_group_count
from .loop import BestWeights, LoopConfig, LoopRuntime, TrainResult, quiet_lightning, train_classifier
from .module import ClassifierModule, keep_frozen_batchnorm_eval, warmup_cosine
from .strategies import Stage, StageCallback, finetune_plan, frozen_prefix, head_plan, progressive_plan, recipe_plan

__all__ = [
    "AtomicCheckpointIO",
    "BestWeights",
    "LoopConfig",
    "LoopRuntime",
    "ClassifierModule",
    "EpochShuffle",
    "Stage",
    "StageCallback",
    "TrainResult",
    "finetune_plan",
    "frozen_prefix",
    "head_plan",
    "keep_frozen_batchnorm_eval",
    "layerwise_lrs",
    "make_loader",
    "progressive_plan",
    "quiet_lightning",
    "recipe_plan",
    "resolve_unfreeze",
    "set_trainable_groups",
    "train_classifier",
    "trainable_group_count",
    "warmup_cosine",
]
