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


#: What headstart writes into a run folder (``fit``: model.py, this module, evaluate/report.py and
#: run_data.py, the training loop's folders in train/; ``backbone/`` holds a text run's tokenizer and
#: config). ``model.json`` marks a finished run. curve.csv/curve.json are not
#: here: ``headstart curve --out RUN`` adds them to a run on purpose, and they describe the data.
RUN_FILES = ("model.json", "config.yaml", "model.safetensors", "metrics.json", "history.csv", "predictions.csv",
             "report.html", "report.md", "report_data.npz", "memory.json", "ensemble.json", "stacker.safetensors")
RUN_DIRS = ("plots", "checkpoints", "activations", "logs", "backbone")


def new_run_dir(out: str | Path | None, *, name: str, root: str | Path = "runs", overwrite: bool = False, add: bool = False) -> Path:
    """``out`` if given, else ``runs/<name>-<time>``.

    A finished run in ``out`` is refused unless ``overwrite`` (its files are then removed first, see
    :func:`remove_run`) or ``add`` (it is kept, and the caller adds files to it: a curve of a run).
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(root) / f"{name}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = Path(root) / f"{name}-{stamp}-{n}"
    out = Path(out)
    if not add:
        check_run_dir(out, overwrite=overwrite)
        if (out / "model.json").exists() or (out / "ensemble.json").exists():  # overwrite: the new run must not inherit the old one's files
            remove_run(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_run_dir(out: str | Path | None, *, overwrite: bool = False) -> None:
    """Refuse an ``out`` that already holds a finished run, unless ``overwrite``: call it before any work."""
    if out is not None and any((Path(out) / f).exists() for f in ("model.json", "ensemble.json")) and not overwrite:
        raise RunFolderError(f"{str(out)!r} already holds a finished run; choose another --out or pass --overwrite.")


def remove_run(run_dir: str | Path) -> None:
    """Remove the files and folders headstart writes in ``run_dir`` (:data:`RUN_FILES`, :data:`RUN_DIRS`), and
    nothing else. ``model.json`` goes first: a crash part-way leaves a folder that does not look finished."""
    import shutil

    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():  # a link or a file of that name is not ours
            shutil.rmtree(run_dir / name)


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


def read_config(path: str | Path) -> tuple[str | None, "Settings"]:
    """``(data, settings)`` recorded in a ``config.yaml`` (a run folder's, or one written by hand:
    ``data:`` and the ``settings:`` groups, every field optional)."""
    import yaml

    from .settings import Settings

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunFolderError(f"Cannot read the config file {str(path)!r}: {e}. Fix: give a YAML file with 'data:' and 'settings:' (e.g. a run folder's config.yaml).") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("settings", {}), dict):
        raise RunFolderError(f"{str(path)!r} does not record settings ('settings:' with groups data, backbone, head, training, hardware, output).")
    data = cfg.get("data")
    return (str(data) if data is not None else None), Settings.from_dict(cfg.get("settings"))
