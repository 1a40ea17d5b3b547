"""One entry point from "what the user typed" to train/val/test splits.

Accepted sources:

- a folder of class folders, or of ``train/`` (``val/``, ``test/``) split folders;
- a ``.csv`` manifest (``path,label`` columns) or a ``.npz`` file (``x``/``y`` arrays, or its own
  splits in MedMNIST's or Keras' layout: :func:`~.arrays.load_npz_splits`);
- texts: a ``.csv``/``.tsv``/``.jsonl`` table with a text column (``text_col``/``label_col``, see
  :mod:`.text`), or a folder of class folders of ``.txt`` files;
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
from .arrays import load_npz, load_npz_splits
from .checks import validate_dataset
from .dataset import LabeledDataset, Splits
from .folders import load_image_folder, load_image_splits
from .manifest import load_manifest
from .shapes import make_shapes
from .split import stratified_split
from .text import is_text_folder, load_text_folder, load_text_splits, load_text_table

_FILE_TYPES: dict[str, Callable[..., LabeledDataset]] = {}
_BUILTINS: dict[str, Callable[..., LabeledDataset]] = {}


def register_file_type(suffix: str):
    """Decorator: ``loader(path, *, strict, **columns) -> LabeledDataset`` handles files ending in ``suffix``.

    ``columns`` holds ``text_col``/``label_col`` when the caller gave them (loaders that take no
    columns are never passed any)."""
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
def _csv(path, *, strict: bool, text_col: str | None = None, label_col: str | None = None) -> LabeledDataset:
    # A table of texts (a text column, or --text-col given) or a manifest of image paths.
    if text_col is not None or _looks_like_text_table(path):
        return load_text_table(path, text_col=text_col, label_col=label_col, strict=strict)
    return load_manifest(path, strict=strict, **({"label_col": label_col} if label_col else {}))


def _looks_like_text_table(path) -> bool:
    import csv

    from .manifest import _ALIASES
    from .text import TEXT_COLUMNS

    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = {h.strip().casefold() for h in next(csv.reader(fh), [])}
    # A path column makes it an image manifest; anything else is read as texts (whose error, if no
    # text column is found, lists the columns and names --text-col).
    return bool(header) and not header & set(_ALIASES["path"]) or bool(header & set(TEXT_COLUMNS))


for _suffix in (".tsv", ".tab", ".jsonl", ".ndjson"):
    @register_file_type(_suffix)
    def _text_table(path, *, strict: bool, text_col: str | None = None, label_col: str | None = None) -> LabeledDataset:
        return load_text_table(path, text_col=text_col, label_col=label_col, strict=strict)


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
    text_col: str | None = None,
    label_col: str | None = None,
    classes: str | list[str] | None = None,
) -> Splits:
    """Train/val/test splits of ``source`` (see the module doc for what is accepted).

    Split folders are honoured; anything else is split with
    :func:`~headstart.data.split.stratified_split` (``val``, ``test`` fractions, ``seed``). For
    built-in sets, ``seed`` also seeds the generator and ``n_per_class`` sets their size. Every
    source is checked with :func:`~headstart.data.checks.validate_dataset` (a given Splits is not).
    ``strict=True`` turns the first bad file into an error instead of a reported problem.
    ``text_col``/``label_col`` name the columns of a table (see :mod:`.text` for the defaults).
    A ``.npz`` file's own splits are honoured like split folders (a missing ``val`` is split off
    ``train``, ``val`` of the whole). ``classes`` (a list, or comma-separated names) names the integer
    labels of a ``.npz`` file; other sources name their classes themselves.
    """
    if isinstance(source, Splits):
        return source
    names = [c.strip() for c in classes.split(",") if c.strip()] if isinstance(classes, str) else classes
    is_npz = isinstance(source, (str, os.PathLike)) and Path(source).expanduser().suffix.lower() == ".npz"
    if names is not None and not is_npz:
        raise DataError(f"--classes names the integer labels of a .npz file; {source!s} names its classes itself "
                        "(folder names, a label column, ...). Fix: drop --classes")
    if is_npz and Path(source).expanduser().is_file():
        own = load_npz_splits(Path(source).expanduser(), classes=names)
        if own is not None:
            if own.val is None:
                cut = stratified_split(own.train, val=val / max(1 - test, 1e-9) if val else 0.0, test=0.0, seed=seed)
                own = Splits(cut.train, cut.val, own.test)
            return own
        if names is not None:
            return stratified_split(load_npz(Path(source).expanduser(), classes=names), val=val, test=test, seed=seed)
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().is_dir():
        if is_text_folder(Path(source).expanduser()):
            return load_text_splits(source, val=val, test=test, seed=seed, strict=strict)
        return load_image_splits(source, val=val, test=test, seed=seed, strict=strict)
    ds = load_dataset(source, seed=seed, strict=strict, n_per_class=n_per_class, text_col=text_col, label_col=label_col)
    if isinstance(source, LabeledDataset):
        validate_dataset(ds, min_per_class=2 if val + test > 0 else 1)
    return stratified_split(ds, val=val, test=test, seed=seed)


def load_dataset(source, *, seed: int = 0, strict: bool = False, n_per_class: int = 200,
                 text_col: str | None = None, label_col: str | None = None) -> LabeledDataset:
    """One labeled dataset from ``source``, unsplit: a folder of class folders, a registered file
    type, a built-in set name, or a :class:`LabeledDataset` (returned as is)."""
    if isinstance(source, LabeledDataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"cannot load data from a {type(source).__name__}; {_accepted()}")
    path = Path(source).expanduser()
    if path.is_dir():
        return load_text_folder(path, strict=strict) if is_text_folder(path) else load_image_folder(path, strict=strict)
    if path.is_file() and path.suffix.lower() in _FILE_TYPES:
        columns = {k: v for k, v in (("text_col", text_col), ("label_col", label_col)) if v is not None}
        return _FILE_TYPES[path.suffix.lower()](path, strict=strict, **columns)
    name, _, arg = str(source).partition(":")
    if not path.exists() and name in _BUILTINS:
        return _BUILTINS[name](arg, seed=seed, n_per_class=n_per_class)
    what = f"{path} is a {path.suffix or 'suffix-less'} file" if path.is_file() else f"{source!s} was not found"
    raise DataError(f"{what}; {_accepted()}")


def guess_modality(source, *, text_col: str | None = None) -> str:
    """``"text"`` or ``"image"``: what ``source`` holds, judged cheaply (no file is decoded)."""
    if isinstance(source, (LabeledDataset, Splits)):
        return source.train.modality if isinstance(source, Splits) else source.modality
    if not isinstance(source, (str, os.PathLike)):
        return "image"
    path = Path(source).expanduser()
    if path.is_dir():
        return "text" if is_text_folder(path) else "image"
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".tsv", ".tab", ".jsonl", ".ndjson"):
        return "text"
    if path.is_file() and suffix == ".csv" and (text_col is not None or _looks_like_text_table(path)):
        return "text"
    return "image"


def _accepted() -> str:
    types = ", ".join(sorted(_FILE_TYPES))
    sets = ", ".join(f"'{n}' or '{n}:...'" for n in sorted(_BUILTINS))
    return (f"accepted: a folder of class folders of images or .txt files (or train/val/test folders), a {types} file, "
            f"a built-in set ({sets}, e.g. 'shapes:star,pentagon,hexagon'), a LabeledDataset or Splits")
