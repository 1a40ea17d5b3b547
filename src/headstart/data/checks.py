"""Input checks shared by every loader: each failure is a DataError naming the problem and the fix."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .dataset import LabeledDataset, Problem

#: How many skipped items an error message or log line lists before summarising.
SHOW_PROBLEMS = 5


def validate_dataset(ds: LabeledDataset, *, min_per_class: int = 2, what: str = "dataset") -> LabeledDataset:
    """Check that ``ds`` can be used for classification; return it unchanged.

    Refuses: no items at all, fewer than two classes, and any class with fewer than
    ``min_per_class`` items (an empty class folder has 0). ``what`` names the data in messages
    (e.g. ``"train split of data/"``).
    """
    where = f"{what} ({ds.source})" if ds.source else what
    noun = "texts" if ds.modality == "text" else "images"
    if len(ds) == 0:
        raise DataError(f"{where} has no usable {noun}; add labeled {noun}" + problems_hint(ds.problems))
    if len(ds.classes) < 2:
        names = ", ".join(repr(c) for c in ds.classes) or "none"
        raise DataError(
            f"{where} has {len(ds.classes)} class ({names}); classification needs at least 2 — "
            f"add a second class (one sub-folder or label per class)"
        )
    for name, n in ds.counts().items():
        if n == 0:
            raise DataError(
                f"class {name!r} in {where} has no usable {noun}; add {noun} or remove the class folder"
                + problems_hint(ds.problems)
            )
        if n < min_per_class:
            raise DataError(
                f"class {name!r} in {where} has {n} {noun[:-1] if n == 1 else noun}; need at least "
                f"{min_per_class} to train and evaluate — add {noun} or remove the class folder"
            )
    return ds


def problems_hint(problems: list[Problem]) -> str:
    """A short suffix for error messages listing the first skipped items, or ``""``."""
    if not problems:
        return ""
    shown = "; ".join(str(p) for p in problems[:SHOW_PROBLEMS])
    more = f" (and {len(problems) - SHOW_PROBLEMS} more)" if len(problems) > SHOW_PROBLEMS else ""
    return f". {len(problems)} item(s) were skipped: {shown}{more}"


def check_folder(root: str | os.PathLike) -> Path:
    """Return ``root`` as a Path if it is a readable folder, else raise a DataError with the fix."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"folder not found: {path}; check the path (it should hold one sub-folder per class)")
    if not path.is_dir():
        raise DataError(
            f"{path} is a file, not a folder; give a folder holding one sub-folder per class, "
            "a .csv manifest, or a .npz file with x/y arrays"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"permission denied reading folder {path}; make it readable (chmod) or copy the data")
    return path


def check_file(path: str | os.PathLike, kind: str) -> Path:
    """Return ``path`` as a Path if it is a readable file, else raise a DataError with the fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{kind} not found: {p}; check the path")
    if p.is_dir():
        raise DataError(f"{p} is a folder, not a {kind}; give the file itself")
    if not os.access(p, os.R_OK):
        raise DataError(f"permission denied reading {kind} {p}; make it readable (chmod)")
    return p
