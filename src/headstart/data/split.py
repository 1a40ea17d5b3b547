"""Seeded, stratified train/val/test splits of one labeled dataset.

The split is scikit-learn's ``train_test_split(..., stratify=labels)``, twice (train vs. held out,
then held out into val and test). When a class is too small for that (scikit-learn refuses, or a
class would be missing from train) we fall back, with a logged warning, to a per-class split that
gives each class ``round(n * fraction)`` held-out items but always keeps at least one in train; so
small classes may be absent from val or test, never from train. Splits that end up empty are
``None``.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError
from .dataset import LabeledDataset, Splits

logger = logging.getLogger("headstart.data")


def stratified_split(ds: LabeledDataset, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Splits:
    """Split ``ds`` into train/val/test with the class proportions of ``ds`` in each.

    ``val`` and ``test`` are fractions of the whole (0 turns that split off). The same
    ``(ds, val, test, seed)`` always gives the same split. Skipped items (``ds.problems``) are
    carried on the train split so they stay reported.
    """
    _check_fractions(val, test)
    if val + test == 0:
        return Splits(train=ds)
    try:
        parts = _sklearn_split(ds.labels, val, test, seed)
    except ValueError as e:
        logger.warning("%s: too few items per class for a stratified split (%s); splitting each class "
                       "on its own, keeping at least one item of each class in train", ds.source or "dataset", e)
        parts = _per_class_split(ds.labels, val, test, seed)
    train_idx, val_idx, test_idx = parts
    train = ds.subset(np.sort(train_idx))
    train.problems = list(ds.problems)
    return Splits(train=train, val=_subset_or_none(ds, val_idx, "val", val),
                  test=_subset_or_none(ds, test_idx, "test", test))


def _check_fractions(val: float, test: float) -> None:
    for name, value in (("val", val), ("test", test)):
        if not 0 <= value < 1:
            raise DataError(f"the {name!r} fraction must be in [0, 1); got {value!r}")
    if val + test >= 1:
        raise DataError(f"val + test must be below 1 to leave data for training; got {val} + {test} = {val + test}")


def _sklearn_split(labels: np.ndarray, val: float, test: float, seed: int):
    """Two stratified ``train_test_split`` calls; ValueError if a class is too small for them."""
    from sklearn.model_selection import train_test_split  # imported on use: it costs ~1 s at start-up

    index = np.arange(len(labels))
    n_hold = int(round(len(labels) * (val + test)))  # counts, not fractions: no float rounding surprises
    train_idx, hold_idx = train_test_split(index, test_size=n_hold, stratify=labels, random_state=seed)
    if val == 0 or test == 0:
        val_idx, test_idx = (hold_idx, hold_idx[:0]) if test == 0 else (hold_idx[:0], hold_idx)
    else:
        n_test = int(round(len(labels) * test))
        val_idx, test_idx = train_test_split(hold_idx, test_size=n_test, stratify=labels[hold_idx], random_state=seed)
    if len(np.unique(labels[train_idx])) < len(np.unique(labels)):
        raise ValueError("a class would be missing from train")
    return train_idx, val_idx, test_idx


def _per_class_split(labels: np.ndarray, val: float, test: float, seed: int):
    """Per class: shuffle, hold out ``round(n * (val + test))`` items (at most n - 1), share them."""
    rng = np.random.default_rng(seed)
    train, val_out, test_out = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_hold = min(len(idx) - 1, int(round(len(idx) * (val + test))))
        n_test = int(round(n_hold * test / (val + test)))
        train.append(idx[n_hold:])
        test_out.append(idx[:n_test])
        val_out.append(idx[n_test:n_hold])
    return tuple(np.concatenate(p).astype(np.int64) for p in (train, val_out, test_out))


def _subset_or_none(ds: LabeledDataset, index: np.ndarray, name: str, fraction: float) -> LabeledDataset | None:
    if len(index) == 0:
        if fraction > 0:
            logger.warning("%s: the %s split is empty (dataset too small)", ds.source or "dataset", name)
        return None
    return ds.subset(np.sort(index))
