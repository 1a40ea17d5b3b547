"""The size / speed / accuracy table of a run's exports, as text rows and as a section of the run's report.

``headstart export`` writes the table into the export folder (``export.json``) and records it in the
run folder, in ``exports.json`` (:data:`EXPORTS_FILE`: one entry per export folder, the latest
export to a folder replacing the earlier one), which is where :func:`export_section` reads it. This
module reads files only; it sits in ``evaluate`` so that the report (which may not import
``export``, a higher layer) can show the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPORTS_FILE = "exports.json"
EXPORTS_FORMAT = "headstart-exports"
COLUMNS = ["model", "MB", "images/s", "vs torch", "accuracy", "agreement", "max |diff|"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The rows of an export's table (``export.json``) as text, in :data:`COLUMNS` order."""
    base = report["rows"]["torch_fp32"]["images_per_s"]
    return [[k, f"{r['size_mb']:.2f}", f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / base:.2f}x", f"{r['accuracy']:.4f}",
             f"{r['agreement']:.4f}", f"{r['max_abs_diff']:.2g}"] for k, r in report["rows"].items()]


def read_exports(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{export folder: its table}`` recorded in the run folder (empty when none, or when the file is unreadable)."""
    path = Path(run_dir) / EXPORTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    exports = data.get("exports") if isinstance(data, dict) and data.get("format") == EXPORTS_FORMAT else None
    return {k: v for k, v in exports.items() if isinstance(v, dict) and "torch_fp32" in v.get("rows", {})} if isinstance(exports, dict) else {}


def export_section(doc: Any, run_dir: str | Path) -> None:
    """Add the "Exports" section to the report ``doc`` (``h``/``p``/``table``) when the run has recorded exports."""
    exports = read_exports(run_dir)
    if not exports:
        return
    doc.h(2, "Exports", "exports")
    doc.p("Size, speed and accuracy of each 'headstart export' of this run, measured by the export on the same images: accuracy and "
          "top-1 agreement against the run's eager torch model; max |diff|: the largest logit difference to the eager model the graph was "
          "made from (the pruned one, for pruned rows). Images/s: one batch, this machine, at export time.", "sub")
    for folder, rep in exports.items():
        t, c, p = rep.get("timing", {}), rep.get("checked_on", {}), rep.get("prune")
        what = f"{rep.get('format')}" + (f", {rep['quantize']}" if rep.get("quantize") else "") + (f", pruned {p['amount']:g}" if p else "")
        doc.p(f"{folder} ({what}): {c.get('n')} images of the {c.get('data')}; batch {t.get('batch_size')}, {t.get('threads')} threads.")
        doc.table(COLUMNS, table_rows(rep), numeric={1, 2, 3, 4, 5, 6})
        if p:
            ft = p.get("finetune", {})
            doc.p(f"Pruning removed {p['amount']:.0%} of the channels of each prunable layer: parameters {p['params'][0]:,} -> {p['params'][1]:,}, "
                  f"multiply-adds {p['macs'][0]:,} -> {p['macs'][1]:,}; then {ft.get('epochs')} epochs of fine-tuning on "
                  f"{ft.get('train_items')} training items ({ft.get('seconds')} s).", "note")
