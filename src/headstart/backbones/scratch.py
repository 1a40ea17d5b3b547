"""Small convolutional networks trained from scratch: the seed example's CNN and a tiny test net.

``scratch_cnn``: two conv blocks (conv-BN-ReLU x2, max-pool), features = the last block's map
average-pooled to 4x4 and flattened (1024-d), 32x32 input: the "learn circles/squares/triangles,
transfer to stars/pentagons/hexagons" network of the demo, whose dense layers are the head
(``head="mlp"``: Dense-ReLU-Dropout-Dense), so "freeze the conv layers, train a new head" is the
``linear`` strategy with an MLP head. ``tiny_cnn``: a few thousand parameters, for fast tests.
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
    """Conv blocks, then adaptive average pooling to ``pool x pool``, flattened: ``widths[-1] * pool**2`` features."""

    def __init__(self, *, name: str, widths: tuple[int, ...], convs_per_block: int, pool: int, input_size: int):
        super().__init__()
        blocks = []
        cin = 3
        for w in widths:
            blocks.append(_conv_block(cin, w, convs_per_block))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.num_features = cin * pool * pool
        self.preprocessing = Preprocessing(input_size=(input_size, input_size), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
        self.provenance = Provenance("random-init")
        self.spec = BackboneSpec(name, {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.pool(x)

    def layer_groups(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward_until(self, group: int, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks[: int(group)]:
            x = b(x)
        return x

    def forward_from(self, group: int, h: torch.Tensor) -> torch.Tensor:
        for b in self.blocks[int(group) :]:
            h = b(h)
        return self.pool(h)


def _load_weights(bb: Backbone, weights: str | None) -> Backbone:
    if weights is not None:
        from .timm_backbone import load_state_dict_file, map_state_dict_by_position

        sd = map_state_dict_by_position(load_state_dict_file(weights), bb, weights)
        bb.load_state_dict(sd)
        bb.provenance = Provenance(f"file:{weights}", sha256_file(weights))
    return bb


@register_backbone("scratch_cnn", description="small CNN from scratch: 2 conv blocks, 1024-d features, 32px (the demo's network)")
def scratch_cnn(*, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> ScratchCNN:
    del pretrained  # random init: there is nothing pretrained to load
    bb = ScratchCNN(name="scratch_cnn", widths=(32, 64), convs_per_block=2, pool=4, input_size=32, **kwargs)
    return _load_weights(bb, weights)


@register_backbone("tiny_cnn", description="tiny CNN (~1.3k parameters), 32px, for tests and smoke runs")
def tiny_cnn(*, pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> ScratchCNN:
    del pretrained
    bb = ScratchCNN(name="tiny_cnn", widths=(8, 16), convs_per_block=1, pool=2, input_size=32, **kwargs)
    return _load_weights(bb, weights)
