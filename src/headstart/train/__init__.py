"""Training: the one loop (Lightning) that every strategy and method plugs into.

``train_classifier(backbone, head, train_loader, val_loader, ...)`` trains in place and returns a
:class:`TrainResult`; :class:`ClassifierModule` is the LightningModule behind it.
"""

from .loop import BestWeights, TrainResult, quiet_lightning, train_classifier
from .module import ClassifierModule, keep_frozen_batchnorm_eval, warmup_cosine

__all__ = [
    "BestWeights",
    "ClassifierModule",
    "TrainResult",
    "keep_frozen_batchnorm_eval",
    "quiet_lightning",
    "train_classifier",
    "warmup_cosine",
]
