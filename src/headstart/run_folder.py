"""Writing the files of a run folder: config.yaml, metrics.json, history.csv, predictions.csv."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import write_json, write_text
from .errors import RunFolderError


def new_run_dir(out: str | Path | None, *, name: str, root: str | Path = "runs", overwrite: bool = False) -> Path:
    """``out`` if given (refusing to overwrite a finished run unless asked), else ``runs/<name>-<time>``."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(root) / f"{name}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = Path(root) / f"{name}-{stamp}-{n}"
    out = Path(out)
    check_run_dir(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_run_dir(out: str | Path | None, *, overwrite: bool = False) -> None:
    """Refuse an ``out`` that already holds a finished run, unless ``overwrite``: call it before any work."""
    if out is not None and (Path(out) / "model.json").exists() and not overwrite:
        raise RunFolderError(f"{str(out)!r} already holds a finished run; choose another --out or pass --overwrite.")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    import yaml

    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", metrics)


def write_history(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or ["epoch"])
    w.writeheader()
    w.writerows(rows)
    write_text(run_dir / "history.csv", buf.getvalue())


def write_predictions(run_dir: Path, names: Sequence[str], y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], split: str = "test") -> None:
    """One row per item: item, split, true label, predicted label, confidence, then p(class) per class."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["item", "split", "label", "prediction", "confidence", *[f"p_{c}" for c in classes]])
    pred = proba.argmax(1)
    for name, t, p, row in zip(names, y_true, pred, proba):
        w.writerow([name, split, classes[int(t)], classes[int(p)], f"{row[p]:.6f}", *[f"{v:.6f}" for v in row]])
    write_text(run_dir / "predictions.csv", buf.getvalue())
