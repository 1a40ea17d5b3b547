"""Backbones registered by name where they are defined (timm-style ``@register_model``).

Two kinds of entries:

* plain names (``efficientnet_lite0``, ``scratch_cnn``) registered with :func:`register_backbone`;
* families with a prefix (``timm:<model>``, ``run:<folder>``) registered with
  :func:`register_family`; the part after the colon is passed to the family's factory.

Factories take ``pretrained: bool`` (``False`` builds the architecture only, for loading a saved
run) and ``weights: str | None`` (a local weights file or folder, which works everywhere).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ..errors import BackboneError
from .base import Backbone

Factory = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    modality: str
    description: str
    offline: bool  # usable with no network, as installed now
    offline_note: str = ""
    family: bool = False


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    modality: str
    description: str
    offline_check: Callable[[], tuple[bool, str]]
    family: bool


_REGISTRY: dict[str, _Entry] = {}


def _always() -> tuple[bool, str]:
    return True, ""


def register_backbone(
    name: str,
    *,
    modality: str = "image",
    description: str = "",
    offline_check: Callable[[], tuple[bool, str]] = _always,
) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(pretrained=True, weights=None, **kwargs) -> Backbone`` as ``name``."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = _Entry(factory, modality, description or (factory.__doc__ or "").strip().split("\n")[0], offline_check, False)
        return factory

    return deco


def register_family(
    prefix: str,
    *,
    modality: str = "image",
    description: str = "",
    offline_check: Callable[[], tuple[bool, str]] = _always,
) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(arg, pretrained=True, weights=None, **kwargs)`` for ``prefix:arg`` names."""

    def deco(factory: Factory) -> Factory:
        key = prefix + ":"
        if key in _REGISTRY:
            raise ValueError(f"backbone family {prefix!r} is registered twice")
        _REGISTRY[key] = _Entry(factory, modality, description or (factory.__doc__ or "").strip().split("\n")[0], offline_check, True)
        return factory

    return deco


def _ensure_builtins() -> None:
    # Importing the modules runs their @register_* decorators.
    from . import efficientnet, run_backbone, scratch, text, tfidf, timm_backbone  # noqa: F401


def create_backbone(
    name: str, *, pretrained: bool = True, weights: str | None = None, **kwargs
) -> Backbone:
    """Build a backbone by name.

    ``name`` is a registered name (see :func:`list_backbones`), ``timm:<model>`` or ``run:<folder>``
    (a bare path to a run folder works too), or text backbones joined by ``+`` (a hybrid, e.g.
    ``minilm_l6+tfidf``: :mod:`.hybrid`). ``pretrained=False`` builds the architecture with
    random weights; ``weights`` loads a local file or folder instead of the default source.
    """
    _ensure_builtins()
    if not isinstance(name, str) or not name:
        raise BackboneError(f"A backbone name must be a non-empty string; got {name!r}.")
    if name in _REGISTRY and not _REGISTRY[name].family:
        return _REGISTRY[name].factory(pretrained=pretrained, weights=weights, **kwargs)
    if "+" in name:  # a hybrid of text backbones, e.g. minilm_l6+tfidf
        from .hybrid import create_hybrid

        return create_hybrid(name, pretrained=pretrained, weights=weights, **kwargs)
    prefix, sep, arg = name.partition(":")
    if sep and prefix + ":" in _REGISTRY:
        if not arg:
            raise BackboneError(f"Backbone {name!r} names no model after '{prefix}:'; write e.g. '{prefix}:<name>'.")
        return _REGISTRY[prefix + ":"].factory(arg, pretrained=pretrained, weights=weights, **kwargs)
    from pathlib import Path

    if (Path(name) / "model.json").is_file():
        return _REGISTRY["run:"].factory(name, pretrained=pretrained, weights=weights, **kwargs)
    known = [n for n, e in _REGISTRY.items() if not e.family]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise BackboneError(
        f"Unknown backbone {name!r}.{hint} Known backbones: {', '.join(sorted(known))}; "
        f"or use 'timm:<model name>' for any timm model, 'run:<folder>' for a previous headstart run, or 'a+b' to join text backbones. "
        f"Run 'headstart backbones' to see them all."
    )


def list_backbones(modality: str | None = None) -> list[BackboneInfo]:
    """Every registered backbone and family, with whether it works offline as installed now."""
    _ensure_builtins()
    out = []
    for name, e in _REGISTRY.items():
        if modality and e.modality != modality:
            continue
        ok, note = e.offline_check()
        out.append(BackboneInfo(name if not e.family else name + "<name>", e.modality, e.description, ok, note, e.family))
    return out


def backbone_names() -> list[str]:
    _ensure_builtins()
    return [n for n, e in _REGISTRY.items() if not e.family]
