r"""LEEP: the Log Expected Empirical Prediction of the source model's classifier on the target labels.

Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
Representations", ICML 2020 (arXiv:2002.12462).

With :math:`\theta(x_i) \in \Delta^{Z}` the source model's class probabilities on target input
:math:`x_i` (Z source classes, e.g. ImageNet's 1000) and target labels :math:`y_i \in \{1..C\}`:

.. math::

    \hat P(y, z) = \frac1n \sum_{i: y_i = y} \theta(x_i)_z, \qquad
    \hat P(y \mid z) = \frac{\hat P(y, z)}{\sum_{y'} \hat P(y', z)}, \qquad
    \mathrm{LEEP} = \frac1n \sum_{i=1}^n \log \sum_{z} \hat P(y_i \mid z)\, \theta(x_i)_z .

The log-likelihood of the "expected empirical predictor" that maps source classes to target
classes through :math:`\hat P(y \mid z)`; at most 0, higher is better. It needs a source
classifier: backbones without one (random init, a custom timm head) can be ranked with LogME or
the H-score instead.

Shapes: ``source_proba`` (n, Z), rows on the simplex; ``labels`` (n,).

Example::

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); p = np.full((300, 5), 0.1); p[np.arange(300), y] = 0.6
    >>> leep(p, y) > leep(p, rng.permutation(y))
    True
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ._spectral import one_hot
from .registry import register_score


@register_score("leep", needs="source_proba", title="LEEP", citation="Nguyen et al., ICML 2020")
def leep(source_proba: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of the source model's probabilities ``source_proba`` (n, Z) for target ``labels`` (n,)."""
    p = np.asarray(source_proba, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y) or len(y) == 0:
        raise DataError(f"LEEP: source_proba must be (n, Z) and labels (n,); got shapes {p.shape} and {y.shape}.")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("LEEP: source_proba must hold probabilities (non-negative rows summing to 1); apply softmax to logits first.")
    _, y_idx = np.unique(y, return_inverse=True)
    Y = one_hot(y_idx.ravel())  # (n, C)
    joint = Y.T @ p / len(y)  # (C, Z)
    pz = joint.sum(axis=0, keepdims=True)  # (1, Z)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = (p * cond[y_idx.ravel()]).sum(axis=1)  # (n,) expected empirical prediction of the true label
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))


__all__ = ["leep"]
