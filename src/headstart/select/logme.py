r"""LogME: the log of the maximum evidence of a Bayesian linear model on the features.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021 (arXiv:2102.11005); official code github.com/thuml/LogME.

For each class :math:`c`, the target :math:`y_c = [y_i = c] \in \{0,1\}^n` is modelled as
:math:`y_c = F w + \epsilon`, :math:`w \sim N(0, \alpha^{-1} I_d)`,
:math:`\epsilon \sim N(0, \beta^{-1} I_n)`, with features :math:`F` (n, d). Its log evidence is

.. math::

    \mathcal{L}(\alpha, \beta) = \tfrac{d}{2}\log\alpha + \tfrac{n}{2}\log\beta
        - \tfrac12 \log\lvert A\rvert - \tfrac{\beta}{2}\lVert y_c - F m\rVert^2
        - \tfrac{\alpha}{2}\lVert m\rVert^2 - \tfrac{n}{2}\log 2\pi,
    \qquad A = \alpha I + \beta F^\top F,\ m = \beta A^{-1} F^\top y_c .

With :math:`F = U S V^\top` (rank r, :math:`\sigma_j = s_j^2`), :math:`x = U^\top y_c` and
:math:`t = \alpha / \beta`, everything is a sum over the r singular values:
:math:`\gamma = \sum_j \sigma_j / (\sigma_j + t)`,
:math:`\lVert m\rVert^2 = \sum_j \sigma_j x_j^2 / (\sigma_j + t)^2`,
:math:`\lVert y_c - F m\rVert^2 = \sum_j x_j^2 t^2 / (\sigma_j + t)^2 + \lVert y_c\rVert^2 - \lVert x\rVert^2`,
and the :math:`d - r` null directions of :math:`A` contribute :math:`\log\alpha` each, which cancels
against :math:`\tfrac{d}{2}\log\alpha`, leaving :math:`\tfrac{r}{2}\log\alpha - \tfrac12\sum_j\log(\alpha + \beta\sigma_j)`.
(The official code keeps :math:`\tfrac{d}{2}\log\alpha` with only the r terms, which is off by
:math:`\tfrac{d-r}{2}\log\alpha` when d > n or the features are rank deficient; this module uses
the exact evidence and is checked against direct maximisation of the Gaussian marginal likelihood
:math:`y_c \sim N(0, \beta^{-1} I + \alpha^{-1} F F^\top)` in the tests.)

:math:`\alpha, \beta` are maximised by MacKay's fixed point,
:math:`\alpha \leftarrow \gamma / \lVert m\rVert^2`, :math:`\beta \leftarrow (n - \gamma) / \lVert y_c - F m\rVert^2`,
for all classes at once (vectors of length C), with :math:`\alpha/\beta \ge` ``T_MIN`` (see
there: only binds when the labels can be interpolated exactly). The score is
:math:`\frac{1}{C}\sum_c \mathcal{L}_c(\alpha_c^*, \beta_c^*) / n` (higher is better; typically in
[-2, 2]). One decomposition of :math:`F` serves every class (:mod:`._spectral`); the maximum is
invariant to scaling :math:`F`, so the spectrum is normalised first for numerical range.

Shapes: ``features`` (n, d) float, ``labels`` (n,) of any hashable class values.

Example::

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300); f = rng.normal(size=(300, 16)); f[:, 0] += 3 * y
    >>> logme(f, y) > logme(f, rng.permutation(y))
    True
"""

from __future__ import annotations

import numpy as np

from ._spectral import Spectrum, check_inputs, spectrum
from .registry import register_score


#: Smallest ratio alpha / beta (a ridge, relative to the mean eigenvalue of F^T F). When the labels lie
#: exactly in the span of rank-deficient features (d >= n with duplicate rows, say) the evidence grows
#: without bound as beta -> inf; on the boundary t = T_MIN the maximum over beta is closed-form
#: (beta = n / (|y - Fm|^2 + t |m|^2)), so the score is finite and independent of ``max_iter``.
T_MIN = 1e-8


@register_score("logme", needs="features", title="LogME", citation="You et al., ICML 2021")
def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME score of ``features`` (n, d) for ``labels`` (n,): mean over classes of max log evidence / n."""
    f, y = check_inputs(features, labels, "LogME")
    return float(np.mean(logme_evidence(spectrum(f, y), max_iter=max_iter, tol=tol)))


def logme_evidence(sp: Spectrum, *, max_iter: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Per-class maximum log evidence divided by n, shape (C,), from a shared :class:`Spectrum`."""
    n, C = sp.n, sp.X.shape[1]
    if sp.sigma.size == 0:  # all-zero features: y = noise only, alpha irrelevant; max over beta in closed form
        beta = n / sp.counts
        return (0.5 * n * np.log(beta) - 0.5 * beta * sp.counts - 0.5 * n * np.log(2 * np.pi)) / n
    sigma = (sp.sigma / sp.sigma.mean())[:, None]  # (r, 1); scale-free, see module docstring
    r = sigma.shape[0]
    x2 = sp.X**2  # (r, C)
    res_out = np.maximum(sp.counts - x2.sum(axis=0), 0.0)  # |y|^2 - |x|^2: residual outside span(U)
    eps = 1e-12 * max(1.0, float(sp.counts.max()))
    alpha, beta = np.ones(C), np.ones(C)

    def stats(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = sigma + t  # (r, C)
        gamma = (sigma / q).sum(axis=0)
        m2 = (sigma * x2 / q**2).sum(axis=0)
        res2 = (x2 * (t / q) ** 2).sum(axis=0) + res_out
        return gamma, m2, res2

    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = stats(t)
        alpha = gamma / (m2 + eps)
        beta = np.maximum(n - gamma, eps) / (res2 + eps)
        low = alpha / beta < T_MIN
        if low.any():  # interpolation regime: maximise over beta on the boundary t = T_MIN (closed form)
            _, m2_b, res2_b = stats(np.full(C, T_MIN))
            beta = np.where(low, n / (res2_b + T_MIN * m2_b + eps), beta)
            alpha = np.where(low, T_MIN * beta, alpha)
        if np.max(np.abs(alpha / beta - t) / t) < tol:
            break
    gamma, m2, res2 = stats(alpha / beta)
    evidence = (
        0.5 * r * np.log(alpha)
        + 0.5 * n * np.log(beta)
        - 0.5 * np.log(alpha + beta * sigma).sum(axis=0)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * n * np.log(2 * np.pi)
    )
    return evidence / n


__all__ = ["logme", "logme_evidence"]
