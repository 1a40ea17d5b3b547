"""headstart.fit, load and evaluate used like a user would: tiny_cnn on small image folders on disk."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import headstart
from headstart.data import make_shapes
from headstart.errors import DataError, HeadstartError, RunFolderError

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".bin"}


def write_folder(root: Path, counts: dict[str, int], *, fmt: str = "png", seed: int = 0) -> Path:
    """``root/<shape>/<i>.<fmt>``: ``counts[shape]`` 32x32 synthetic images of each shape."""
    ds = make_shapes(list(counts), n_per_class=max(counts.values()), size=32, seed=seed)
    seen = dict.fromkeys(counts, 0)
    for i, (x, y) in enumerate(zip(ds.items, ds.labels)):
        name = ds.classes[y]
        if seen[name] == counts[name]:
            continue
        seen[name] += 1
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(root / name / f"{name}_{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """A module-wide tmp dir, with the feature cache inside it (never the user's ~/.cache)."""
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folder(module_tmp):
    return write_folder(module_tmp / "data", {"circle": 16, "square": 16})


@pytest.fixture(scope="module")
def runs(module_tmp, folder):
    """One run per strategy/head on the same folder, fitted once for the module."""
    out = {}
    for strategy, head in [("linear", "logreg"), ("linear", "mlp"), ("finetune", "logreg")]:
        run = module_tmp / "runs" / f"{strategy}-{head}"
        model = headstart.fit(folder, backbone="tiny_cnn", strategy=strategy, head=head, out=run, epochs=3, seed=0)
        out[strategy, head] = (run, model)
    return out


# --- the run folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,head", [("linear", "logreg"), ("linear", "mlp"), ("finetune", "logreg")])
def test_run_folder_contents(runs, folder, strategy, head):
    run, model = runs[strategy, head]
    assert model.run_dir == run
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.json", "history.csv", "predictions.csv"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"] == str(folder)
    s = config["settings"]
    assert (config["backbone"], s["training"]["strategy"], s["head"]["kind"]) == ("tiny_cnn", strategy, head)
    assert s["training"]["epochs"] == 3 and s["training"]["seed"] == 0 and s["data"]["val"] == 0.15 and s["data"]["test"] == 0.15
    assert config["classes"] == ["circle", "square"]
    assert sum(config["split_sizes"].values()) == 32
    assert "torch" in config["versions"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["n"] == config["split_sizes"]["test"]

    with open(run / "history.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) >= 1

    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == config["split_sizes"]["test"]
    assert len({r["item"] for r in rows}) == len(rows)
    for r in rows:
        assert Path(r["item"]).is_file() and Path(r["item"]).parent.name == r["label"]
        p = np.array([float(r["p_circle"]), float(r["p_square"])])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == ["circle", "square"][int(p.argmax())]
        assert float(r["confidence"]) == pytest.approx(p.max(), abs=1e-6)

    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == ["circle", "square"]
    assert meta["backbone"]["spec"]["name"] == "tiny_cnn"
    assert meta["info"]["head"] == meta["head"]["kind"] == model.info["head"]  # the head trained, as saved


def test_fit_leaves_nothing_in_the_working_directory(tmp_path, folder, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", out=tmp_path / "run", epochs=1)
    assert list(work.iterdir()) == []


_RELOAD = """
import json, sys
import headstart
files = sys.argv[2:]
out = {}
for run in sys.argv[1].split(","):
    model = headstart.load(run)
    out[run] = {"classes": model.classes, "proba": model.predict_proba(files).tolist()}
print(json.dumps(out))
"""


def test_load_in_a_fresh_process_without_the_data(runs, tmp_path):
    """Every strategy's run reloads in a new process (no pickles, no in-memory state) and predicts
    the same probabilities, with its training folder deleted and the run folder moved."""
    data = write_folder(tmp_path / "data", {"circle": 8, "square": 8}, seed=7)
    own = headstart.fit(data, backbone="tiny_cnn", out=tmp_path / "own", seed=1)
    images = tmp_path / "images"
    shutil.copytree(data, images)
    shutil.rmtree(data)  # the training data of the "own" run is gone
    files = sorted(images.rglob("*.png"))[::4]
    models = {tmp_path / "own": own}
    for key in [("linear", "mlp"), ("finetune", "logreg")]:
        run, model = runs[key]
        shutil.copytree(run, tmp_path / run.name)
        models[tmp_path / run.name] = model
    expected = {str(run): model.predict_proba(files) for run, model in models.items()}

    cmd = [sys.executable, "-c", _RELOAD, ",".join(expected), *map(str, files)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(got) == set(expected)
    for run, proba in expected.items():
        assert got[run]["classes"] == ["circle", "square"]
        np.testing.assert_allclose(np.array(got[run]["proba"]), proba, atol=1e-5, err_msg=run)


def test_in_process_load_matches(runs, folder):
    run, model = runs["linear", "logreg"]
    files = sorted(folder.rglob("*.png"))[:5]
    loaded = headstart.load(run)
    assert loaded.classes == model.classes
    np.testing.assert_allclose(loaded.predict_proba(files), model.predict_proba(files), atol=1e-5)
    assert loaded.predict(files) == model.predict(files)


def test_a_run_as_backbone(runs, tmp_path):
    source_run, source = runs["finetune", "logreg"]
    target = write_folder(tmp_path / "target", {"star": 8, "hexagon": 8})
    model = headstart.fit(target, backbone=f"run:{source_run}", strategy="linear", head="mlp", out=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["backbone"]["provenance"]["source"].startswith("run:")
    assert meta["classes"] == ["hexagon", "star"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backbone"] == f"run:{source_run}"
    # The frozen backbone is the source run's: same features on the same images.
    files = sorted(target.rglob("*.png"))[:4]
    np.testing.assert_allclose(model.features(files, runtime="torch"), source.features(files, runtime="torch"), atol=1e-5)
    # ... and the new run loads on its own.
    np.testing.assert_allclose(headstart.load(tmp_path / "run").predict_proba(files), model.predict_proba(files), atol=1e-5)


# --- damaged and incomplete run folders ----------------------------------------------------------


def test_damaged_weights_are_refused(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["linear", "logreg"][0], run)
    data = bytearray((run / "model.safetensors").read_bytes())
    for i in range(len(data) - 16, len(data) - 8):
        data[i] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunFolderError, match=r"does not match the hash.*damaged"):
        headstart.load(run)


def test_missing_model_json_is_named(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["linear", "logreg"][0], run)
    (run / "model.json").unlink()
    with pytest.raises(RunFolderError, match=r"has no model\.json"):
        headstart.load(run)


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        headstart.load(tmp_path / "nope")


# --- parameter validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "fine-tune"}, "The 'strategy' parameter must be one of {'linear', 'finetune', 'progressive', 'auto', 'setfit'}; got 'fine-tune'."),
        ({"head": "svm"}, "The 'head' parameter must be one of {'logreg', 'mlp', 'bagging', 'boosting', 'stacking'}; got 'svm'."),
        ({"val": 1.5}, "The 'val' parameter must be a fraction in [0, 1); got 1.5."),
        ({"test": -0.1}, "The 'test' parameter must be a fraction in [0, 1); got -0.1."),
        ({"epochs": 0}, "The 'epochs' parameter must be at least 1; got 0."),
        ({"class_weights": "inverse"}, "The 'class_weights' parameter must be one of {None, 'balanced'}; got 'inverse'."),
    ],
)
def test_bad_parameters_name_the_fix(folder, tmp_path, kwargs, message):
    with pytest.raises(HeadstartError) as e:
        headstart.fit(folder, backbone="tiny_cnn", out=tmp_path / "run", **kwargs)
    assert str(e.value) == message
    assert not (tmp_path / "run").exists()


def test_val_and_test_fractions_too_large_together(folder, tmp_path):
    with pytest.raises(HeadstartError, match="val"):
        headstart.fit(folder, backbone="tiny_cnn", out=tmp_path / "run", val=0.6, test=0.6)


# --- --out and overwrite -------------------------------------------------------------------------


def test_existing_run_is_not_overwritten_unless_asked(folder, tmp_path):
    run = tmp_path / "run"
    headstart.fit(folder, backbone="tiny_cnn", out=run)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a finished run.*--overwrite"):
        headstart.fit(folder, backbone="tiny_cnn", head="mlp", out=run)
    assert (run / "model.safetensors").read_bytes() == before
    headstart.fit(folder, backbone="tiny_cnn", head="mlp", out=run, overwrite=True)
    assert yaml.safe_load((run / "config.yaml").read_text())["settings"]["head"]["kind"] == "mlp"
    assert headstart.load(run).head.config()["kind"] == "mlp"


def test_existing_run_is_refused_before_any_work(folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    headstart.fit(folder, backbone="tiny_cnn", out=run)

    def no_loading(*args, **kwargs):
        raise AssertionError("fit loaded the data before checking --out")

    monkeypatch.setattr("headstart.data.load_splits", no_loading)
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        headstart.fit(folder, backbone="tiny_cnn", out=run)


def test_overwrite_removes_the_old_runs_files_and_keeps_the_users(folder, tmp_path):
    run = tmp_path / "run"
    headstart.fit(folder, backbone="tiny_cnn", out=run)
    assert (run / "predictions.csv").is_file() and (run / "report_data.npz").is_file()
    stale = ["logs/metrics.csv", "checkpoints/last.ckpt", "activations/group1.npy", "plots/old.png"]  # as a killed or other run leaves them
    for name in stale:
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("old run")
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    (run / "mine" / "data.csv").write_text("mine")
    headstart.fit(folder, backbone="tiny_cnn", head="mlp", out=run, overwrite=True, val=0.0, test=0.0)  # no test split: no predictions
    for name in [*stale, "predictions.csv", "report_data.npz"]:
        assert not (run / name).exists(), f"{name} of the old run is still there"
    assert not (run / "checkpoints").exists() and not (run / "logs").exists()
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine" / "data.csv").read_text() == "mine"
    assert headstart.load(run).head.config()["kind"] == "mlp"
    assert {p.name for p in run.iterdir()} >= {"model.json", "model.safetensors", "config.yaml", "metrics.json", "history.csv", "report.html"}


def test_removing_an_old_run_takes_model_json_first(runs, tmp_path, monkeypatch):
    from headstart.run_folder import remove_run

    run = tmp_path / "run"
    shutil.copytree(runs["finetune", "logreg"][0], run)
    (run / "plots").mkdir(exist_ok=True)

    def crash(*args, **kwargs):
        raise OSError("crash while removing")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(OSError, match="crash"):
        remove_run(run)
    assert not (run / "model.json").exists()  # what is left does not look like a finished run
    with pytest.raises(RunFolderError, match=r"has no model\.json"):
        headstart.load(run)


def test_run_files_get_the_permissions_of_a_plain_open(folder, tmp_path):
    old = os.umask(0o002)  # neither the usual 0o022 nor what mkstemp gives (0600): read at write time, not import time
    try:
        with open(tmp_path / "probe", "w"):
            pass
        os.mkdir(tmp_path / "probe_dir")
        headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", out=tmp_path / "run", epochs=1)
    finally:
        os.umask(old)
    want_file, want_dir = (stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("probe", "probe_dir"))
    assert want_file == 0o664
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*")}
    assert "run/model.safetensors" in modes and "run/logs/metrics.csv" in modes
    assert {p: m for p, m in modes.items() if m != (want_dir if (tmp_path / p).is_dir() else want_file)} == {}


def test_out_may_be_an_existing_empty_folder(folder, tmp_path):
    (tmp_path / "run").mkdir()
    headstart.fit(folder, backbone="tiny_cnn", out=tmp_path / "run")
    assert (tmp_path / "run" / "model.json").is_file()


# --- class weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["linear", "finetune"])
def test_balanced_class_weights_on_an_imbalanced_folder(tmp_path, strategy):
    data = write_folder(tmp_path / "data", {"circle": 30, "square": 6})
    model = headstart.fit(data, backbone="tiny_cnn", strategy=strategy, class_weights="balanced", out=tmp_path / "run", epochs=2)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["settings"]["head"]["class_weights"] == "balanced"
    assert model.metrics["counts"]["train"]["square"] < model.metrics["counts"]["train"]["circle"]
    assert "test" in model.metrics


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_on_a_subset_of_the_classes(runs, tmp_path):
    run, _ = runs["linear", "logreg"]
    data = write_folder(tmp_path / "only_squares", {"square": 4}, seed=3)
    m = headstart.load(run).evaluate(data)
    assert m["n"] == 4
    assert m["classes"] == ["circle", "square"]
    assert np.asarray(m["confusion_matrix"]).sum() == 4
    assert np.asarray(m["confusion_matrix"])[0].sum() == 0  # no true circles
    assert m["per_class"]["square"]["support"] == 4


def test_evaluate_uses_the_test_folder_of_a_split_layout(runs, tmp_path):
    run, _ = runs["linear", "logreg"]
    write_folder(tmp_path / "ds" / "train", {"circle": 5, "square": 5}, seed=4)
    write_folder(tmp_path / "ds" / "test", {"circle": 2, "square": 3}, seed=5)
    m = headstart.load(run).evaluate(tmp_path / "ds")
    assert m["n"] == 5
    assert [m["per_class"][c]["support"] for c in ("circle", "square")] == [2, 3]


def test_evaluate_on_an_unknown_class_names_it(runs, tmp_path):
    run, _ = runs["linear", "logreg"]
    data = write_folder(tmp_path / "data", {"circle": 2, "star": 2}, seed=6)
    with pytest.raises(DataError, match="star"):
        headstart.load(run).evaluate(data)


def test_evaluate_on_a_dataset_with_an_unknown_class_names_it(runs):
    run, _ = runs["linear", "logreg"]
    with pytest.raises(DataError, match="triangle"):
        headstart.load(run).evaluate(make_shapes(("circle", "triangle"), n_per_class=2, size=32))


def test_evaluate_on_a_dataset_in_another_class_order(runs):
    run, _ = runs["linear", "logreg"]
    model = headstart.load(run)
    ds = make_shapes(("square", "circle"), n_per_class=3, size=32, seed=9)
    m = model.evaluate(ds)
    assert m["per_class"]["square"]["support"] == 3 and m["per_class"]["circle"]["support"] == 3
    expected_acc = np.mean(np.array(model.predict(ds)) == np.array([ds.classes[y] for y in ds.labels]))
    assert m["accuracy"] == pytest.approx(expected_acc)


# --- predict on bad inputs -----------------------------------------------------------------------


def test_predict_on_a_corrupt_image_names_the_file(runs, folder, tmp_path):
    model = headstart.load(runs["linear", "logreg"][0])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    good = sorted(folder.rglob("*.png"))[0]
    with pytest.raises(DataError, match="broken.png") as e:
        model.predict([good, bad])
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_predict_on_a_missing_file_is_clear(runs, tmp_path):
    model = headstart.load(runs["linear", "logreg"][0])
    with pytest.raises(DataError, match=r"missing\.png.*no such file"):
        model.predict([tmp_path / "missing.png"])


def test_predict_accepts_jpeg_and_a_single_path(runs, tmp_path):
    model = headstart.load(runs["linear", "logreg"][0])
    data = write_folder(tmp_path / "jpg", {"circle": 1}, fmt="jpg")
    (path,) = list(data.rglob("*.jpg"))
    proba = model.predict_proba(path)
    assert proba.shape == (1, 2) and proba.sum() == pytest.approx(1.0, abs=1e-5)
    assert model.predict(str(path))[0] in model.classes
