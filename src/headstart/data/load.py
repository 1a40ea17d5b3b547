"""One entry point from "what the user typed" to train/val/test splits.

Accepted sources:

- a folder of class folders, or of ``train/`` (``val/``, ``test/``) split folders;
- a ``.csv`` manifest (``path,label`` columns) or a ``.npz`` file (``x``/``y`` arrays);
- a built-in set by name: ``"shapes"`` or ``"shapes:star,pentagon,hexagon"``;
- a :class:`LabeledDataset` (split here) or a :class:`Splits` (returned as is).

File types and built-in sets are registered by name (:func:`register_file_type`,
:func:`register_builtin`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .arrays import load_npz
from .checks import validate_dataset
from .dataset import LabeledDataset, Splits
from .folders import load_image_folder, load_image_splits
from .manifest import load_manifest
from .shapes import make_shapes
from .split import stratified_split

_FILE_TYPES: dict[str, Callable[..., LabeledDataset]] = {}
_BUILTINS: dict[str, Callable[..., LabeledDataset]] = {}


def register_file_type(suffix: str):
    """Decorator: ``loader(path, *, strict) -> LabeledDataset`` handles files ending in ``suffix``."""
    def add(fn):
        _FILE_TYPES[suffix.lower()] = fn
        return fn
    return add


def register_builtin(name: str):
    """Decorator: ``factory(arg, *, seed, n_per_class) -> LabeledDataset`` for ``"name"`` / ``"name:arg"``."""
    def add(fn):
        _BUILTINS[name] = fn
        return fn
    return add


@register_file_type(".csv")
def _csv(path, *, strict: bool) -> LabeledDataset:
    return load_manifest(path, strict=strict)


@register_file_type(".npz")
def _npz(path, *, strict: bool) -> LabeledDataset:
    return load_npz(path)


@register_builtin("shapes")
def _shapes(arg: str, *, seed: int, n_per_class: int) -> LabeledDataset:
    classes = [c.strip() for c in arg.split(",") if c.strip()] if arg else ("circle", "square", "triangle")
    return make_shapes(classes, n_per_class=n_per_class, seed=seed)


def load_splits(
    source,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    strict: bool = False,
    n_per_class: int = 200,
) -> Splits:
    """Train/val/test splits of ``source`` (see the module doc for what is accepted).

    Split folders are honoured; anything else is split with
    :func:`~headstart.data.split.stratified_split` (``val``, ``test`` fractions, ``seed``). For
    built-in sets, ``seed`` also seeds the generator and ``n_per_class`` sets their size. Every
    source is checked with :func:`~headstart.data.checks.validate_dataset` (a given Splits is not).
    ``strict=True`` turns the first bad file into an error instead of a reported problem.
    """
    if isinstance(source, Splits):
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().is_dir():
        return load_image_splits(source, val=val, test=test, seed=seed, strict=strict)
    ds = load_dataset(source, seed=seed, strict=strict, n_per_class=n_per_class)
    if isinstance(source, LabeledDataset):
        validate_dataset(ds, min_per_class=2 if val + test > 0 else 1)
    return stratified_split(ds, val=val, test=test, seed=seed)


def load_dataset(source, *, seed: int = 0, strict: bool = False, n_per_class: int = 200) -> LabeledDataset:
    """One labeled dataset from ``source``, unsplit: a folder of class folders, a registered file
    type, a built-in set name, or a :class:`LabeledDataset` (returned as is)."""
    if isinstance(source, LabeledDataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"cannot load data from a {type(source).__name__}; {_accepted()}")
    path = Path(source).expanduser()
    if path.is_dir():
        return load_image_folder(path, strict=strict)
    if path.is_file() and path.suffix.lower() in _FILE_TYPES:
        return _FILE_TYPES[path.suffix.lower()](path, strict=strict)
    name, _, arg = str(source).partition(":")
    if not path.exists() and name in _BUILTINS:
        return _BUILTINS[name](arg, seed=seed, n_per_class=n_per_class)
    what = f"{path} is a {path.suffix or 'suffix-less'} file" if path.is_file() else f"{source!s} was not found"
    raise DataError(f"{what}; {_accepted()}")


def _accepted() -> str:
    types = ", ".join(sorted(_FILE_TYPES))
    sets = ", ".join(f"'{n}' or '{n}:...'" for n in sorted(_BUILTINS))
    return (f"accepted: a folder of class folders (or train/val/test folders), a {types} file, "
            f"a built-in set ({sets}, e.g. 'shapes:star,pentagon,hexagon'), a LabeledDataset or Splits")
