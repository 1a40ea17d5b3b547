"""Reading a run folder back for evaluation, and the small extra file a report needs.

Everything here works from the run folder alone, in a fresh process, without the data or the
model: ``config.yaml``, ``model.json``, ``metrics.json``, ``history.csv``, ``predictions.csv`` and
``report_data.npz``.

``report_data.npz`` (written at the end of ``fit``, plain arrays, loaded with
``allow_pickle=False``) holds what the predictions cannot: for the t-SNE map, the backbone
features of up to :data:`MAX_EMBED` evaluated items (a class-stratified random subsample),
projected on their first :data:`PCA_DIMS` principal components (float16; ``embed_index`` gives
their rows in ``predictions.csv``); for the gallery, the :data:`GALLERY_SIZE` most confidently
wrong items as 96x96 thumbnails (``gallery_images``) or, for texts, their first 400 characters
(``gallery_texts``), with ``gallery_index``. Computing the features costs one extra forward pass
over at most 2,000 evaluated items (a feature-cache hit for linear runs).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunFolderError

log = logging.getLogger("headstart")

MAX_EMBED = 2000
PCA_DIMS = 50
GALLERY_SIZE = 16
THUMB = 96


@dataclass
class Predictions:
    """The rows of ``predictions.csv``: item names, split, true and predicted indices, probabilities."""

    items: list[str]
    split: str
    y_true: np.ndarray
    proba: np.ndarray
    classes: list[str]

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        return self.proba.max(1)

    def most_confidently_wrong(self, n: int = GALLERY_SIZE) -> np.ndarray:
        """Row indices of the wrong predictions, most confident first (at most ``n``)."""
        wrong = np.flatnonzero(self.y_pred != self.y_true)
        order = np.argsort(-self.confidence[wrong], kind="stable")
        return wrong[order][:n]


@dataclass
class RunRecord:
    """What a run folder holds, parsed. Missing files give empty values, never errors."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: Predictions | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    curve_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or self.metrics.get("classes") or self.config.get("classes") or [])

    @property
    def modality(self) -> str:
        return str(self.meta.get("modality", "image"))

    def setting(self, name: str, default: Any = None) -> Any:
        """A setting of the run by its flat name (``"strategy"``, ``"epochs"``, ...): from ``config.yaml``'s
        ``settings`` groups; ``data`` and ``backbone`` as resolved (top level). Older run folders kept
        every setting at the top level: read there when ``settings`` is absent."""
        from ..settings import setting_location

        if name in ("data", "backbone") and self.config.get(name) is not None:
            return self.config[name]
        if name == "data":
            return self.config.get("trained_on", default)
        groups = self.config.get("settings")
        if not isinstance(groups, dict):
            return self.config.get(name, default)
        group, attr = setting_location(name)
        return (groups.get(group) or {}).get(attr, default)

    @property
    def is_model_run(self) -> bool:
        return bool(self.meta)


def _number(v: str) -> Any:
    if v is None or v == "" or v == "None":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_csv_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file with numbers parsed (empty and ``None`` cells become ``None``)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_predictions(path: Path) -> Predictions:
    """Parse ``predictions.csv`` (see :func:`headstart.run_folder.write_predictions`)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:5] != ["item", "split", "label", "prediction", "confidence"]:
            raise RunFolderError(f"{path} is not a headstart predictions file (unexpected header {header[:5] if header else header}); re-run 'headstart fit'.")
        classes = [h[2:] for h in header[5:]]
        index = {c: i for i, c in enumerate(classes)}
        items, split, y, proba = [], "test", [], []
        for row in reader:
            items.append(row[0])
            split = row[1]
            if row[2] not in index:
                raise RunFolderError(f"{path}: label {row[2]!r} is not one of the class columns {classes}; the file is damaged.")
            y.append(index[row[2]])
            proba.append([float(v) for v in row[5:]])
    return Predictions(items, split, np.asarray(y, dtype=np.int64), np.asarray(proba, dtype=np.float64).reshape(len(y), len(classes)), classes)


def read_run(run_dir: str | Path) -> RunRecord:
    """Everything in a run folder (or a ``headstart curve`` output folder) that a report uses."""
    import yaml

    path = Path(run_dir)
    if not path.is_dir():
        raise RunFolderError(f"Run folder {str(path)!r} does not exist; give a folder written by 'headstart fit' or 'headstart curve'.")
    rec = RunRecord(path)
    if (path / "config.yaml").is_file():
        rec.config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    for name, attr in (("model.json", "meta"), ("metrics.json", "metrics"), ("curve.json", "curve_summary")):
        if (path / name).is_file():
            try:
                setattr(rec, attr, json.loads((path / name).read_text(encoding="utf-8")))
            except json.JSONDecodeError as e:
                raise RunFolderError(f"{path / name} is not valid JSON ({e}); the run folder is damaged: re-run the command that wrote it.") from e
    if (path / "history.csv").is_file():
        rec.history = read_csv_rows(path / "history.csv")
    if (path / "predictions.csv").is_file():
        rec.predictions = read_predictions(path / "predictions.csv")
    if (path / "curve.csv").is_file():
        rec.curve = read_csv_rows(path / "curve.csv")
    if (path / "report_data.npz").is_file():
        with np.load(path / "report_data.npz", allow_pickle=False) as z:
            rec.extras = {k: z[k] for k in z.files}
    if not (rec.meta or rec.predictions or rec.curve):
        raise RunFolderError(f"{str(path)!r} holds neither a run (model.json, predictions.csv) nor curve results (curve.csv); give a folder written by 'headstart fit' or 'headstart curve'.")
    return rec


def _stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most ``n`` indices, each class keeping its share (sorted)."""
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=max(1, round(n * np.mean(labels == c))), replace=False)
                           for c in np.unique(labels)])
    return np.sort(keep if len(keep) <= n else rng.choice(keep, n, replace=False))


def pca(x: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """Projection of ``x`` on its first ``dims`` principal components (fewer when ``x`` has fewer)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    d = min(dims, x.shape[0], x.shape[1])
    if d < 1:
        return x[:, :0]
    return PCA(n_components=d, svd_solver="full").fit_transform(x)  # exact; faster than "auto"'s randomized SVD at these sizes


def _thumbnail(img: Any, size: int = THUMB) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 thumbnail of a PIL image, letterboxed on grey."""
    from PIL import Image, ImageOps

    img = ImageOps.contain(img.convert("RGB"), (size, size), Image.Resampling.LANCZOS)  # up- or down-scaled, aspect kept
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def save_report_data(run_dir: Path, model: Any, eval_ds: Any, proba: np.ndarray, *, cache: bool = False, runtime: str = "auto", batch_size: int = 64) -> Path:
    """Write ``report_data.npz`` for a run whose predictions on ``eval_ds`` are ``proba`` (see the module doc)."""
    from .._io import atomic_path

    arrays: dict[str, np.ndarray] = {}
    preds = Predictions([], "", np.asarray(eval_ds.labels), np.asarray(proba), list(model.classes))
    idx = _stratified_sample(np.asarray(eval_ds.labels), MAX_EMBED)
    if len(idx) >= 5:
        feats = model.features(eval_ds.subset(idx), cache=cache, runtime=runtime, batch_size=batch_size)
        arrays["embed_index"] = idx.astype(np.int64)
        arrays["embed_pca"] = pca(feats).astype(np.float16)
    wrong = preds.most_confidently_wrong(GALLERY_SIZE)
    arrays["gallery_index"] = wrong.astype(np.int64)
    if eval_ds.modality == "text":
        arrays["gallery_texts"] = np.asarray([str(eval_ds.load(int(i)))[:400] for i in wrong], dtype=str)
    else:
        arrays["gallery_images"] = np.stack([_thumbnail(eval_ds.load(int(i))) for i in wrong]) if len(wrong) else np.zeros((0, THUMB, THUMB, 3), np.uint8)
    out = Path(run_dir) / "report_data.npz"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return out
