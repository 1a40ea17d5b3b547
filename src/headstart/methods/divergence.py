r"""Distances between two samples of features, differentiable (torch): the losses of the adaptation
methods and the measures of ``headstart gap`` are the same functions.

Multi-kernel MMD (Gretton et al. 2012; Long et al. 2015, DAN). With the kernel
:math:`k = \frac1M \sum_m k_{\sigma_m}`, :math:`k_\sigma(a, b) = \exp(-\lVert a-b\rVert^2 / (2\sigma^2))`,
the unbiased estimate of the squared MMD between :math:`X = \{x_i\}_{i=1}^n` and
:math:`Y = \{y_j\}_{j=1}^m` is

.. math::

    \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)} \sum_{i \ne i'} k(x_i, x_{i'})
      + \frac{1}{m(m-1)} \sum_{j \ne j'} k(y_j, y_{j'}) - \frac{2}{nm} \sum_{i,j} k(x_i, y_j).

It can be slightly negative when the two samples come from one distribution. The bandwidth family is
:math:`2\sigma_m^2 = \mathrm{med} \cdot 2^m`, :math:`m \in \{-2, \dots, 2\}`, around the median
squared distance of the pooled sample (the median heuristic).

Deep CORAL (Sun & Saenko 2016): with :math:`C_S, C_T` the (unbiased) feature covariances and
:math:`d` the feature dimension,

.. math::

    \ell_{\mathrm{CORAL}} = \frac{1}{4 d^2} \lVert C_S - C_T \rVert_F^2 .
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Bandwidth multipliers of the multi-kernel MMD: 2**m, m = -2..2, times the median squared distance.
MMD_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


def median_sq_distance(z: torch.Tensor) -> torch.Tensor:
    """The median of the pairwise squared distances between the rows of ``z`` (``i < j``), no gradient."""
    with torch.no_grad():
        d = torch.cdist(z.float(), z.float()).pow(2)
        iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
        med = d[iu[0], iu[1]].median() if len(z) > 1 else torch.ones((), device=z.device)
    return med.clamp_min(1e-12)


def kernel_matrix(z: torch.Tensor, scales: Sequence[float] | torch.Tensor) -> torch.Tensor:
    r"""The mean of the Gaussian kernels :math:`\exp(-\lVert a-b\rVert^2 / s)` over ``scales`` (each :math:`2\sigma^2`), ``(N, N)``."""
    d = torch.cdist(z, z).pow(2)
    s = torch.as_tensor(scales, dtype=d.dtype, device=d.device).reshape(-1, 1, 1)
    return torch.exp(-d.unsqueeze(0) / s).mean(0)


def mmd2_from_kernel(k: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased MMD² from the pooled kernel matrix ``k`` whose first ``n`` rows are one sample."""
    m = k.shape[0] - n
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 items in each sample; got {n} and {m}.")
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()


def mk_mmd2(x: torch.Tensor, y: torch.Tensor, *, multipliers: Sequence[float] = MMD_MULTIPLIERS,
            median: torch.Tensor | float | None = None) -> torch.Tensor:
    """Unbiased multi-kernel MMD² between the rows of ``x`` ``(n, D)`` and ``y`` ``(m, D)`` (see the module doc).

    ``median``: the squared distance the bandwidths scale (default: the pooled sample's median)."""
    z = torch.cat([x, y]).float()
    med = median_sq_distance(z) if median is None else torch.as_tensor(median, dtype=z.dtype, device=z.device)
    return mmd2_from_kernel(kernel_matrix(z, [med * s for s in multipliers]), len(x))


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The unbiased covariance ``(D, D)`` of the rows of ``x``."""
    x = x.float()
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / max(len(x) - 1, 1)


def coral(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss between the rows of ``x`` and ``y``: ``||C_x - C_y||_F^2 / (4 d^2)``."""
    d = x.shape[1]
    return (covariance(x) - covariance(y)).pow(2).sum() / (4.0 * d * d)
