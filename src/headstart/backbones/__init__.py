"""Backbones: pretrained (or scratch) feature extractors behind one small protocol."""

from .base import Backbone, BackboneSpec, Preprocessing, Provenance
from .registry import BackboneInfo, backbone_names, create_backbone, list_backbones, register_backbone, register_family

__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneSpec",
    "Preprocessing",
    "Provenance",
    "backbone_names",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "register_family",
]
