"""Image folders: ``root/<class>/<image>``, optionally under ``train/``, ``val/`` and ``test/``.

Class names are the sub-folder names, sorted. Hidden files and folders (``.name``) and a few known
junk files (``Thumbs.db``, ``__MACOSX/``...) are ignored; files with other extensions and files
that do not decode (see :func:`~headstart.data.images.check_image`) become
:class:`~headstart.data.dataset.Problem` s: skipped, logged on the ``headstart.data`` logger and
kept in ``dataset.problems``; with ``strict=True`` the first one raises a DataError instead.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from .checks import SHOW_PROBLEMS, check_folder, validate_dataset
from .dataset import LabeledDataset, Problem, Splits
from .images import IMAGE_EXTENSIONS, check_image
from .split import stratified_split

logger = logging.getLogger("headstart.data")

#: Folder names recognised as splits (compared case-insensitively), in order of preference.
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}

_JUNK = {"thumbs.db", "desktop.ini", "__macosx"}


def load_image_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    strict: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    check: bool = True,
    min_per_class: int = 2,
) -> LabeledDataset:
    """Load ``root/<class>/**/<image>`` as a labeled dataset of image paths.

    ``classes`` fixes the class list and order (e.g. a trained model's classes, or the union over
    split folders); a sub-folder outside it is an error, and classes without a folder are allowed
    only if ``min_per_class`` is 0. ``check`` decodes every image once to find bad files (set
    ``False`` to trust the folder). The result is validated with ``min_per_class``
    (see :func:`~headstart.data.checks.validate_dataset`; 0 disables validation).
    """
    root = check_folder(root).resolve()
    dirs = _class_dirs(root)
    if classes is None and any(n.casefold() in SPLIT_FOLDERS["train"] for n in dirs):
        raise DataError(f"{root} holds split folders ({', '.join(sorted(dirs))}), not class folders; "
                        "use load_image_splits(root) / load_splits(root), or load one split folder")
    known = sorted(dirs) if classes is None else list(classes)
    unknown = sorted(set(dirs) - set(known))
    if unknown:
        raise DataError(f"{root} has class folder(s) {unknown} that are not among the expected classes {known}; "
                        "rename or remove them")
    extensions = tuple(e.lower() for e in extensions)
    problems = [Problem(str(p), "not inside a class folder; move it into one") for p in _files(root, recursive=False)]
    candidates: list[tuple[str, int]] = []
    for label, name in enumerate(known):
        for path in _files(dirs[name], recursive=True) if name in dirs else []:
            if path.suffix.lower() in extensions:
                candidates.append((str(path), label))
            else:
                problems.append(Problem(str(path), f"not an image extension ({path.suffix or 'none'}); "
                                                   f"expected one of {', '.join(extensions)}"))
    _raise_if_strict(strict, problems)
    if check:
        problems += _scan(candidates, strict)
    bad = {p.item for p in problems}
    kept = [(p, y) for p, y in candidates if p not in bad]
    _log_problems(root, problems)
    ds = LabeledDataset([p for p, _ in kept], [y for _, y in kept], known, "image", f"folder:{root}", problems)
    return validate_dataset(ds, min_per_class=min_per_class, what="image folder") if min_per_class else ds


def load_image_splits(
    root: str | os.PathLike,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    strict: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    check: bool = True,
) -> Splits:
    """Train/val/test splits of an image folder.

    If ``root`` has a ``train/`` folder, the split folders are honoured (``val/``, ``valid/`` or
    ``validation/``; ``test/``); their class lists are merged (sorted union), a class missing from
    ``train/`` is an error, and a missing ``val/`` or ``test/`` is carved from ``train/`` with the
    ``val``/``test`` fractions (stratified, seeded). Otherwise ``root`` is one folder of classes,
    split with :func:`~headstart.data.split.stratified_split`.
    """
    root = check_folder(root).resolve()
    layout = _split_layout(root)
    kw = dict(strict=strict, extensions=extensions, check=check)
    if layout is None:
        return stratified_split(load_image_folder(root, **kw), val=val, test=test, seed=seed)
    classes = _union_classes(layout)
    carve = {"val": val if "val" not in layout else 0.0, "test": test if "test" not in layout else 0.0}
    train = load_image_folder(layout["train"], classes=classes, min_per_class=1 + (sum(carve.values()) > 0), **kw)
    splits = stratified_split(train, val=carve["val"], test=carve["test"], seed=seed)
    for name in ("val", "test"):
        if name in layout:
            part = load_image_folder(layout[name], classes=classes, min_per_class=0, **kw)
            if len(part) == 0:
                raise DataError(f"{layout[name]} has no usable images; add images or remove the folder")
            setattr(splits, name, part)
    logger.info("%s: split folders %s; %s", root, sorted(layout), splits.summary())
    return splits


def _split_layout(root: Path) -> dict[str, Path] | None:
    """``{"train": path, "val": path, "test": path}`` for the split folders present, or None."""
    subdirs = {p.name.casefold(): p for p in _subdirs(root)}
    layout: dict[str, Path] = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [subdirs[n] for n in names if n in subdirs]
        if len(found) > 1:
            raise DataError(f"{root} has several {split} folders ({', '.join(p.name for p in found)}); keep one")
        if found:
            layout[split] = found[0]
    if "train" not in layout:
        if layout:
            raise DataError(f"{root} has {', '.join(p.name for p in layout.values())}/ but no train/ folder; "
                            "add train/<class>/ folders, or put the class folders directly under the root")
        return None
    others = sorted(set(subdirs) - {p.name.casefold() for p in layout.values()})
    if others:
        logger.warning("%s: ignoring folder(s) %s beside the split folders", root, others)
    return layout


def _union_classes(layout: dict[str, Path]) -> list[str]:
    """The sorted union of class folders over splits; a class missing from train is an error."""
    per_split = {split: set(_class_dirs(path)) for split, path in layout.items()}
    for split, names in per_split.items():
        missing = sorted(names - per_split["train"])
        if missing:
            raise DataError(f"class(es) {missing} in {layout[split]} have no folder in {layout['train']}; "
                            "add training images for them or remove them from the other split")
    return sorted(set().union(*per_split.values()))


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir()]


def _class_dirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(_subdirs(root))}


def _entries(folder: Path) -> list[Path]:
    """Visible entries of ``folder`` (no hidden or junk names); DataError if it cannot be listed."""
    try:
        names = os.listdir(folder)
    except PermissionError:
        raise DataError(f"permission denied listing {folder}; make it readable (chmod) or copy the data") from None
    except OSError as e:
        raise DataError(f"cannot list folder {folder}: {e}") from None
    return [folder / n for n in sorted(names) if not n.startswith(".") and n.casefold() not in _JUNK]


def _files(folder: Path, *, recursive: bool) -> list[Path]:
    """Visible files in ``folder`` (and its visible sub-folders if ``recursive``), sorted."""
    out: list[Path] = []
    for p in _entries(folder):
        if p.is_dir():
            if recursive:
                out += _files(p, recursive=True)
        else:
            out.append(p)
    return out


def _scan(candidates: list[tuple[str, int]], strict: bool) -> list[Problem]:
    """Decode every candidate image (in threads: Pillow releases the GIL); return the bad ones."""
    paths = [p for p, _ in candidates]
    workers = min(8, os.cpu_count() or 1) if len(paths) > 32 else 1
    problems: list[Problem] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, reason in zip(paths, pool.map(check_image, paths)):
            if reason is not None:
                problems.append(Problem(path, reason))
                _raise_if_strict(strict, problems)
    return problems


def _raise_if_strict(strict: bool, problems: list[Problem]) -> None:
    if strict and problems:
        raise DataError(f"bad file {problems[0]} (strict mode: fix or remove it, or load with strict=False "
                        "to skip bad files)")


def _log_problems(root: Path, problems: list[Problem]) -> None:
    if not problems:
        return
    for p in problems:
        logger.debug("skipped %s", p)
    shown = "; ".join(str(p) for p in problems[:SHOW_PROBLEMS])
    more = " ..." if len(problems) > SHOW_PROBLEMS else ""
    logger.warning("%s: skipped %d file(s): %s%s", root, len(problems), shown, more)
