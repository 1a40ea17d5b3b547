"""One eigendecomposition shared by the feature-based scores (LogME, H-score) and by every class.

For features ``F`` (n, d) and one-hot labels ``Y`` (n, C), LogME and the H-score need only

* ``sigma`` (r,): the non-zero squared singular values of ``F`` (eigenvalues of ``F^T F``),
* ``X = U^T Y`` (r, C): the labels projected on the left singular vectors ``U`` (n, r) of ``F``,

where ``r`` is the numerical rank. Both come from the eigendecomposition of the smaller Gram
matrix: ``F^T F`` (d x d) when ``n > d`` (then ``X = S^-1 V^T (F^T Y)``, ``U`` is never formed),
``F F^T`` (n x n) when ``d >= n`` (then ``U`` is its eigenvectors). Cost ``O(n d min(n, d))``, one
BLAS matrix product plus an ``eigh`` of size ``min(n, d)``; no per-class decomposition.

Rank is decided in the squared domain: eigenvalues below ``max(sigma) * max(n, d) * eps(float64)``
(rounding noise of the Gram product) are dropped, so duplicate rows or columns, constant features
and ``d > n`` give exact zeros rather than noise amplified by ``1 / s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class Spectrum:
    """``sigma`` (r,), ``X = U^T Y`` (r, C), ``counts`` (C,) samples per class, ``n`` samples, ``d`` features."""

    sigma: np.ndarray
    X: np.ndarray
    counts: np.ndarray
    n: int
    d: int


def check_inputs(features: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``features`` as float64 (n, d) and ``labels`` as class indices 0..C-1 (n,); errors name the fix."""
    f = np.asarray(features)
    y = np.asarray(labels)
    if f.ndim != 2:
        raise DataError(f"{name}: features must be a 2-D array (n_samples, n_features); got shape {f.shape}.")
    if y.ndim != 1 or len(y) != len(f):
        raise DataError(f"{name}: labels must be a 1-D array with one label per feature row ({len(f)}); got shape {y.shape}.")
    if len(f) < 2:
        raise DataError(f"{name}: needs at least 2 samples; got {len(f)}.")
    f = f.astype(np.float64, copy=False)
    if not np.isfinite(f).all():
        raise DataError(f"{name}: features contain NaN or inf; check the backbone's output (or drop those rows).")
    _, y_idx = np.unique(y, return_inverse=True)
    return f, y_idx.astype(np.int64).ravel()


def one_hot(y: np.ndarray) -> np.ndarray:
    k = int(y.max()) + 1
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh`` on one BLAS thread: OpenBLAS's threaded ``syevd`` was 5-25x slower on a
    loaded 2-core machine (1258 x 1258: 2.1-2.7 s on 2 threads, 0.27-0.45 s on 1); the Gram product,
    which does scale, runs outside this limit. The previous limits are restored on exit."""
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        return np.linalg.eigh(gram)
    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigh(gram)


def spectrum(f: np.ndarray, y: np.ndarray) -> Spectrum:
    """The shared decomposition of float64 features ``f`` (n, d) for class indices ``y`` (n,)."""
    n, d = f.shape
    Y = one_hot(y)
    gram = f.T @ f if n > d else f @ f.T  # (d, d) or (n, n); the BLAS product keeps its threads
    lam, W = _eigh(gram)
    tol = max(float(lam.max(initial=0.0)), 0.0) * max(n, d) * np.finfo(np.float64).eps
    keep = lam > tol
    sigma = lam[keep]
    if n > d:
        # U = F V S^-1, so U^T Y = S^-1 V^T (F^T Y): a (d, C) product instead of forming U (n, r).
        X = (W[:, keep].T @ (f.T @ Y)) / np.sqrt(sigma)[:, None]  # W = V
    else:
        X = W[:, keep].T @ Y  # W = U
    return Spectrum(sigma=sigma, X=X, counts=Y.sum(axis=0), n=n, d=d)
