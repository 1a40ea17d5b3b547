"""In-memory image arrays (numpy, or a ``.npz`` file) as a labeled dataset, or as its splits.

Images may be ``(N, H, W)``, ``(N, H, W, 1|3)`` or ``(N, 1|3, H, W)``, uint8, bool, other integers
or floats; they are normalised to uint8 ``(N, H, W, 3)``. Value range: uint8 as is; otherwise
``value_range=(lo, hi)`` if given (e.g. ``(0, 16)`` for ``sklearn.datasets.load_digits``), else
inferred: ``[0, 1]`` if the maximum is at most 1, ``[0, 65535]`` for uint16, else ``[0, 255]``.
Labels are class indices (ints) or class names (strings; classes then sorted by name).

A ``.npz`` file may also hold its own splits (:func:`load_npz_splits`), in MedMNIST's layout
(``train_images``/``train_labels``, ``val_...``, ``test_...``) or Keras' (``x_train``/``y_train``,
``x_test``/``y_test``, optionally ``x_val``/``y_val``); labels of shape ``(N, 1)``, as MedMNIST
saves them, are flattened.
"""

from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np

from ..errors import DataError
from .checks import check_file, validate_dataset
from .dataset import LabeledDataset, Splits

#: Key pairs accepted in a ``.npz`` file, in order of preference: (images, labels).
NPZ_KEYS = (("x", "y"), ("images", "labels"), ("X", "y"))

#: Split layouts of a ``.npz`` file: layout name -> {split: (images key, labels key)}.
NPZ_SPLIT_LAYOUTS = {
    "MedMNIST": {s: (f"{s}_images", f"{s}_labels") for s in ("train", "val", "test")},
    "Keras": {s: (f"x_{s}", f"y_{s}") for s in ("train", "val", "test")},
}


def from_arrays(
    images,
    labels,
    classes: Sequence[str] | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    source: str = "arrays",
    min_per_class: int = 0,
) -> LabeledDataset:
    """A labeled dataset of uint8 ``(N, H, W, 3)`` images from numpy arrays (see module doc).

    ``classes`` names the classes: with integer labels, label ``i`` is ``classes[i]`` (default: the
    distinct labels, as strings); with string labels, it fixes their order. Not validated by
    default, so that unlabeled inputs (e.g. for ``predict``, one dummy class) can be wrapped; pass
    ``min_per_class=2`` to check the data is fit for training (see ``validate_dataset``).
    """
    x = to_uint8_images(images, value_range)
    y, names = _labels(labels, classes)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; give one label per image")
    ds = LabeledDataset(x, y, names, "image", source)
    return validate_dataset(ds, min_per_class=min_per_class, what="arrays") if min_per_class else ds


def load_npz(
    path: str | os.PathLike, *, classes: Sequence[str] | None = None, min_per_class: int = 2, **kwargs
) -> LabeledDataset:
    """Load images and labels from a ``.npz`` file with keys ``x``/``y`` (or ``images``/``labels``).

    An optional ``classes`` array in the file names the classes. The result is validated with
    ``min_per_class`` (0 disables validation); other keyword arguments go to :func:`from_arrays`.
    """
    path, arrays = _read_npz(path)
    keys = next(((a, b) for a, b in NPZ_KEYS if a in arrays and b in arrays), None)
    if keys is None:
        raise DataError(f"{path} has arrays {sorted(arrays)}; expected images and labels under 'x' and 'y' "
                        "(or 'images' and 'labels'), or splits as MedMNIST ('train_images', 'train_labels', 'val_...', "
                        "'test_...') or Keras ('x_train', 'y_train', 'x_test', 'y_test') save them: numpy.savez(path, x=images, y=labels)")
    if classes is None and "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
    return from_arrays(arrays[keys[0]], arrays[keys[1]], classes, source=f"npz:{path}",
                       min_per_class=min_per_class, **kwargs)


def load_npz_splits(path: str | os.PathLike, *, classes: Sequence[str] | None = None) -> Splits | None:
    """The splits a ``.npz`` file holds (see :data:`NPZ_SPLIT_LAYOUTS`), or None if it holds none.

    ``train`` and ``test`` are required; ``val`` is optional (``None`` in the result: the caller
    splits it off the training split). Class names: ``classes``, else a ``classes`` array in the file.
    A half-filled layout (images without labels, or a split without ``train``/``test``) is an error
    that lists the arrays found and the ones expected.
    """
    path, arrays = _read_npz(path)
    found = {name: {s: ks for s, ks in layout.items() if set(ks) & set(arrays)} for name, layout in NPZ_SPLIT_LAYOUTS.items()}
    name = max(found, key=lambda n: len(found[n]))
    if not found[name]:
        return None
    layout = found[name]
    missing = [k for ks in layout.values() for k in ks if k not in arrays] + [
        k for s in ("train", "test") if s not in layout for k in NPZ_SPLIT_LAYOUTS[name][s]]
    if missing:
        expected = ", ".join(k for s in ("train", "val", "test") for k in NPZ_SPLIT_LAYOUTS[name][s])
        raise DataError(f"{path} holds part of the {name} split layout: arrays {sorted(arrays)}, missing {missing}. Fix: save "
                        f"{expected} ('val' may be left out: it is then split off 'train'), or one dataset as x and y")
    if classes is None and "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
    ys = {s: arrays[ks[1]].reshape(-1) if arrays[ks[1]].ndim == 2 and arrays[ks[1]].shape[1] == 1 else arrays[ks[1]]
          for s, ks in layout.items()}
    for s, ks in layout.items():
        if len(arrays[ks[0]]) != len(ys[s]):
            raise DataError(f"{path}: {len(arrays[ks[0]])} images under {ks[0]!r} but {len(ys[s])} labels under {ks[1]!r}; "
                            "give one label per image")
    # One coding of the labels over all splits, so that a class missing from one split keeps its index.
    codes, names = _labels(np.concatenate([ys[s] for s in layout]), classes)
    ends = np.cumsum([len(ys[s]) for s in layout])
    parts = {s: from_arrays(arrays[layout[s][0]], c, names, source=f"npz:{path}:{s}")
             for s, c in zip(layout, np.split(codes, ends[:-1]))}
    validate_dataset(parts["train"], min_per_class=2, what=f"the 'train' split of {path.name}")
    return Splits(parts["train"], parts.get("val"), parts["test"])


def _read_npz(path: str | os.PathLike) -> tuple[os.PathLike, dict[str, np.ndarray]]:
    path = check_file(path, ".npz file").resolve()
    try:
        with np.load(path, allow_pickle=False) as npz:
            return path, {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); "
                        "save it with numpy.savez(path, x=..., y=...)") from None
    except ValueError as e:
        raise DataError(f"{path} holds object arrays ({e}); save labels as ints or a str array "
                        "(np.asarray(labels, dtype=str)), not Python objects") from None


def to_uint8_images(images, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Normalise an image batch to uint8 ``(N, H, W, 3)`` (see the module doc for the rules)."""
    x = np.asarray(images)
    x = _channels_last(x)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype.kind in "iuf":
        x = _rescale(x, value_range)
    else:
        raise DataError(f"images must be numeric arrays; got dtype {x.dtype}")
    return np.ascontiguousarray(np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x)


def _channels_last(x: np.ndarray) -> np.ndarray:
    """``(N,H,W)`` -> ``(N,H,W,1)``; ``(N,C,H,W)`` with C in 1, 3 -> ``(N,H,W,C)``."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x.transpose(0, 2, 3, 1)
    raise DataError(f"images must be (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W); got shape {x.shape}. "
                    "Drop an alpha channel with images[..., :3]")


def _rescale(x: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise DataError("images contain NaN or infinite values; clean them before loading")
    if value_range is None:
        lo, hi = float(x.min(initial=0)), float(x.max(initial=0))
        if lo < 0:
            raise DataError(f"images have negative values (min {lo:g}); pass value_range=(lo, hi) "
                            "to map them to 0-255, e.g. value_range=(-1, 1) for normalised images")
        value_range = (0.0, 1.0) if hi <= 1 else (0.0, 65535.0) if x.dtype.kind == "u" and hi > 255 else (0.0, 255.0)
        if hi > value_range[1]:
            raise DataError(f"image values go up to {hi:g}; pass value_range=(lo, hi) to map them to 0-255")
    lo, hi = value_range
    if hi <= lo:
        raise DataError(f"value_range must be (lo, hi) with lo < hi; got {value_range}")
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _labels(labels, classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional (one per image); got shape {y.shape}")
    if y.dtype.kind in "USO":
        codes, names = encode_labels([str(v) for v in y], classes)
        unknown = sorted({str(v) for v, c in zip(y, codes) if c < 0})
        if unknown:
            raise DataError(f"labels {unknown[:5]} are not among classes {list(names)}; add them to classes")
        return codes, names
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise DataError(f"labels must be integers or strings; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if classes is None:
        values = np.unique(y)
        return np.searchsorted(values, y).astype(np.int64), [str(v) for v in values]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"integer labels must index classes (0..{len(classes) - 1}); got {y.min()}..{y.max()}")
    return y, [str(c) for c in classes]


def encode_labels(labels: Sequence[str], classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Class indices for string ``labels`` (-1 where not in ``classes``) and the class names.

    Default classes: the distinct labels, sorted numerically if all are integers, else by name.
    """
    if classes is None:
        distinct = set(labels)
        numeric = all(s.lstrip("-").isdigit() for s in distinct)
        classes = sorted(distinct, key=(lambda s: (int(s), s)) if numeric else None)
    names = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(names)}
    return np.array([index.get(s, -1) for s in labels], dtype=np.int64), names
