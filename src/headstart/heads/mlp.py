r"""MLP head, as in the Keras seeds (``Dense(256, relu)``, ``Dropout``, ``Dense(n)``), and its fitter.

Head: :math:`\text{logits} = W_2 \, \mathrm{Dropout}(\mathrm{ReLU}(W_1 z + b_1)) + b_2` with
:math:`z = (x - \mu) / \sigma`; ``W1: (hidden, D)``, ``W2: (K, hidden)``.

Fitter (:func:`fit_mlp`): standardisation fitted on ``X_train``, then the one training loop
(:func:`headstart.train.train_classifier` with ``backbone=None``: AdamW, cosine schedule with
warm-up, cross-entropy with optional class weights), large batches of cached features, early
stopping on the validation loss with the best weights restored.

Example::

    head, history = fit_head("mlp", X_train, y_train, X_val, y_val, num_classes=10)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from .base import Head, as_features, as_labels, create_head, register_head, resolve_class_weight


def feature_loader(x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512, shuffle: bool = False) -> DataLoader:
    """A loader over in-memory ``(features, labels)`` that indexes whole batches at once.

    One ``tensor[index_list]`` per batch instead of ``batch_size`` item lookups and a collate:
    on 10k x 1280 features this is what keeps the loop's data time negligible.
    """
    ds = TensorDataset(x, y)
    base = RandomSampler(ds) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(base, batch_size=batch_size, drop_last=False))


def fit_mlp(
    X_train: Any,
    y_train: Any,
    X_val: Any = None,
    y_val: Any = None,
    *,
    num_classes: int,
    seed: int = 0,
    class_weight: Any = None,
    hidden: int = 256,
    dropout: float = 0.3,
    epochs: int = 100,
    patience: int | None = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 512,
    label_smoothing: float = 0.0,
    max_time: float | None = None,
    log_dir: str | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[dict]]:
    """Fit an MLP head on feature arrays through :func:`headstart.train.train_classifier`.

    With ``(X_val, y_val)`` training stops after ``patience`` epochs without a lower validation
    loss and the best epoch's weights are restored; without them it runs ``epochs`` epochs.
    Returns ``(head, history)`` with one row per epoch (see :class:`headstart.train.TrainResult`).
    """
    from ..train import train_classifier

    x = as_features(X_train, "X_train")
    y = as_labels(y_train, len(x), num_classes, "y_train")
    has_val = X_val is not None and y_val is not None
    head = create_head("mlp", x.shape[1], num_classes, hidden=hidden, dropout=dropout)
    head.norm.fit_(x)
    train_loader = feature_loader(x, y, batch_size=batch_size, shuffle=True)
    val_loader = None
    if has_val:
        xv = as_features(X_val, "X_val")
        val_loader = feature_loader(xv, as_labels(y_val, len(xv), num_classes, "y_val"), batch_size=max(batch_size, 2048))
    result = train_classifier(
        None, head, train_loader, val_loader,
        epochs=epochs, lr=lr, weight_decay=weight_decay, trainable="all",
        class_weights=resolve_class_weight(class_weight, y, num_classes), label_smoothing=label_smoothing,
        patience=patience if has_val else None, seed=seed, log_dir=log_dir, progress=progress, max_time=max_time,
    )
    return head.eval(), result.history


@register_head("mlp", fit=fit_mlp)
class MLPHead(Head):
    """Standardisation, ``Linear(D, hidden)``, ReLU, ``Dropout(dropout)``, ``Linear(hidden, K)``."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.3):
        super().__init__(in_features, num_classes, hidden=hidden, dropout=dropout)
        if self.hidden < 1:
            raise ValueError(f"The mlp head needs hidden >= 1; got {hidden}.")
        self.fc1 = nn.Linear(self.in_features, self.hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(self.dropout)
        self.fc2 = nn.Linear(self.hidden, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))
