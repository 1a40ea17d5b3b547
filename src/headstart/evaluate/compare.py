"""Side-by-side comparison of runs: ``headstart compare RUN RUN ...``.

One row per run folder: strategy, backbone, head, the evaluated split's metrics (recomputed from
``predictions.csv``), training time (``fit``'s total minus its final prediction), inference speed
and model size on disk.

Inference speed is measured here, the same way for every run: images per second of the model's
eager PyTorch forward pass (backbone + head, one thread setting as the process has) on a batch of
:data:`SPEED_BATCH` random images at the model's input size, after one warm-up batch, best of
three; it excludes reading and decoding images. For text models (no fixed input size) it is the
evaluated items per second of ``fit``'s final prediction (including tokenisation and any cache).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from .metrics import classification_metrics
from .run_data import read_run

log = logging.getLogger("headstart")

SPEED_BATCH = 32
COLUMNS = ("run", "strategy", "backbone", "head", "split", "n", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "ece",
           "train_s", "items_per_s", "speed_source", "model_mb", "method", "old_after", "new_after", "forgetting")


def inference_speed(run_dir: str | Path, batch: int = SPEED_BATCH) -> float:
    """Images/s of the run's backbone + head forward on ``batch`` random images (see the module doc)."""
    import torch

    from ..model import load

    model = load(run_dir)
    h, w = model.backbone.preprocessing.input_size
    x = torch.rand(batch, 3, h, w)
    best = float("inf")
    with torch.inference_mode():
        model.head(model.backbone(x[:2]))
        for _ in range(3):
            t = time.perf_counter()
            model.head(model.backbone(x))
            best = min(best, time.perf_counter() - t)
    return batch / best


def compare_row(run_dir: str | Path, *, speed: bool = True) -> dict[str, Any]:
    """The comparison row of one run folder."""
    rec = read_run(run_dir)
    info = rec.meta.get("info", {})
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(run=rec.name, strategy=info.get("strategy", rec.setting("strategy")), backbone=info.get("backbone", rec.setting("backbone")),
               head=info.get("head", rec.setting("head")))
    if rec.predictions is not None:
        m = classification_metrics(rec.predictions.y_true, rec.predictions.proba, rec.predictions.classes)
        row.update(split=rec.predictions.split, n=m["n"], **{k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "ece")})
        row["ci"] = m.get("ci")  # bootstrap intervals: not a column; read by interval_warnings
    c = rec.metrics.get("continual")
    if c:  # a continued run (fit --from): how much of the old task it kept
        row.update(method=(info.get("parent") or {}).get("method"), **{k: c.get(k) for k in ("old_after", "new_after", "forgetting")})
    t = rec.metrics.get("timings_s") or {}
    if "total" in t:
        row["train_s"] = round(float(t["total"]) - float(t.get("predict", 0.0)), 3)
    if speed and rec.is_model_run and rec.modality != "text":
        row["items_per_s"], row["speed_source"] = round(inference_speed(rec.path), 1), f"forward, batch {SPEED_BATCH}"
    elif t.get("predict") and row["n"]:
        row["items_per_s"], row["speed_source"] = round(row["n"] / float(t["predict"]), 1), "fit's prediction"
    weights = rec.path / "model.safetensors"
    if weights.is_file():
        row["model_mb"] = round(weights.stat().st_size / 1e6, 3)
    return row


_FORMATS = {"train_s": "{:.2f}", "items_per_s": "{:.0f}", "model_mb": "{:.3f}"}


def format_cell(col: str, v: Any) -> str:
    """How a value of column ``col`` is shown: metrics with 4 decimals, seconds 2, items/s 0, MB 3."""
    if v is None:
        return ""
    if isinstance(v, float):
        return _FORMATS.get(col, "{:.4f}").format(v)
    return str(v)


def format_row(row: dict[str, Any]) -> dict[str, str]:
    return {c: format_cell(c, v) for c, v in row.items()}


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_cell(c, r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


#: Figures whose bootstrap intervals (metrics' ``ci``) are checked against the differences compared.
CI_FIGURES = ("accuracy", "roc_auc")


def interval_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A warning for each pair of runs whose difference in a figure of :data:`CI_FIGURES` is smaller
    than the width of either run's 95% bootstrap interval of it: that difference may be noise."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            for k in CI_FIGURES:
                ca, cb = (a.get("ci") or {}).get(k), (b.get("ci") or {}).get(k)
                if a.get(k) is None or b.get(k) is None or not ca or not cb:
                    continue
                diff, width = abs(a[k] - b[k]), max(ca[1] - ca[0], cb[1] - cb[0])
                if diff < width:
                    out.append(f"{k}: {a['run']} {a[k]:.4f} vs {b['run']} {b[k]:.4f} differ by {diff:.4f}, less than the width of "
                               f"their 95% bootstrap interval ({width:.4f}, on {a.get('n')} and {b.get('n')} items): the difference "
                               "may be noise. Fix: evaluate on more items, or compare over several seeds.")
    return out


def compare_runs(runs: Sequence[str | Path], *, out: str | Path | None = None, speed: bool = True) -> list[dict[str, Any]]:
    """Rows of :func:`compare_row` for ``runs``; with ``out``, also write ``<out>.csv`` and ``<out>.md``
    (a ``.csv`` or ``.md`` suffix on ``out`` is dropped first)."""
    from .._io import write_text
    from ..errors import HeadstartError

    if not runs:
        raise HeadstartError("Nothing to compare: give one or more run folders, e.g. 'headstart compare runs/a runs/b'.")
    rows = [compare_row(r, speed=speed) for r in runs]
    for warning in interval_warnings(rows):
        log.warning("%s", warning)
    if out is not None:
        stem = Path(out)
        if stem.suffix.lower() in (".csv", ".md"):
            stem = stem.with_suffix("")
        write_text(stem.with_suffix(".csv"), to_csv(rows))
        write_text(stem.with_suffix(".md"), to_markdown(rows))
        log.info("comparison written to %s and %s", stem.with_suffix(".csv"), stem.with_suffix(".md"))
    return rows
