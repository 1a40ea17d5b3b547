"""CSV manifests: one row per image, a path column and a label column.

Paths are relative to the CSV's folder (or ``root=``); absolute paths are used as they are. Rows
whose file is missing or unreadable become :class:`~headstart.data.dataset.Problem` s (``strict=True``
raises instead). The file must be UTF-8 (a BOM is fine); anything else is an error naming the line.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from .arrays import encode_labels
from .checks import SHOW_PROBLEMS, check_file, validate_dataset
from .dataset import LabeledDataset, Problem
from .images import check_image

logger = logging.getLogger("headstart.data")

_ALIASES = {
    "path": ("path", "file", "filename", "filepath", "file_path", "image", "image_path", "img", "fname"),
    "label": ("label", "class", "target", "category", "y", "class_name", "labels"),
}


def load_manifest(
    csv_path: str | os.PathLike,
    *,
    path_col: str = "path",
    label_col: str = "label",
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    check: bool = True,
    min_per_class: int = 2,
) -> LabeledDataset:
    """Load a CSV manifest of ``path,label`` rows as a labeled dataset of image paths.

    ``classes`` fixes the class order (labels outside it become problems); by default the distinct
    labels, sorted (numerically if they are all integers). ``check`` decodes each image once to find
    bad files. The result is validated with ``min_per_class`` (0 disables validation).
    """
    csv_path = check_file(csv_path, "CSV manifest").resolve()
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    rows = _read_rows(csv_path, path_col, label_col)
    problems: list[Problem] = []
    paths, labels = [], []
    for line, path, label in rows:
        reason = _row_problem(base, path, label, check)
        if reason:
            problems.append(Problem(f"{csv_path.name} line {line}: {path or '(empty path)'}", reason))
            if strict:
                raise DataError(f"bad row {problems[0]} (strict mode: fix or remove it, or load with strict=False)")
            continue
        paths.append(str(_resolve(base, path)))
        labels.append(label)
    y, names = encode_labels(labels, classes)
    problems += [Problem(paths[i], f"label {labels[i]!r} is not one of the classes") for i in range(len(y)) if y[i] < 0]
    keep = [i for i in range(len(y)) if y[i] >= 0]
    _log(csv_path, problems)
    ds = LabeledDataset([paths[i] for i in keep], y[keep], names, "image", f"csv:{csv_path}", problems)
    return validate_dataset(ds, min_per_class=min_per_class, what="manifest") if min_per_class else ds


def _read_rows(csv_path: Path, path_col: str, label_col: str) -> list[tuple[int, str, str]]:
    """``(line number, path, label)`` for every data row; DataError for bad encoding or columns."""
    text = _read_utf8(csv_path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError(f"{csv_path} is empty; it needs a header row with {path_col!r} and {label_col!r} columns")
    for col, role in ((path_col, "path"), (label_col, "label")):
        if col not in header:
            raise DataError(_missing_column(csv_path, col, role, header))
    ip, il = header.index(path_col), header.index(label_col)
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        cells = row + [""] * (len(header) - len(row))
        rows.append((reader.line_num, cells[ip].strip(), cells[il].strip()))
    return rows


def _read_utf8(csv_path: Path) -> str:
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path} is not UTF-8: line {line} has byte 0x{data[e.start]:02x}; re-save it as UTF-8 "
            "(e.g. 'CSV UTF-8' in Excel, or iconv -f latin1 -t utf-8)"
        ) from None


def _missing_column(csv_path: Path, col: str, role: str, header: list[str]) -> str:
    found = ", ".join(repr(h) for h in header)
    guess = next((h for h in header if h.casefold() in _ALIASES[role]), None)
    hint = f"; it looks like {guess!r} holds the {role}s: pass {role}_col={guess!r}" if guess else ""
    return (f"{csv_path} has no {col!r} column (columns found: {found}){hint}. Name the columns with "
            f"load_manifest(..., path_col='...', label_col='...') or rename the header to 'path,label'")


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _row_problem(base: Path, path: str, label: str, check: bool) -> str | None:
    if not path:
        return "empty path"
    if not label:
        return "empty label"
    full = _resolve(base, path)
    if not full.is_file():
        return f"file not found ({full})" if not full.exists() else f"not a file ({full})"
    if not os.access(full, os.R_OK):
        return "permission denied; make the file readable"
    return check_image(full) if check else None


def _log(csv_path: Path, problems: list[Problem]) -> None:
    if problems:
        shown = "; ".join(str(p) for p in problems[:SHOW_PROBLEMS])
        logger.warning("%s: skipped %d row(s): %s%s", csv_path, len(problems), shown,
                       " ..." if len(problems) > SHOW_PROBLEMS else "")
