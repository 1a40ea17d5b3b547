"""headstart curve: accuracy vs labels per class for linear probe / fine-tuning / scratch (tiny_cnn, tiny data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import headstart
from headstart.data import make_shapes
from headstart.errors import HeadstartError
from headstart.evaluate.report import summarize_curve
from headstart.experiments.curve import method_summary, subsample, transfer_curve

BIN = Path(sys.executable).with_name("headstart")
COMMAND = [str(BIN)] if BIN.is_file() else [sys.executable, "-m", "headstart.cli"]


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data():
    return make_shapes(("circle", "square", "triangle"), n_per_class=12, size=32, seed=0)


def test_subsample_is_stratified_seeded_and_keeps_one_per_class(data):
    small = subsample(data, 0.01, seed=0)
    assert np.bincount(small.labels).tolist() == [1, 1, 1]
    half = subsample(data, 0.5, seed=0)
    assert np.bincount(half.labels).tolist() == [6, 6, 6]
    assert subsample(data, 0.5, seed=0).items.tobytes() == half.items.tobytes()
    assert subsample(data, 0.5, seed=1).items.tobytes() != half.items.tobytes()
    assert len(subsample(data, 1.0, seed=3)) == len(data)


def test_curve_writes_csv_summary_plot_and_report(data, tmp_path):
    res = transfer_curve(data, backbone="tiny_cnn", scratch_backbone="tiny_cnn", runtime="torch", fractions="0.25,1", seeds=2, epochs=1,
                         target_acc=0.0, val=0.2, test=0.3, out=tmp_path / "curve")
    out = res["out"]
    with open(out / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3
    assert {r["method"] for r in rows} == {"linear", "finetune", "scratch"}
    assert {r["strategy"] for r in rows if r["method"] == "linear"} == {"linear"}
    assert {r["strategy"] for r in rows if r["method"] != "linear"} == {"finetune"}
    per_class = {float(r["fraction"]): int(r["labels_per_class"]) for r in rows}
    assert per_class[0.25] < per_class[1.0]
    assert len({r["n_test"] for r in rows}) == 1  # one fixed test split
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["seconds"]) > 0 and float(r["cpu_seconds"]) >= 0
    summary = json.loads((out / "curve.json").read_text())
    assert summary["target_accuracy"] == 0.0 and set(summary["methods"]) == {"linear", "finetune", "scratch"}
    for d in summary["methods"].values():  # target 0: reached at the smallest fraction
        assert d["labels_per_class_to_target"] == per_class[0.25] and d["seconds_to_target"] > 0
    assert (out / "plots" / "curve.png").stat().st_size > 5000
    html = (out / "report.html").read_text(encoding="utf-8")
    assert ">Transfer vs. scratch<" in html and ">Accuracy vs labels per class<" in html and "data:image/png;base64," in html
    assert "## Transfer vs. scratch" in (out / "report.md").read_text(encoding="utf-8")


def test_curve_into_a_run_folder_joins_its_report(data, tmp_path):
    headstart.fit(data, backbone="tiny_cnn", strategy="linear", runtime="torch", out=tmp_path / "run")
    transfer_curve(data, backbone="tiny_cnn", scratch_backbone="tiny_cnn", runtime="torch", fractions=[1.0], seeds=1, epochs=1, methods=("linear", "scratch"),
                   out=tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert ">Metrics<" in html and ">Transfer vs. scratch<" in html
    assert headstart.load(tmp_path / "run").classes == data.classes  # the run is untouched


def test_summaries():
    rows = [{"fraction": f, "labels_per_class": n, "method": m, "seed": s, "accuracy": a, "seconds": 1.0 + n, "cpu_seconds": 2.0}
            for f, n, m, s, a in [(0.1, 1, "lin", 0, 0.6), (0.1, 1, "lin", 1, 0.8), (1.0, 10, "lin", 0, 0.9), (1.0, 10, "lin", 1, 0.95),
                                  (0.1, 1, "scr", 0, 0.3), (0.1, 1, "scr", 1, 0.3), (1.0, 10, "scr", 0, 0.5), (1.0, 10, "scr", 1, 0.7)]]
    assert summarize_curve(rows)[(0.1, "lin")] == f"0.700 ± {np.std([0.6, 0.8], ddof=1):.3f}"
    s = method_summary(rows, 0.7)
    assert s["lin"]["labels_per_class_to_target"] == 1 and s["lin"]["seconds_to_target"] == 2.0
    assert s["scr"]["labels_per_class_to_target"] is None  # mean 0.6 at 10 labels: never reaches 0.7
    assert s["scr"]["total_seconds"] == 2 * 2.0 + 2 * 11.0 and s["scr"]["total_cpu_seconds"] == 8.0


@pytest.mark.parametrize("kw, match", [({"fractions": "0,1"}, "in \\(0, 1\\]"), ({"fractions": "a,b"}, "comma-separated"),
                                       ({"methods": ("linear", "dann")}, "'methods'"), ({"seeds": 0}, "'seeds'")])
def test_bad_parameters_name_the_fix(data, tmp_path, kw, match):
    with pytest.raises(HeadstartError, match=match):
        transfer_curve(data, backbone="tiny_cnn", out=tmp_path / "c", **kw)


def test_curve_command(tmp_path):
    res = subprocess.run([*COMMAND, "curve", "shapes:star,pentagon", "--backbone", "tiny_cnn", "--scratch-backbone", "tiny_cnn",
                          "--fractions", "0.5,1", "--seeds", "1", "--epochs", "1", "--methods", "linear,scratch", "--n-per-class", "10", "--runtime", "torch",
                          "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "linear" in res.stdout and "scratch" in res.stdout and "labels/class" in res.stdout
    assert "curve: fraction 0.5 seed 0 linear" in res.stderr  # one progress line per fit
    assert "features:" not in res.stderr  # not every fit's own logs
    assert (tmp_path / "c" / "curve.csv").is_file() and (tmp_path / "c" / "report.html").is_file()
