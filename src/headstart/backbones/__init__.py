"""Backbones: pretrained (or scratch) feature extractors behind one small protocol."""

from .base import Backbone, BackboneSpec, Preprocessing, Provenance, TextPreprocessing, preprocessing_from_dict
from .registry import BackboneInfo, backbone_names, create_backbone, list_backbones, register_backbone, register_family

__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneSpec",
    "Preprocessing",
    "Provenance",
    "TextPreprocessing",
    "backbone_names",
    "create_backbone",
    "list_backbones",
    "preprocessing_from_dict",
    "register_backbone",
    "register_family",
]
