"""Temperature scaling: one scalar that makes a classifier's probabilities honest (Guo et al. 2017).

"On Calibration of Modern Neural Networks" (ICML 2017): divide the logits ``z`` by a single
temperature ``T > 0`` fitted on held-out data by minimising the negative log-likelihood

.. math::  T^* = \\arg\\min_T \\; -\\frac{1}{n} \\sum_i \\log \\mathrm{softmax}(z_i / T)_{y_i}

``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one. The argmax
never changes (nor, for a binary model, the ranking of ``p(classes[1])``: ROC-AUC is unchanged), so
accuracy and AUC stay; what changes is what the probabilities mean (ECE, NLL, and the threshold
value of an operating point). The NLL is convex in ``1/T`` (a log-sum-exp of a linear function
minus a linear one), so a bounded 1-D search over ``log T`` finds the global minimum
(:func:`scipy.optimize.minimize_scalar`); scikit-learn has no temperature scaling (its
``CalibratedClassifierCV`` fits Platt/isotonic maps per class, which can change the argmax).

``fit --calibrate temperature`` fits ``T`` on the validation split (never on test) and stores it in
``model.json`` (``info.calibration``); ``Model.predict_proba`` divides the logits by it.

Shapes: ``logits`` ``(n, K)`` float, ``labels`` ``(n,)`` int. Example::

    t = fit_temperature(z_val, y_val)          # 1.83: the model was over-confident
    p = scaled_proba(z_test, t)                # softmax(z / t)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .metrics import expected_calibration_error

log = logging.getLogger("headstart")

#: The range searched for ``T``: wide enough for any real model, bounded so that a separable
#: validation set (NLL falling forever as ``T -> 0``) gives a finite answer.
T_BOUNDS = (0.05, 20.0)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    from scipy.special import logsumexp

    return z - logsumexp(z, axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at the true labels (masked ``-inf`` logits allowed)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(labels, dtype=np.int64)
    return float(-_log_softmax(z)[np.arange(len(y)), y].mean()) if len(y) else float("nan")


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature minimising :func:`nll` of ``labels`` under ``softmax(logits / T)``, searched over ``log T`` in ``bounds``."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature needs (n, K) logits and n labels, n > 0; got logits {z.shape} and {len(y)} labels.")
    if (z.argmax(1) == y).all():  # no mistake to learn over-confidence from: the NLL falls forever as T -> 0
        log.info("temperature scaling: every validation item is predicted right, so the NLL has no minimum; T = 1 (unscaled)")
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda u: nll(z, y, np.exp(u)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0  # never worse than no scaling on the data it is fit on


def scaled_proba(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)``, rows summing to 1."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / float(temperature)))


def unscaled_proba(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling, from those after it: ``softmax(T log p)`` (softmax
    forgets a per-row constant, so ``log p`` stands for the logits). For a report drawn from
    ``predictions.csv`` alone; probabilities stored as 0 stay 0."""
    with np.errstate(divide="ignore"):
        return scaled_proba(np.log(np.asarray(proba, dtype=np.float64)) * float(temperature), 1.0)


def calibration_figures(labels: np.ndarray, logits: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE (15 bins) and NLL before (``T = 1``) and after scaling by ``temperature``."""
    y = np.asarray(labels, dtype=np.int64)
    return {"ece_before": expected_calibration_error(y, scaled_proba(logits, 1.0)), "ece_after": expected_calibration_error(y, scaled_proba(logits, temperature)),
            "nll_before": nll(logits, y, 1.0), "nll_after": nll(logits, y, temperature)}


def fit_calibration(method: str, logits_val: np.ndarray | None, y_val: np.ndarray | None) -> dict[str, Any] | None:
    """What ``model.json`` stores as ``info.calibration`` for ``method`` (``"temperature"``), fit on the
    validation logits and labels; ``None`` for ``"none"``, or without a validation split (logged:
    the probabilities are then the model's own)."""
    if method == "none":
        return None
    if logits_val is None or y_val is None or len(y_val) == 0:
        log.info("calibration %s skipped: the run has no validation split to fit it on", method)
        return None
    t = fit_temperature(logits_val, y_val)
    figures = {k: round(v, 6) for k, v in calibration_figures(y_val, logits_val, t).items()}
    log.info("temperature scaling: T = %.3f fit on %d validation items (NLL %.4f -> %.4f, ECE %.4f -> %.4f)", t, len(y_val),
             figures["nll_before"], figures["nll_after"], figures["ece_before"], figures["ece_after"])
    return {"method": method, "temperature": round(t, 6), "fit_on": "val", "n": int(len(y_val)), "val": figures}


def split_figures(labels: np.ndarray, proba: np.ndarray, temperature: float) -> dict[str, Any]:
    """``metrics.json``'s ``calibration`` entry of an evaluated split: ECE and NLL before and after
    scaling, from the calibrated ``proba`` and the run's ``temperature``."""
    y = np.asarray(labels, dtype=np.int64)
    with np.errstate(divide="ignore"):
        logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-300, 1.0)) * float(temperature)  # the logits up to a per-row constant
    return {"method": "temperature", "temperature": float(temperature), **{k: round(v, 6) for k, v in calibration_figures(y, logits, temperature).items()}}
