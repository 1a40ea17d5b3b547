"""Transferability scores registered by name where they are defined (``@register_score``).

Each score says what it needs from a backbone: its pooled ``features`` (LogME, H-score), the source
model's class probabilities ``source_proba`` (LEEP) or its hard ``source_labels`` (NCE). Higher is
better for every registered score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import HeadstartError

NEEDS = ("features", "source_proba", "source_labels")


@dataclass(frozen=True)
class ScoreInfo:
    name: str
    fn: Callable[..., float]
    needs: str
    title: str  # short display name, e.g. "LogME"
    citation: str


_SCORES: dict[str, ScoreInfo] = {}


def register_score(name: str, *, needs: str, title: str, citation: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator: register ``fn(inputs, labels) -> float`` as score ``name`` (inputs as ``needs`` says)."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}; got {needs!r}")

    def deco(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _SCORES:
            raise ValueError(f"score {name!r} is registered twice")
        _SCORES[name] = ScoreInfo(name, fn, needs, title, citation)
        return fn

    return deco


def _ensure_builtins() -> None:
    from . import logme, hscore, leep, nce  # noqa: F401, I001  (registration at import; LogME first)


def list_scores() -> list[str]:
    """Names of the registered scores, in registration order."""
    _ensure_builtins()
    return list(_SCORES)


def get_score(name: str) -> ScoreInfo:
    _ensure_builtins()
    if name not in _SCORES:
        raise HeadstartError(f"The 'score' parameter must be one of {{{', '.join(repr(s) for s in [*_SCORES, 'all'])}}}; got {name!r}.")
    return _SCORES[name]
