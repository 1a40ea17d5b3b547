"""``dropout_linear``: dropout on the pooled features, then one linear layer (BERT's classification head).

Devlin et al. (2019), BERT, section 4: the pooled representation :math:`f` goes through dropout
(:math:`p = 0.1`) and a linear layer, :math:`\\ell = W\\,\\mathrm{Dropout}_p(\\mathrm{std}(f)) + b`,
trained with the encoder. Used by ``fit(strategy="finetune")`` on text.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Head, register_head


@register_head("dropout_linear")
class DropoutLinearHead(Head):
    """Standardisation, ``Dropout(dropout)``, ``Linear(in_features, num_classes)``; ``hidden`` is unused."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.1):
        super().__init__(in_features, num_classes, hidden=hidden, dropout=dropout)
        self.drop = nn.Dropout(self.dropout)
        self.fc = nn.Linear(self.in_features, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x)))
