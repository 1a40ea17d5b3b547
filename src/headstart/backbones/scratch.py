"""Small convolutional networks trained from scratch: the seed example's CNN and a tiny test net.

``scratch_cnn``: two conv blocks (conv-BN-ReLU, max-pool) and a dense layer on a 4x4 pooled
map, 64x64 input: the "learn circles/squares/triangles, transfer to stars/pentagons/hexagons"
network of the demo. ``tiny_cnn``: a few thousand parameters, 32x32 input, for fast tests.
Both start from random weights (``pretrained`` has nothing to load; ``weights`` loads a file).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._io import sha256_file
from .base import Backbone, BackboneSpec, Preprocessing, Provenance
from .registry import register_backbone


def _conv_block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ScratchCNN(Backbone):
    """Conv blocks, adaptive pooling to ``pool x pool``, then a dense ReLU layer of ``dim`` features."""

    def __init__(self, *, name: str, widths: tuple[int, ...], convs_per_block: int, pool: int, dim: int, input_size: int):
        super().__init__()
        blocks = []
        cin = 3
        for w in widths:
            blocks.append(_conv_block(cin, w, convs_per_block))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(cin * pool * pool, dim), nn.ReLU(inplace=True))
        self.num_features = dim
        self.preprocessing = Preprocessing(input_size=(input_size, input_size), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
        self.provenance = Provenance("random-init")
        self.spec = BackboneSpec(name, {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.dense(self.pool(x))

    def layer_groups(self) -> list[nn.Module]:
        return [*self.blocks, self.dense]


def _load_weights(bb: Backbone, weights: str | None) -> Backbone:
    if weights is not None:
        from .timm_backbone import load_state_dict_file, map_state_dict_by_position

        sd = map_state_dict_by_position(load_state_dict_file(weights), bb, weights)
        bb.load_state_dict(sd)
        bb.provenance = Provenance(f"file:{weights}", sha256_file(weights))
    return bb


@register_backbone("scratch_cnn", description="small CNN from scratch: 2 conv blocks + dense, 64px (the demo's network)")
def scratch_cnn(*, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> ScratchCNN:
    del pretrained  # random init: there is nothing pretrained to load
    bb = ScratchCNN(name="scratch_cnn", widths=(32, 64), convs_per_block=1, pool=4, dim=128, input_size=64, **kwargs)
    return _load_weights(bb, weights)


@register_backbone("tiny_cnn", description="tiny CNN (~5k parameters), 32px, for tests and smoke runs")
def tiny_cnn(*, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> ScratchCNN:
    del pretrained
    bb = ScratchCNN(name="tiny_cnn", widths=(8, 16), convs_per_block=1, pool=2, dim=32, input_size=32, **kwargs)
    return _load_weights(bb, weights)
