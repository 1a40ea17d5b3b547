"""A second domain next to the labeled data: the target of domain adaptation and of ``headstart gap``.

:func:`load_domain` reads any source :func:`~headstart.data.load.load_dataset` reads (a folder of
class folders, a manifest, a ``.npz``, a built-in set, a :class:`LabeledDataset`), and also
*unlabeled* images: a folder of image files with no class sub-folders (searched recursively), or a
``.npz`` holding images only (``x`` or ``images``). An unlabeled dataset has no classes and every
label ``-1`` (:data:`UNLABELED`). :func:`align_classes` maps a labeled target onto the source's
classes (a target class the source does not have is an error).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .checks import check_file, problems_hint
from .dataset import LabeledDataset
from .folders import _files, _log_problems, _scan, _subdirs
from .images import IMAGE_EXTENSIONS

#: The label of every item of an unlabeled dataset.
UNLABELED = -1


def is_labeled(ds: LabeledDataset) -> bool:
    return bool(ds.classes) and bool(len(ds)) and int(ds.labels.min()) >= 0


def load_domain(source: Any, *, role: str = "target", seed: int = 0, strict: bool = False, n_per_class: int = 200,
                modality: str | None = None) -> LabeledDataset:
    """The dataset of a domain, labeled or not (see the module doc). ``role`` names it in errors;
    ``modality``: the modality the other domain has (``"image"``/``"text"``), checked."""
    from .load import load_dataset

    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir() and not _subdirs(path):
            ds = _unlabeled_folder(path, strict=strict, role=role)
        elif path.suffix.lower() == ".npz" and path.is_file() and _images_only_npz(path):
            ds = _unlabeled_npz(path)
        else:
            ds = load_dataset(source, seed=seed, strict=strict, n_per_class=n_per_class)
    else:
        ds = load_dataset(source, seed=seed, strict=strict, n_per_class=n_per_class)
    noun = "texts" if ds.modality == "text" else "images"
    if len(ds) == 0:
        raise DataError(f"the {role} data ({ds.source or source}) has no usable {noun}; give a folder or file with {noun}"
                        + problems_hint(ds.problems))
    if modality is not None and ds.modality != modality:
        raise DataError(f"the {role} data ({ds.source or source}) holds {ds.modality}s but the labeled data holds {modality}s; "
                        f"both domains must be of one kind (images with images, texts with texts)")
    return ds


def align_classes(ds: LabeledDataset, classes: Sequence[str], *, role: str = "target") -> LabeledDataset:
    """``ds`` with its labels re-indexed into ``classes`` (the source's); unlabeled data is returned as is.

    Every class of ``ds`` must be one of ``classes``; a target may have fewer classes than the source."""
    if not is_labeled(ds):
        return ds
    classes = list(classes)
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise DataError(f"the {role} data ({ds.source}) has class(es) {unknown} that the labeled training data does not have "
                        f"(its classes: {classes}); a {role} may only use the source's classes: rename or remove them")
    remap = np.asarray([classes.index(c) for c in ds.classes], dtype=np.int64)
    return LabeledDataset(ds.items, remap[ds.labels], classes, ds.modality, ds.source, list(ds.problems))


def _unlabeled_folder(root: Path, *, strict: bool, role: str) -> LabeledDataset:
    files = _files(root, recursive=True)
    exts = tuple(e.lower() for e in IMAGE_EXTENSIONS)
    paths = [str(p) for p in files if p.suffix.lower() in exts]
    if not paths:
        raise DataError(f"the {role} folder {root} holds no image files ({', '.join(exts)}); add images, or class folders of them")
    problems = _scan([(p, UNLABELED) for p in paths], strict)
    bad = {p.item for p in problems}
    _log_problems(root, problems)
    kept = [p for p in paths if p not in bad]
    return LabeledDataset(kept, np.full(len(kept), UNLABELED, dtype=np.int64), [], "image", f"folder:{root}", problems)


def _images_only_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # load_dataset gives the error
    return bool(keys & {"x", "images", "X"}) and not keys & {"y", "labels", "y_train"}


def _unlabeled_npz(path: Path) -> LabeledDataset:
    from .arrays import to_uint8_images

    check_file(path, ".npz file")
    with np.load(path, allow_pickle=False) as npz:
        key = next(k for k in ("x", "images", "X") if k in npz.files)
        x = to_uint8_images(npz[key])
    return LabeledDataset(x, np.full(len(x), UNLABELED, dtype=np.int64), [], "image", f"npz:{path.resolve()}")
