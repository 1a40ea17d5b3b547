r"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"): down-weights easy items.

.. math::

    \mathrm{FL}(p_t) = -\,\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t

per item, :math:`p_t` the predicted probability of the true class; averaged over the batch as the
class-weighted cross-entropy is (weighted mean with the run's class weights, when given).
``gamma = 0`` and no ``alpha`` is exactly that cross-entropy (tested). ``alpha``: the weight of
class 1 in a binary task (:math:`\alpha_t = \alpha` for class 1, :math:`1 - \alpha` for class 0),
as in the paper; for more classes use ``--class-weights balanced``. Label smoothing does not
apply to the focal term.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import HeadstartError
from .base import Method, register_method


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, alpha: float | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean focal loss of ``logits`` ``(B, K)`` against ``y`` ``(B,)`` (weighted mean under ``weight`` ``(K,)``)."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    w = torch.ones_like(logp) if weight is None else weight.to(logp)[y]
    if alpha is not None:
        if logits.shape[1] != 2:
            raise HeadstartError(f"focal option alpha weights class 1 of a binary task; this task has {logits.shape[1]} classes. Fix: drop alpha and use --class-weights balanced.")
        w = w * torch.where(y == 1, alpha, 1.0 - alpha)
    mod = (1.0 - logp.exp()).clamp_min(0.0).pow(gamma) if gamma else torch.ones_like(logp)
    return -(w * mod * logp).sum() / w.sum().clamp_min(1e-12)


@register_method
class Focal(Method):
    """Focal loss in place of cross-entropy while training (imbalanced or hard-example-dominated data)."""

    name = "focal"
    description = "focal loss (Lin et al. 2017) instead of cross-entropy: gamma focuses on hard items, alpha weights class 1"

    @dataclasses.dataclass(frozen=True)
    class Options:
        gamma: float = 2.0
        alpha: float | None = None

        def __post_init__(self) -> None:
            if not self.gamma >= 0:
                raise HeadstartError(f"focal option gamma must be >= 0; got {self.gamma!r}.")
            if self.alpha is not None and not 0.0 < self.alpha < 1.0:
                raise HeadstartError(f"focal option alpha must be in (0, 1); got {self.alpha!r}.")

    def criterion(self):
        gamma, alpha = self.options.gamma, self.options.alpha
        return lambda module, logits, y: focal_loss(logits, y, gamma, alpha, module.class_weights)
