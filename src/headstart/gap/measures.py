r"""How far apart two samples of features are: four measures, pure functions on arrays.

``x`` ``(n, D)`` holds one domain's features, ``y`` ``(m, D)`` the other's.

- :func:`mmd_test`: the unbiased multi-kernel MMD² (Gretton et al. 2012, JMLR 13; the kernels and
  the estimate are :mod:`headstart.methods.divergence`'s, the same the adaptation losses use) and
  its permutation p-value: with :math:`T_0` the observed statistic and :math:`T_1 \dots T_B` the
  statistics of ``B`` random re-splits of the pooled sample into sizes ``n`` and ``m``,

  .. math:: p = \frac{1 + \#\{b : T_b \ge T_0\}}{1 + B},

  which is a valid p-value (never 0) for any ``B`` (Phipson & Smyth 2010).
- :func:`coral_distance`: :math:`\lVert C_x - C_y \rVert_F^2 / (4 d^2)` (Sun & Saenko 2016), the
  Deep CORAL loss.
- :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between the Gaussians fitted to
  the two samples (Dowson & Landau 1982; as FID, Heusel et al. 2017):

  .. math:: \lVert \mu_x - \mu_y \rVert^2 + \mathrm{Tr}\big(C_x + C_y - 2 (C_x C_y)^{1/2}\big),

  with :math:`\mathrm{Tr}(C_x C_y)^{1/2} = \sum_i \sqrt{\lambda_i}`, :math:`\lambda_i` the
  eigenvalues of the symmetric :math:`C_x^{1/2} C_y C_x^{1/2}` (similar to :math:`C_x C_y`; as in
  Mathiasen & Hvilshøj 2020): two symmetric eigen-decompositions, real by construction, tiny
  negative eigenvalues clamped to 0; no general ``sqrtm`` and its complex round-off. With fewer
  items than dimensions it is the sum of the singular values of :math:`A B^\top` instead
  (:math:`C_x = A^\top A`, :math:`C_y = B^\top B`), the same number without a singular ``D x D`` problem.
- :func:`proxy_a_distance`: :math:`\mathrm{PAD} = 2 (1 - 2 \epsilon)` (Ben-David et al. 2007;
  Ganin et al. 2016), :math:`\epsilon` the k-fold cross-validated error of a linear domain
  classifier (standardised features, logistic regression) on a balanced sample of the two
  domains: 0 when it is at chance, 2 when it never errs (slightly negative values are chance too).

CORAL and Fréchet grow with the feature scale and shrink with neither sample size, so each comes
with its *no-shift reference* (``*_null``): the same measure between a random re-split of the
pooled sample into sizes ``n`` and ``m``, what no shift at all gives with these samples.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0
    >>> mmd_test(x, y, n_perm=99)["p_value"]
    0.01
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..methods.divergence import MMD_MULTIPLIERS, coral, kernel_matrix, median_sq_distance, mmd2_from_kernel

#: The fewest items of each domain the measures accept (the 5-fold domain classifier needs 5 of each).
MIN_ITEMS = 5

# The domain classifier's penalty and tolerance. Measured on EfficientNet-Lite0 features (1,280-d,
# 1,000 items per domain, 5 folds, 2 cores): on a moderate shift (MNIST against MNIST at 85 %
# contrast) C=0.01 gave the lowest CV error of C in {1, 0.1, 0.01, 0.001} (0.196; 0.215 at C=1), so
# the least under-estimated PAD, and on two halves of MNIST the fit took 8 s instead of 34 s (lbfgs
# converges sooner with a stronger penalty); tol=1e-3 gave the same errors (0.196, 0.493) as the
# default 1e-4, in 5 s.
PAD_C = 0.01
PAD_TOL = 1e-3


def _rows(a: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"features must be a 2-D array (items, dims); got shape {tuple(t.shape)}")
    return t


def _check_pair(x: torch.Tensor, y: torch.Tensor, least: int = 2) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the two samples must have the same feature dimension; got {x.shape[1]} and {y.shape[1]}")
    if len(x) < least or len(y) < least:
        raise ValueError(f"each sample needs at least {least} items; got {len(x)} and {len(y)}")


def permutation_mmd2(k: torch.Tensor, in_x: torch.Tensor) -> torch.Tensor:
    r"""The unbiased MMD² of :func:`~headstart.methods.divergence.mmd2_from_kernel` for many splits at once.

    ``k``: the pooled kernel matrix ``(N, N)``; ``in_x``: ``(B, N)`` 0/1 rows, each marking the ``n``
    items of one split's first sample. Equal to ``mmd2_from_kernel(k[p][:, p], n)`` for the
    permutation ``p`` that puts those items first, but one matrix product for all ``B`` splits
    instead of ``B`` gathers of the whole matrix (2,000 items, 200 splits: 0.2 s instead of 14 s).
    With :math:`a` a row, :math:`b = 1 - a`, :math:`r = K1`, :math:`\delta = \mathrm{diag} K`:
    :math:`\sum_{XX} = a^\top K a - a^\top\delta`, :math:`\sum_{YY} = 1^\top r - 2a^\top r + a^\top K a - b^\top\delta`,
    :math:`\sum_{XY} = a^\top r - a^\top K a`.
    """
    a = in_x.to(k.dtype)
    n = a[0].sum()
    m = k.shape[0] - n
    diag, r = k.diagonal(), k.sum(1)
    aka = ((a @ k) * a).sum(1)
    ar, ad = a @ r, a @ diag
    sxx = (aka - ad) / (n * (n - 1))
    syy = (r.sum() - 2 * ar + aka - (diag.sum() - ad)) / (m * (m - 1))
    return sxx + syy - 2.0 * (ar - aka) / (n * m)


def mmd_test(x: Any, y: Any, *, n_perm: int = 200, seed: int = 0) -> dict[str, Any]:
    """Multi-kernel MMD² between ``x`` and ``y`` and its permutation p-value (see the module doc).

    The Gaussian kernels are :data:`~headstart.methods.divergence.MMD_MULTIPLIERS` times the median
    squared distance of the pooled sample; the pooled kernel matrix is computed once and each
    permutation only re-splits its indices (``torch.randperm`` seeded by ``seed``: the same seed
    gives the same p-value). Returns ``mmd2``, ``p_value``, ``n_perm``, ``null_q95`` (the 95th
    percentile of the permutation statistics) and ``median_sq_distance``.
    """
    x, y = _rows(x), _rows(y)
    _check_pair(x, y)
    if not isinstance(n_perm, int) or n_perm < 1:
        raise ValueError(f"The 'n_perm' parameter must be a positive integer; got {n_perm!r}.")
    z = torch.cat([x, y])
    med = median_sq_distance(z).double()
    k = kernel_matrix(z, [med * s for s in MMD_MULTIPLIERS])
    n, total = len(x), len(z)
    observed = float(mmd2_from_kernel(k, n))
    gen = torch.Generator().manual_seed(int(seed))
    stats = []
    for start in range(0, n_perm, 256):  # bounded memory for many permutations
        b = min(256, n_perm - start)
        in_x = torch.zeros(b, total, dtype=k.dtype)
        for i in range(b):
            in_x[i, torch.randperm(total, generator=gen)[:n]] = 1.0
        stats.append(permutation_mmd2(k, in_x))
    perm = torch.cat(stats).numpy()
    # a small tolerance: a permutation that reproduces the split exactly must count as >=
    exceed = int(np.sum(perm >= observed - 1e-12 * max(1.0, abs(observed))))
    return {
        "mmd2": observed,
        "p_value": (1 + exceed) / (1 + n_perm),
        "n_perm": n_perm,
        "null_q95": float(np.quantile(perm, 0.95)),
        "median_sq_distance": float(med),
    }


def coral_distance(x: Any, y: Any) -> float:
    """CORAL distance ``||C_x - C_y||_F^2 / (4 d^2)`` (Sun & Saenko 2016): :func:`~headstart.methods.divergence.coral`."""
    x, y = _rows(x), _rows(y)
    _check_pair(x, y)
    return float(coral(x, y))


def frechet_distance(x: Any, y: Any) -> float:
    """Fréchet distance between the Gaussians fitted to ``x`` and ``y`` (see the module doc); >= 0."""
    x, y = _rows(x), _rows(y)
    _check_pair(x, y)
    x, y = x.double(), y.double()
    a = (x - x.mean(0)) / max(len(x) - 1, 1) ** 0.5  # C_x = a^T a
    b = (y - y.mean(0)) / max(len(y) - 1, 1) ** 0.5  # C_y = b^T b
    mean_term = float((x.mean(0) - y.mean(0)).pow(2).sum())
    traces = float(a.pow(2).sum() + b.pow(2).sum())
    return max(mean_term + traces - 2.0 * _trace_sqrt_product(a, b), 0.0)  # round-off: tiny negatives for identical samples


def _trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> float:
    """``Tr (C_x C_y)^(1/2)`` for ``C_x = a^T a``, ``C_y = b^T b``.

    It is the nuclear norm of ``a b^T`` ``(n, m)``: the eigenvalues of ``C_x C_y`` are the squared
    singular values of ``a b^T``. That form is exact and needs no eigen-decomposition of a singular
    ``(D, D)`` matrix, so it is used when the samples are smaller than the dimension (LAPACK's
    ``eigh`` fails to converge on such rank-deficient covariances, as 16 images of 1,280 mostly-zero
    features showed) and as the fallback when ``eigh`` fails; otherwise the ``(D, D)`` route is cheaper.
    """
    if min(len(a), len(b)) <= a.shape[1]:
        return float(torch.linalg.svdvals(a @ b.T).sum())
    cx, cy = a.T @ a, b.T @ b
    try:
        lam, vec = torch.linalg.eigh(cx)
        sx = (vec * lam.clamp_min(0).sqrt()) @ vec.T  # C_x^(1/2), symmetric
        inner = sx @ cy @ sx
        return float(torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum())
    except torch.linalg.LinAlgError:
        return float(torch.linalg.svdvals(a @ b.T).sum())


def proxy_a_distance(x: Any, y: Any, *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Proxy A-distance ``2 (1 - 2 eps)`` of a linear domain classifier (see the module doc).

    The larger sample is subsampled (seeded) to the size of the smaller, so that chance is an error
    of 0.5; ``eps`` is the mean error of a ``folds``-fold stratified cross-validation (shuffled with
    ``seed``) of scikit-learn's ``StandardScaler`` + ``LogisticRegression`` (:data:`PAD_C`,
    :data:`PAD_TOL`). Returns ``pad``, ``error``, ``error_std`` (over folds), ``folds`` and ``n_per_domain``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check_pair(_rows(x[:2]), _rows(y[:2]))
    k = min(len(x), len(y))
    if k < max(2, folds):
        raise ValueError(f"the domain classifier's {folds}-fold cross-validation needs at least {folds} items of each domain; got {len(x)} and {len(y)}")
    rng = np.random.default_rng([int(seed), 1])
    xs = x[np.sort(rng.choice(len(x), k, replace=False))]
    ys = y[np.sort(rng.choice(len(y), k, replace=False))]
    feats = np.concatenate([xs, ys])
    domain = np.repeat([0, 1], k)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=PAD_C, tol=PAD_TOL, max_iter=1000))
    acc = cross_val_score(clf, feats, domain, cv=StratifiedKFold(folds, shuffle=True, random_state=int(seed)), scoring="accuracy")
    err = float(1.0 - acc.mean())
    return {"pad": 2.0 * (1.0 - 2.0 * err), "error": err, "error_std": float(acc.std()), "folds": folds, "n_per_domain": k}


def null_split(x: Any, y: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random re-split of the pooled ``x`` and ``y`` into samples of their sizes: the two domains
    made one, so any distance between the halves is what sampling alone gives."""
    x, y = np.asarray(x), np.asarray(y)
    z = np.concatenate([x, y])
    p = np.random.default_rng([int(seed), 2]).permutation(len(z))
    return z[p[: len(x)]], z[p[len(x):]]


def gap_measures(x: Any, y: Any, *, n_perm: int = 200, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Every measure of the module between ``x`` and ``y``, flat, with their seconds.

    Keys: ``mmd2``, ``mmd_p_value``, ``mmd_n_perm``, ``mmd_null_q95``, ``coral``, ``coral_null``,
    ``frechet``, ``frechet_null``, ``pad``, ``pad_error``, ``pad_error_std``, ``pad_folds``,
    ``n_source``, ``n_target``, ``dim`` and ``seconds`` (per measure, the null included).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check_pair(_rows(x[:2]), _rows(y[:2]))
    if len(x) < MIN_ITEMS or len(y) < MIN_ITEMS:
        raise ValueError(f"the gap measures need at least {MIN_ITEMS} items of each domain; got {len(x)} and {len(y)}")
    secs: dict[str, float] = {}
    t = time.perf_counter()
    mmd = mmd_test(x, y, n_perm=n_perm, seed=seed)
    secs["mmd"] = time.perf_counter() - t
    nx, ny = null_split(x, y, seed)
    t = time.perf_counter()
    cor, cor_null = coral_distance(x, y), coral_distance(nx, ny)
    secs["coral"] = time.perf_counter() - t
    t = time.perf_counter()
    fd, fd_null = frechet_distance(x, y), frechet_distance(nx, ny)
    secs["frechet"] = time.perf_counter() - t
    t = time.perf_counter()
    pad = proxy_a_distance(x, y, folds=min(folds, len(x), len(y)), seed=seed)
    secs["pad"] = time.perf_counter() - t
    return {
        "mmd2": mmd["mmd2"], "mmd_p_value": mmd["p_value"], "mmd_n_perm": mmd["n_perm"], "mmd_null_q95": mmd["null_q95"],
        "coral": cor, "coral_null": cor_null,
        "frechet": fd, "frechet_null": fd_null,
        "pad": pad["pad"], "pad_error": pad["error"], "pad_error_std": pad["error_std"], "pad_folds": pad["folds"],
        "n_source": len(x), "n_target": len(y), "dim": int(x.shape[1]),
        "seconds": {k: round(v, 3) for k, v in secs.items()},
    }
