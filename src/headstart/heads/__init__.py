"""Heads: small classifiers on pooled features (linear, MLP), and fitting them on cached arrays.

``create_head(kind, in_features, num_classes)`` builds one (rebuildable from ``head.config()``,
all state in its ``state_dict``); ``fit_head(kind, X_train, y_train, X_val, y_val, num_classes=K)``
trains one on feature arrays in seconds and returns ``(head, history)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Head, Standardize, create_head, get_fitter, head_kinds, register_fitter, register_head, resolve_class_weight
from .dropout_linear import DropoutLinearHead
from .linear import LinearHead, fit_linear
from .mlp import MLPHead, feature_loader, fit_mlp


def fit_head(
    kind: str,
    X_train: Any,
    y_train: Any,
    X_val: Any = None,
    y_val: Any = None,
    *,
    num_classes: int,
    seed: int = 0,
    class_weight: Any = None,
    **kw: Any,
) -> tuple[nn.Module, list[dict]]:
    """Fit a head of ``kind`` (``"linear"``/``"logreg"`` or ``"mlp"``) on features; returns ``(head, history)``.

    ``X_*`` are ``(N, D)`` arrays or tensors, ``y_*`` class indices in ``[0, num_classes)``.
    ``class_weight``: ``None``, ``"balanced"``, ``K`` weights or ``{class: weight}``. Further
    options go to the kind's fitter (:func:`fit_linear`: ``C``, ``Cs``, ``max_iter``, ``tol``;
    :func:`fit_mlp`: ``hidden``, ``dropout``, ``epochs``, ``patience``, ``lr``, ``batch_size``, ...).
    """
    return get_fitter(kind)(X_train, y_train, X_val, y_val, num_classes=num_classes, seed=seed, class_weight=class_weight, **kw)


__all__ = [
    "DropoutLinearHead",
    "Head",
    "LinearHead",
    "MLPHead",
    "Standardize",
    "create_head",
    "feature_loader",
    "fit_head",
    "fit_linear",
    "fit_mlp",
    "head_kinds",
    "register_fitter",
    "register_head",
    "resolve_class_weight",
]
