"""A previous headstart run as a backbone: transfer from your own model (``run:<folder>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Backbone, Provenance
from .registry import register_family


@register_family("run", description="the backbone of a previous headstart run folder (transfer from your own model)")
def run_backbone(folder: str, *, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> Backbone:
    from ..model import load_backbone_from_run

    bb = load_backbone_from_run(Path(folder), pretrained=pretrained and weights is None)
    if weights is not None:
        from .scratch import _load_weights

        _load_weights(bb, weights)
    return bb


__all__ = ["run_backbone", "Provenance"]
