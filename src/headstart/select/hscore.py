r"""H-score and its shrinkage-regularised variant: how much of the feature variance the labels explain.

Bao, Li, Huang, Zheng, Wang, Tsai, "An Information-Theoretic Approach to Transferability in Task
Transfer Learning", ICIP 2019:

.. math::

    H(f) = \operatorname{tr}\big(\operatorname{cov}(f)^{-1}\, \operatorname{cov}(\mathbb{E}[f \mid y])\big)

(pseudo-inverse for a singular :math:`\operatorname{cov}(f)`). With centred features :math:`F`
(n, d) and :math:`P = Y D^{-1} Y^\top` the projection on the class indicators, this is
:math:`\operatorname{tr}(P\,UU^\top) = \sum_c \lVert U^\top y_c\rVert^2 / n_c` for the left singular
vectors :math:`U` of :math:`F` (computed once, :mod:`._spectral`). It lies in :math:`[0, C-1]`.
When :math:`d \ge n-1` the features span every centred direction, :math:`UU^\top = I - \tfrac1n 11^\top`
and :math:`H = C - 1` for *any* labels: the plain score carries no information there.

Ibrahim, Ponomareva, Mazumder, "Newer is not always better: Rethinking transferability metrics,
their peculiarities, stability and performance", ECML-PKDD 2022, replace :math:`\operatorname{cov}(f)`
by the Ledoit-Wolf shrinkage estimate (Ledoit & Wolf, J. Multivariate Anal. 2004)

.. math::

    H_\alpha(f) = \operatorname{tr}\big(\Sigma_\alpha^{-1} (1-\alpha)\operatorname{cov}(\mathbb{E}[f \mid y])\big),
    \qquad \Sigma_\alpha = (1-\alpha) S + \alpha \tfrac{\operatorname{tr} S}{d} I,

with :math:`S = F^\top F / n` and :math:`\alpha` Ledoit-Wolf's optimal shrinkage, computed here in
closed form from the same spectrum and the row norms (equal to
``sklearn.covariance.ledoit_wolf_shrinkage(F, assume_centered=True)``, checked in the tests, without
its :math:`O(n d^2)` products). Stable for small n and d > n. Both covariances use :math:`1/n`.

Shapes: ``features`` (n, d) float, ``labels`` (n,). Higher is better.

Example::

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); f = rng.normal(size=(300, 16)); f[:, 0] += 3 * y
    >>> hscore(f, y) > hscore(f, rng.permutation(y))
    True
"""

from __future__ import annotations

import numpy as np

from ._spectral import Spectrum, check_inputs, spectrum
from .registry import register_score


def _centred_spectrum(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, Spectrum]:
    f, y = check_inputs(features, labels, name)
    f = f - f.mean(axis=0, keepdims=True)
    return f, spectrum(f, y)


def _class_energy(sp: Spectrum) -> np.ndarray:
    """``sum_c (U^T y_c)_j^2 / n_c`` per singular direction j, shape (r,)."""
    return (sp.X**2 / sp.counts[None, :]).sum(axis=1)


@register_score("hscore", needs="features", title="H-score", citation="Bao et al., ICIP 2019")
def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score ``tr(pinv(cov f) cov(E[f|y]))`` of ``features`` (n, d) for ``labels`` (n,)."""
    _, sp = _centred_spectrum(features, labels, "H-score")
    return float(_class_energy(sp).sum())


def ledoit_wolf_alpha(f_centred: np.ndarray, sigma: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity of centred ``f`` (n, d) given the eigenvalues ``sigma`` of ``F^T F``.

    Same formula as scikit-learn's ``ledoit_wolf_shrinkage``: with ``T = tr(F^T F)/n``,
    ``mu = T/d``, ``delta = (||F^T F||_F^2/n^2 - T^2/d)/d`` and
    ``b = (sum_i ||f_i||^4/n - ||F^T F||_F^2/n^2)/(n d)``, ``alpha = min(b, delta)/delta``.
    """
    n, d = f_centred.shape
    row2 = (f_centred**2).sum(axis=1)
    T = row2.sum() / n
    fro2 = float((sigma**2).sum()) / n**2  # ||F^T F||_F^2 / n^2 from the spectrum
    delta = (fro2 - T**2 / d) / d
    b = ((row2**2).sum() / n - fro2) / (n * d)
    b = min(b, delta)
    return 0.0 if b <= 0 or delta <= 0 else float(b / delta)


@register_score("hscore_shrink", needs="features", title="H-score (shrinkage)", citation="Ibrahim et al., ECML-PKDD 2022")
def hscore_shrinkage(features: np.ndarray, labels: np.ndarray) -> float:
    """Shrinkage-regularised H-score (Ledoit-Wolf covariance) of ``features`` (n, d) for ``labels`` (n,)."""
    f, sp = _centred_spectrum(features, labels, "H-score (shrinkage)")
    if sp.sigma.size == 0:
        return 0.0
    n, d = sp.n, sp.d
    alpha = ledoit_wolf_alpha(f, sp.sigma)
    mu = float((f**2).sum()) / n / d
    lam = (1 - alpha) * sp.sigma / n + alpha * mu  # eigenvalues of Sigma_alpha on the row space of F
    # tr(Sigma_alpha^-1 (1-alpha) F^T P F / n) in the basis V of right singular vectors.
    return float((1 - alpha) / n * (sp.sigma / lam * _class_energy(sp)).sum())


__all__ = ["hscore", "hscore_shrinkage", "ledoit_wolf_alpha"]
