"""The ``headstart`` command run as a user runs it (a subprocess), and the demo."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from headstart.data import make_shapes

BIN = Path(sys.executable).with_name("headstart")
COMMAND = [str(BIN)] if BIN.is_file() else [sys.executable, "-m", "headstart.cli"]


def write_folder(root: Path, counts: dict[str, int], *, seed: int = 0) -> Path:
    """``root/<shape>/<i>.png``: ``counts[shape]`` 32x32 synthetic images of each shape."""
    ds = make_shapes(list(counts), n_per_class=max(counts.values()), size=32, seed=seed)
    seen = dict.fromkeys(counts, 0)
    for i, (x, y) in enumerate(zip(ds.items, ds.labels)):
        name = ds.classes[y]
        if seen[name] < counts[name]:
            seen[name] += 1
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(root / name / f"{name}_{i:03d}.png")
    return root


def start(*args, cwd: Path, columns: int | None = None) -> subprocess.Popen:
    """Start ``headstart ARGS`` as a user would (a subprocess); :func:`finish` collects it."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # rich's default width when piped
    if columns:
        env["COLUMNS"] = str(columns)
    args = [*COMMAND, *map(str, args)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def headstart(*args, cwd: Path, timeout: float = 300, columns: int | None = None) -> subprocess.CompletedProcess:
    return finish(start(*args, cwd=cwd, columns=columns), timeout)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2 and one "error: ..." line (the last on stderr; log lines may come before it)."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], res.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A module-wide working directory, with the feature cache inside it."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def commands(work):
    """Every subprocess of this module, started side by side (each spends ~3 s importing torch and
    scikit-learn; two cores run two at a time): ``commands[name]`` waits for one and returns it."""
    data = write_folder(work / "data", {"circle": 12, "square": 12})
    run = work / "run"
    predict_files = sorted((data / "circle").glob("*.png"))[:2] + sorted((data / "square").glob("*.png"))[:1]
    eval_data = write_folder(work / "eval", {"circle": 3, "square": 2}, seed=5)
    (work / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    first = {  # need no run folder
        "fit": (["fit", data, "--backbone", "tiny_cnn", "--out", run], None),
        "backbones": (["backbones"], 200),
        "unknown backbone": (["fit", data, "--backbone", "tiny_cn", "--out", work / "never"], None),
        "missing data": (["fit", work / "no_such_folder", "--backbone", "tiny_cnn"], None),
        "one class": (["fit", write_folder(work / "one_class", {"circle": 6}), "--backbone", "tiny_cnn"], None),
        "one image": (["fit", write_folder(work / "one_image", {"circle": 6, "square": 1}), "--backbone", "tiny_cnn"], None),
        "missing run": (["predict", work / "no_run", predict_files[0]], None),
    }
    then = {  # use the run that "fit" writes
        "predict": (["predict", run, *predict_files, "--json", "--top-k", "2"], None),
        "evaluate": (["evaluate", run, eval_data], 120),
        "corrupt image": (["predict", run, work / "bad.jpg"], None),
    }
    procs = {name: start(*args, cwd=work, columns=cols) for name, (args, cols) in first.items()}
    results = {"fit": finish(procs.pop("fit"))}
    procs.update({name: start(*args, cwd=work, columns=cols) for name, (args, cols) in then.items()})
    results.update({name: finish(p) for name, p in procs.items()})
    results["paths"] = {"data": data, "run": run, "predict_files": predict_files}
    return results


@pytest.fixture(scope="module")
def fitted(commands):
    p = commands["paths"]
    return p["data"], p["run"], commands["fit"]


def test_backbones_lists_offline_ones(commands):
    res = commands["backbones"]
    assert res.returncode == 0, res.stderr
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") > 3}
    assert "efficientnet_lite0" in rows and "tiny_cnn" in rows
    assert rows["efficientnet_lite0"].split("│")[3].strip() == "yes"
    assert rows["timm:<name>"].split("│")[3].strip().startswith("no")


def test_fit_prints_accuracy_and_writes_the_run(fitted):
    _, run, res = fitted
    assert res.returncode == 0, res.stderr
    assert re.search(r"test: accuracy \d\.\d{4}", res.stdout), res.stdout
    assert str(run) in res.stdout.replace("\n", "")
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.json", "history.csv", "predictions.csv"):
        assert (run / name).is_file(), name


def test_predict_json_lines(commands):
    res, files = commands["predict"], commands["paths"]["predict_files"]
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(files)  # stdout holds the results and nothing else (logs go to stderr)
    for f, line in zip(files, lines):
        r = json.loads(line)
        assert r["file"] == str(f)
        assert r["prediction"] in ("circle", "square")
        assert 0.5 <= r["probability"] <= 1.0
        assert r["top"][0] == {"class": r["prediction"], "probability": r["probability"]}
        assert {t["class"] for t in r["top"]} == {"circle", "square"}
        assert sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=2e-6)


def test_predict_table_in_process(fitted, cli):
    data, run, _ = fitted
    f = sorted((data / "square").glob("*.png"))[0]
    res = cli("predict", run, f, "--top-k", "5")
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.strip().splitlines()
    cells = line.split("\t")
    assert cells[0] == str(f) and len(cells) == 3  # top-k is capped at the number of classes
    assert {c.split()[0] for c in cells[1:]} == {"circle", "square"}
    probs = [float(c.split()[1]) for c in cells[1:]]
    assert probs[0] >= probs[1] and sum(probs) == pytest.approx(1.0, abs=2e-4)


def test_evaluate_prints_accuracy_and_confusion_matrix(commands):
    res = commands["evaluate"]  # 3 circles, 2 squares
    assert res.returncode == 0, res.stderr
    assert re.search(r"accuracy \d\.\d{4}.*n=5", res.stdout), res.stdout
    assert "confusion matrix" in res.stdout
    matrix = [line for line in res.stdout.splitlines() if re.match(r"│ (circle|square)\s+│\s+\d+\s+│\s+\d+\s+│$", line)]
    counts = [[int(v) for v in re.findall(r"│\s+(\d+)", line)] for line in matrix]
    assert [sum(row) for row in counts] == [3, 2]


def test_evaluate_json_in_process(fitted, tmp_path, cli):
    _, run, _ = fitted
    data = write_folder(tmp_path / "eval", {"square": 2}, seed=6)
    res = cli("evaluate", run, data, "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["n"] == 2 and m["classes"] == ["circle", "square"]


# --- bad inputs: exit code 2 and one "error:" line, no traceback ---------------------------------


def test_unknown_backbone_suggests_a_close_name(commands, work):
    assert_one_line_error(commands["unknown backbone"], "Unknown backbone 'tiny_cn'", "Did you mean 'tiny_cnn'")
    assert not (work / "never").exists()


def test_missing_data_folder(commands):
    assert_one_line_error(commands["missing data"], "no_such_folder", "not found")


def test_single_class_folder(commands):
    assert_one_line_error(commands["one class"], "'circle'", "at least 2")


def test_class_with_one_image(commands):
    assert_one_line_error(commands["one image"], "'square'", "1 image")


def test_run_folder_that_does_not_exist(commands):
    assert_one_line_error(commands["missing run"], "no_run", "does not exist")


def test_corrupt_image_to_predict(commands):
    assert_one_line_error(commands["corrupt image"], "bad.jpg", "not a readable image")


# The same "error:" path, in process.


def test_bad_strategy_is_the_library_message(fitted, tmp_path, cli):
    data, _, _ = fitted
    res = cli("fit", data, "--backbone", "tiny_cnn", "--strategy", "fine-tune", "--out", tmp_path / "run")
    assert_one_line_error(res, "The 'strategy' parameter must be one of {'linear', 'finetune', 'progressive', 'auto', 'setfit'}; got 'fine-tune'.")


def test_existing_run_needs_overwrite(fitted, tmp_path, cli):
    data, run, _ = fitted
    assert_one_line_error(cli("fit", data, "--backbone", "tiny_cnn", "--out", run), "already holds a finished run", "--overwrite")
    res = cli("fit", data, "--backbone", "tiny_cnn", "--head", "mlp", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    res = cli("fit", data, "--backbone", "tiny_cnn", "--out", tmp_path / "run", "--overwrite")
    assert res.returncode == 0 and "accuracy" in res.stdout, res.stderr
    assert json.loads((tmp_path / "run" / "model.json").read_text())["head"]["kind"] == "linear"


def test_evaluate_run_that_does_not_exist(fitted, tmp_path, cli):
    data, _, _ = fitted
    assert_one_line_error(cli("evaluate", tmp_path / "no_run", data), "no_run", "does not exist")


def test_predict_missing_file(fitted, tmp_path, cli):
    _, run, _ = fitted
    assert_one_line_error(cli("predict", run, tmp_path / "missing.png"), "missing.png", "no such file")


def test_evaluate_unknown_class(fitted, tmp_path, cli):
    _, run, _ = fitted
    data = write_folder(tmp_path / "eval", {"circle": 2, "hexagon": 2})
    assert_one_line_error(cli("evaluate", run, data), "hexagon")


def test_error_text_is_not_markup_and_not_wrapped(tmp_path, cli):
    data = tmp_path / "[bold]" / ("a_long_folder_name_" * 6)
    assert_one_line_error(cli("fit", data), f"{data} was not found")


# --- the demo ------------------------------------------------------------------------------------


def test_run_demo_small(tmp_path):
    from rich.console import Console

    from headstart.demo import run_demo

    buf = io.StringIO()
    out = tmp_path / "demo"
    res = run_demo(out=out, n_source=20, n_target=10, epochs=1, console=Console(file=buf, width=160))
    assert [r["model"] for r in res["rows"]] == ["source", "transfer", "scratch", "imagenet"]
    for r in res["rows"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert math.isfinite(r["test_loss"]) and r["seconds"] > 0 and r["n_train"] > 0
    assert set(res["cross_novelty"]) == set(res["cross_confidence"]) == {"transfer", "scratch", "imagenet"}
    assert all(math.isfinite(v) and v >= 0 for v in res["cross_novelty"].values())
    assert all(0.0 < v <= 1.0 for v in res["cross_confidence"].values())
    for key in ("source", "transfer", "scratch", "imagenet"):
        assert (out / key / "model.json").is_file()
    assert set(res["continual"]) == {"naive", "rehearsal"}
    for c in res["continual"].values():
        assert c["old_classes"] == ["circle", "square", "triangle"] and c["new_classes"] == ["star", "pentagon", "hexagon"]
        assert c["forgetting"] == pytest.approx(c["old_before"] - c["old_after"])
    assert (out / "six-rehearsal" / "memory.json").is_file()
    text = buf.getvalue()
    assert "test accuracy" in text and "a cross (never seen)" in text and "One CNN for all six shapes" in text


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    res = headstart("demo", "--out", tmp_path / "demo", cwd=tmp_path, timeout=600, columns=160)
    assert res.returncode == 0, res.stderr
    acc = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in ("source", "transfer", "scratch", "imagenet"):
            acc[cells[0]] = float(cells[2])
    assert set(acc) == {"source", "transfer", "scratch", "imagenet"}, res.stdout
    assert acc["imagenet"] >= 0.95
    assert acc["transfer"] > acc["scratch"]
    assert "One CNN for all six shapes" in res.stdout and "keeps more of them" in res.stdout
    assert "demo finished" in res.stdout
