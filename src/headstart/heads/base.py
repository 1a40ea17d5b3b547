"""What every head shares: feature standardisation, ``config()``, the registry, class weights.

A head maps pooled features ``(B, D)`` to logits ``(B, K)``. It starts with a :class:`Standardize`
layer whose statistics are buffers, so the whole head, standardisation included, lives in its
``state_dict`` (safetensors-savable) and is rebuilt in a fresh process by
``create_head(**head.config())`` followed by ``load_state_dict``.

Kinds are registered where they are defined (``@register_head("linear")``), timm-style.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

HeadFactory = Callable[..., nn.Module]
HeadFitter = Callable[..., "tuple[nn.Module, list[dict]]"]

_HEADS: dict[str, HeadFactory] = {}
_FITTERS: dict[str, HeadFitter] = {}
_ALIASES: dict[str, str] = {}


class Standardize(nn.Module):
    r"""Per-feature standardisation :math:`z = (x - \mu) / \sigma`, with :math:`\mu, \sigma` as buffers.

    Starts as the identity (:math:`\mu = 0, \sigma = 1`); :meth:`fit_` sets
    :math:`\mu_j = \frac1n \sum_i x_{ij}` and :math:`\sigma_j = \sqrt{\frac1n \sum_i (x_{ij} - \mu_j)^2}`
    (computed in float64). Constant features (:math:`\sigma_j < 10^{-6}`) get :math:`\sigma_j = 1`,
    so they map to 0 instead of blowing up.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    @torch.no_grad()
    def fit_(self, x: torch.Tensor) -> "Standardize":
        var, mean = torch.var_mean(x.double(), dim=0, correction=0)
        std = var.sqrt()
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Head(nn.Module):
    """Base class of heads: stores the constructor arguments and returns them from :meth:`config`."""

    kind: str = ""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.3):
        super().__init__()
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.norm = Standardize(self.in_features)

    def config(self) -> dict[str, Any]:
        """Everything ``create_head(**config)`` needs to rebuild this head's architecture."""
        return {
            "kind": self.kind,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "hidden": self.hidden,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


def register_head(kind: str, *, aliases: Sequence[str] = (), fit: HeadFitter | None = None) -> Callable[[type], type]:
    """Class decorator: register a :class:`Head` subclass as ``kind`` (and ``fit`` as its fitter)."""

    def deco(cls: type) -> type:
        if kind in _HEADS:
            raise ValueError(f"head kind {kind!r} is registered twice")
        cls.kind = kind
        _HEADS[kind] = cls
        for a in aliases:
            _ALIASES[a] = kind
        if fit is not None:
            _FITTERS[kind] = fit
        return cls

    return deco


def register_fitter(kind: str, fit: HeadFitter) -> None:
    """Register ``fit(X_train, y_train, X_val, y_val, *, num_classes, seed, class_weight, **kw)`` for ``kind``."""
    _FITTERS[kind] = fit


def _ensure_builtins() -> None:
    from . import ensembles, linear, mlp  # noqa: F401  (their decorators fill the registry)


def resolve_kind(kind: str) -> str:
    """The registered kind for ``kind`` or one of its aliases; an error that names the choices otherwise."""
    _ensure_builtins()
    kind = _ALIASES.get(kind, kind)
    if kind not in _HEADS:
        names = sorted([*_HEADS, *_ALIASES])
        close = difflib.get_close_matches(str(kind), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"The head 'kind' must be one of {{{', '.join(repr(n) for n in names)}}}; got {kind!r}.{hint}")
    return kind


def head_kinds() -> list[str]:
    """Registered head kinds (aliases not included)."""
    _ensure_builtins()
    return sorted(_HEADS)


def create_head(kind: str, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.3) -> nn.Module:
    """Build an untrained head (identity standardisation) that maps ``(B, in_features)`` to ``(B, num_classes)`` logits."""
    kind = resolve_kind(kind)
    if int(in_features) < 1 or int(num_classes) < 2:
        raise ValueError(f"A head needs in_features >= 1 and num_classes >= 2; got {in_features} and {num_classes}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"The head 'dropout' must be in [0, 1); got {dropout}.")
    return _HEADS[kind](in_features, num_classes, hidden=hidden, dropout=dropout)


def get_fitter(kind: str) -> HeadFitter:
    kind = resolve_kind(kind)
    if kind not in _FITTERS:
        raise ValueError(f"Head kind {kind!r} has no array fitter; train it with headstart.train.train_classifier.")
    return _FITTERS[kind]


# ----------------------------------------------------------------------------------------------
# helpers shared by the fitters


def as_features(x: Any, name: str) -> torch.Tensor:
    """A float32 ``(N, D)`` tensor from a numpy array or tensor; a clear error otherwise."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, features); got shape {tuple(t.shape)}.")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values; check the feature extraction.")
    return t.contiguous()


def as_labels(y: Any, n: int, num_classes: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} labels for {n} feature rows.")
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"{name} must hold class indices in [0, {num_classes}); got values in [{int(t.min())}, {int(t.max())}].")
    return t


def resolve_class_weight(class_weight: Any, y: Any, num_classes: int) -> torch.Tensor | None:
    r"""Per-class loss weights as a float tensor ``(K,)``, or ``None``.

    ``class_weight`` is ``None``, ``"balanced"`` (scikit-learn's rule
    :math:`w_k = n / (K \cdot n_k)`, classes absent from ``y`` get weight 1), a sequence of ``K``
    weights, or a mapping ``{class_index: weight}`` (missing classes get 1).
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced', a sequence or a mapping; got {class_weight!r}.")
        counts = torch.bincount(torch.as_tensor(np.asarray(y)).long().reshape(-1), minlength=num_classes).double()
        w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.ones_like(counts))
        return w.float()
    if isinstance(class_weight, Mapping):
        w = torch.ones(num_classes)
        for k, v in class_weight.items():
            w[int(k)] = float(v)
        return w
    w = torch.as_tensor(np.asarray(class_weight, dtype=np.float32)).reshape(-1)
    if w.numel() != num_classes or bool((w < 0).any()):
        raise ValueError(f"class_weight must hold {num_classes} non-negative weights; got {w.tolist()}.")
    return w
