"""Text data: CSV / TSV / JSONL tables and folders of ``.txt`` files per class.

Items of a text dataset are the texts themselves (Python ``str``, in memory): a text's cache key is
its UTF-8 bytes, and reports show it as it is. Sources:

- a table (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``) with a text column and a label
  column (``text_col``/``label_col``; by default the first of :data:`TEXT_COLUMNS` /
  :data:`LABEL_COLUMNS` present, compared case-insensitively; none present is a DataError that
  lists the columns found);
- a folder ``root/<class>/*.txt`` (one text per file), optionally under ``train/``, ``val/``,
  ``test/`` split folders.

Checks (each bad row becomes a :class:`~headstart.data.dataset.Problem`: reported on the
``headstart.data`` logger and kept in ``dataset.problems``; ``strict=True`` raises on the first):
empty texts and labels, bytes that are not UTF-8 (the file and line are named; the row is skipped
and loading goes on), JSON lines that do not parse, and labels with a single example (a class
needs two: one to train, one to evaluate). Very long texts are truncated at the backbone's
tokenizer max length, with a warning that states it (see ``backbones/text.py``): the limit belongs
to the backbone, not to the data.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import IO, Iterable, Sequence

from ..errors import DataError
from .arrays import encode_labels
from .checks import SHOW_PROBLEMS, check_file, check_folder, validate_dataset
from .dataset import LabeledDataset, Problem, Splits
from .split import stratified_split

logger = logging.getLogger("headstart.data")

#: Column names tried, in order, when ``text_col`` is not given.
TEXT_COLUMNS = ("text", "sentence", "review", "content", "body", "document", "comment", "message", "tweet", "utterance", "question", "abstract")
#: Column names tried, in order, when ``label_col`` is not given.
LABEL_COLUMNS = ("label", "labels", "class", "target", "category", "sentiment", "topic", "intent", "y", "class_name")
#: Table suffixes read by :func:`load_text_table`, with their kind.
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TEXT_EXTENSIONS = (".txt",)


def load_text_table(
    path: str | os.PathLike,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    min_per_class: int = 2,
) -> LabeledDataset:
    """Load a CSV, TSV or JSONL file of labeled texts (see the module doc for defaults and checks).

    ``classes`` fixes the class order (labels outside it become problems). ``min_per_class`` >= 2
    also turns labels with a single example into problems; 0 disables all class checks (for
    evaluation data that may hold a subset of the classes).

    Example:
        >>> ds = load_text_table("reviews.csv", text_col="review", label_col="stars")  # doctest: +SKIP
        >>> ds.items[0], ds.classes  # doctest: +SKIP
        ('Great value, works as described.', ['1', '2', '3', '4', '5'])
    """
    p = check_file(path, "text table").resolve()
    kind = TABLE_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p} is not a text table; expected one of {', '.join(TABLE_SUFFIXES)}")
    lines, problems = _decode_lines(p)
    rows = _json_rows(p, lines, problems) if kind == "jsonl" else _table_rows(p, lines, problems, kind)
    header = rows[0] if rows else []
    tcol = _pick(p, text_col, TEXT_COLUMNS, header, "text", "text_col")
    lcol = _pick(p, label_col, LABEL_COLUMNS, header, "label", "label_col")
    texts, labels = [], []
    for where, rec in rows[1:]:
        text, label = rec.get(tcol), rec.get(lcol)
        text = "" if text is None else str(text)
        label = "" if label is None else str(label).strip()
        if not text.strip():
            problems.append(Problem(where, "empty text"))
        elif not label:
            problems.append(Problem(where, f"empty label (column {lcol!r})"))
        else:
            texts.append(text)
            labels.append(label)
            continue
        _raise_if_strict(strict, problems)
    _raise_if_strict(strict, problems)
    return _finish(texts, labels, classes, problems, f"{kind}:{p}", p, strict, min_per_class, "text table")


def load_text_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    min_per_class: int = 2,
) -> LabeledDataset:
    """Load ``root/<class>/**/*.txt`` as a labeled dataset (one text per file; class = folder name)."""
    from .folders import _class_dirs, _files

    root = check_folder(root).resolve()
    dirs = _class_dirs(root)
    known = sorted(dirs) if classes is None else list(classes)
    unknown = sorted(set(dirs) - set(known))
    if unknown:
        raise DataError(f"{root} has class folder(s) {unknown} that are not among the expected classes {known}; rename or remove them")
    problems = [Problem(str(f), "not inside a class folder; move it into one") for f in _files(root, recursive=False)]
    texts, labels = [], []
    for name in known:
        for f in _files(dirs[name], recursive=True) if name in dirs else []:
            if f.suffix.lower() not in TEXT_EXTENSIONS:
                problems.append(Problem(str(f), f"not a text file ({f.suffix or 'no suffix'}); expected .txt"))
                _raise_if_strict(strict, problems)
                continue
            text, reason = _read_text_file(f)
            if reason is None and not text.strip():
                reason = "empty text"
            if reason is not None:
                problems.append(Problem(str(f), reason))
                _raise_if_strict(strict, problems)
                continue
            texts.append(text)
            labels.append(name)
    return _finish(texts, labels, known, problems, f"folder:{root}", root, strict, min_per_class, "text folder")


def load_text_splits(root: str | os.PathLike, *, val: float = 0.15, test: float = 0.15, seed: int = 0, strict: bool = False) -> Splits:
    """Train/val/test splits of a text folder; ``train/`` (``val/``, ``test/``) folders are honoured."""
    from .folders import _split_layout, _union_classes

    root = check_folder(root).resolve()
    layout = _split_layout(root)
    if layout is None:
        return stratified_split(load_text_folder(root, strict=strict), val=val, test=test, seed=seed)
    classes = _union_classes(layout)
    carve = {"val": val if "val" not in layout else 0.0, "test": test if "test" not in layout else 0.0}
    train = load_text_folder(layout["train"], classes=classes, strict=strict, min_per_class=1 + (sum(carve.values()) > 0))
    splits = stratified_split(train, val=carve["val"], test=carve["test"], seed=seed)
    for name in ("val", "test"):
        if name in layout:
            part = load_text_folder(layout[name], classes=classes, strict=strict, min_per_class=0)
            if len(part) == 0:
                raise DataError(f"{layout[name]} has no usable texts; add .txt files or remove the folder")
            setattr(splits, name, part)
    return splits


def is_text_folder(root: str | os.PathLike) -> bool:
    """True when ``root`` (or its ``train/`` folder) holds class folders of ``.txt`` files and no images."""
    from .images import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        return False
    seen_text = False
    for base in (root, *[d for d in root.iterdir() if d.is_dir() and d.name.casefold() in ("train", "training")]):
        for cls in (d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in cls.iterdir():
                suffix = f.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    return False
                seen_text |= suffix in TEXT_EXTENSIONS
    return seen_text


def read_lines(source: str | os.PathLike | IO[bytes] | IO[str]) -> list[str]:
    """Non-empty lines of a file (or of a binary/text stream such as stdin), for ``predict``.

    A line that is not UTF-8 is a DataError naming the line: what to predict must be exact.
    """
    name = "<stdin>" if not isinstance(source, (str, os.PathLike)) else str(source)
    if isinstance(source, (str, os.PathLike)):
        data: bytes | str = check_file(source, "text file").read_bytes()
    else:
        data = source.read()
    if isinstance(data, str):
        raw = data.splitlines()
    else:
        raw = []
        for i, line in enumerate(data.splitlines(), 1):
            try:
                raw.append(line.decode("utf-8-sig" if i == 1 else "utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(f"{name} line {i} is not UTF-8 (byte 0x{line[e.start]:02x}); re-save it as UTF-8") from None
    return [line for line in raw if line.strip()]


# --------------------------------------------------------------------------------- internals
def _decode_lines(p: Path) -> tuple[list[tuple[int, str | None]], list[Problem]]:
    """``(line number, text or None if not UTF-8)`` per physical line, and a problem per bad line."""
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[tuple[int, str | None]] = []
    problems: list[Problem] = []
    for i, raw in enumerate(data.split(b"\n"), 1):
        try:
            out.append((i, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            out.append((i, None))
            problems.append(Problem(f"{p.name} line {i}", f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); row skipped — re-save the file as UTF-8"))
    if out and out[-1][1] == "":
        out.pop()
    return out, problems


def _table_rows(p: Path, lines: list[tuple[int, str | None]], problems: list[Problem], kind: str) -> list:
    """``[header, (where, {column: value}), ...]`` of a CSV/TSV; rows touching a non-UTF-8 line are skipped."""
    bad = {n for n, s in lines if s is None}
    reader = csv.reader((("" if s is None else s) + "\n" for _, s in lines), delimiter="\t" if kind == "tsv" else ",")
    numbers = [n for n, _ in lines]
    header: list[str] | None = None
    out: list = []
    consumed = 0
    for row in reader:
        first, consumed = consumed, reader.line_num
        span = set(numbers[first:consumed])
        if header is None:
            if span & bad:
                raise DataError(f"{p} header line is not UTF-8; re-save the file as UTF-8")
            if not any(c.strip() for c in row):
                continue
            header = [h.strip() for h in row]
            out.append(header)
            continue
        if span & bad or not any(c.strip() for c in row):
            continue  # bad lines are already problems; blank lines are not rows
        where = f"{p.name} line {numbers[first]}"
        if len(row) > len(header):
            problems.append(Problem(where, f"{len(row)} fields but the header has {len(header)} (unquoted delimiter in a text?)"))
            continue
        out.append((where, dict(zip(header, row))))
    if header is None:
        raise DataError(f"{p} is empty; it needs a header row naming the text and label columns")
    return out


def _json_rows(p: Path, lines: list[tuple[int, str | None]], problems: list[Problem]) -> list:
    """``[columns, (where, record), ...]`` of a JSONL file (columns: the keys seen, in order)."""
    keys: dict[str, None] = {}
    out: list = [None]
    for n, s in lines:
        if s is None or not s.strip():
            continue
        where = f"{p.name} line {n}"
        try:
            rec = json.loads(s)
        except json.JSONDecodeError as e:
            problems.append(Problem(where, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(where, f"a JSON {type(rec).__name__}, expected an object"))
            continue
        keys.update(dict.fromkeys(rec))
        out.append((where, rec))
    if len(out) == 1 and not problems:
        raise DataError(f"{p} is empty; it needs one JSON object per line")
    out[0] = list(keys)
    return out


def _pick(p: Path, given: str | None, aliases: Sequence[str], header: list[str], role: str, option: str) -> str:
    found = ", ".join(repr(h) for h in header) or "none"
    if given is not None:
        if given in header:
            return given
        raise DataError(f"{p} has no {given!r} column (columns found: {found}); pass the right name with --{option.replace('_', '-')} ({option}=...)")
    folded = {h.casefold(): h for h in header}
    for a in aliases:
        if a in folded:
            return folded[a]
    raise DataError(
        f"{p} has no {role} column (columns found: {found}); name it with --{option.replace('_', '-')} COLUMN "
        f"({option}=... in Python), or rename a column to one of {', '.join(aliases[:4])}"
        + (" (a CSV of images needs a 'path' column instead)" if role == "text" and p.suffix.lower() == ".csv" else "")
    )


def _read_text_file(f: Path) -> tuple[str, str | None]:
    try:
        data = f.read_bytes()
    except OSError as e:
        return "", f"cannot read ({e.strerror or e})"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return "", f"not UTF-8 (line {line}, byte 0x{data[e.start]:02x}); re-save the file as UTF-8"


def _finish(texts: list[str], labels: list[str], classes, problems: list[Problem], source: str, where: Path,
            strict: bool, min_per_class: int, what: str) -> LabeledDataset:
    if min_per_class >= 2:
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        single = {label for label, n in counts.items() if n == 1}
        if single:
            keep = [i for i, label in enumerate(labels) if label not in single]
            for label in sorted(single):
                problems.append(Problem(f"label {label!r}", "a single example; a class needs at least 2 (one to train, one to "
                                                           "evaluate) — add examples or fix the label; row skipped"))
            _raise_if_strict(strict, problems)
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
            if classes is not None:
                classes = [c for c in classes if c not in single]
    y, names = encode_labels(labels, classes)
    for i in range(len(y)):
        if y[i] < 0:
            problems.append(Problem(f"text {i}", f"label {labels[i]!r} is not one of the classes {names}"))
    _raise_if_strict(strict, problems)
    keep = [i for i in range(len(y)) if y[i] >= 0]
    _log(where, problems)
    ds = LabeledDataset([texts[i] for i in keep], y[keep], names, "text", source, problems)
    return validate_dataset(ds, min_per_class=min_per_class, what=what) if min_per_class else ds


def _raise_if_strict(strict: bool, problems: Iterable[Problem]) -> None:
    problems = list(problems)
    if strict and problems:
        raise DataError(f"bad text {problems[0]} (strict mode: fix or remove it, or load with strict=False to skip bad rows)")


def _log(where: Path, problems: list[Problem]) -> None:
    if problems:
        shown = "; ".join(str(p) for p in problems[:SHOW_PROBLEMS])
        logger.warning("%s: skipped %d text(s): %s%s", where, len(problems), shown, " ..." if len(problems) > SHOW_PROBLEMS else "")
