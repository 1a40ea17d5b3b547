r"""NCE: Negative Conditional Entropy of the target labels given the source model's labels.

Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
ICCV 2019 (arXiv:1908.08142).

With :math:`z_i` the source model's (hard) label of target input :math:`x_i` (its argmax over the
Z source classes) and :math:`y_i` the target label, from the empirical joint
:math:`\hat P(y, z) = \frac1n \lvert\{i : y_i = y, z_i = z\}\rvert`:

.. math::

    \mathrm{NCE}(Y \mid Z) = -H(Y \mid Z) = \sum_{y, z} \hat P(y, z) \log \frac{\hat P(y, z)}{\hat P(z)} .

At most 0 (labels fully determined by the source labels), at least :math:`-\log C`; higher is
better. Like LEEP it needs the source model's classifier.

Shapes: ``source_labels`` (n,) source class indices (any hashable values); ``labels`` (n,).

Example::

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); z = np.where(rng.random(300) < 0.8, y, 4)
    >>> nce(z, y) > nce(z, rng.permutation(y))
    True
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .registry import register_score


@register_score("nce", needs="source_labels", title="NCE", citation="Tran et al., ICCV 2019")
def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE ``-H(Y | Z)`` of target ``labels`` (n,) given the source model's hard labels ``source_labels`` (n,)."""
    z = np.asarray(source_labels)
    y = np.asarray(labels)
    if z.ndim != 1 or y.ndim != 1 or len(z) != len(y) or len(y) == 0:
        raise DataError(f"NCE: source_labels and labels must be 1-D of the same length; got shapes {z.shape} and {y.shape}.")
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    zi, yi = zi.ravel(), yi.ravel()
    n_y = yi.max() + 1
    joint = np.bincount(zi * n_y + yi, minlength=(zi.max() + 1) * n_y).reshape(-1, n_y) / len(y)  # (Z, C)
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / np.broadcast_to(pz, joint.shape)[nz])).sum())


__all__ = ["nce"]
