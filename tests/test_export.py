"""``headstart export``: one ONNX graph with the run's predictions, INT8 agreement, dynamic batch, files, bad inputs,
and ``OnnxClassifier`` in a fresh process without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import headstart
from headstart.data import LabeledDataset, Splits, from_arrays
from headstart.errors import DataError, HeadstartError, RunFolderError
from headstart.export import OnnxClassifier, export_run

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colours(n, seed, noise=60):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.clip(np.array(c)[None, None, None] + rng.normal(0, noise, (n, 20, 20, 3)), 0, 255) for c in COLOURS.values()])
    return x.astype(np.uint8), np.repeat(np.arange(3), n)


DATA = Splits(*[from_arrays(*colours(n, seed=i), list(COLOURS), source=f"colours:{i}") for i, n in enumerate((20, 15, 10))])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    headstart.fit(DATA, backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=3, lr=1e-2, out=out)
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_run(run, quantize="int8", out=tmp_path_factory.mktemp("exp") / "x", calibration=DATA)


def test_fp32_graph_gives_the_runs_logits(exported, run):
    fp = exported.rows["onnx_fp32"]
    assert fp["max_abs_diff"] <= 1e-4 and fp["agreement"] == 1.0
    assert fp["accuracy"] == exported.rows["torch_fp32"]["accuracy"]
    model = headstart.load(run)  # and the folder alone predicts what the run does, through Pillow preprocessing
    clf = OnnxClassifier(exported.out, precision="fp32")
    np.testing.assert_allclose(clf.predict_proba(list(DATA.val.items)), model.predict_proba(DATA.val, runtime="torch"), atol=2e-2)
    assert clf.predict(list(DATA.val.items)) == model.predict(DATA.val, runtime="torch")


def test_int8_agrees_with_the_run(exported):
    q = exported.rows["onnx_int8"]
    assert q["agreement"] >= 0.99 and abs(q["accuracy"] - exported.rows["torch_fp32"]["accuracy"]) <= 0.01
    assert 0 < q["max_abs_diff"]  # really quantized: not the fp32 graph again
    clf = OnnxClassifier(exported.out)
    assert clf.precision == "int8"


def test_dynamic_batch(exported):
    for precision in ("fp32", "int8"):
        clf = OnnxClassifier(exported.out, precision=precision)
        x = np.stack([clf.preprocess(im) for im in DATA.test.items[:7]])
        full = clf.session.run(None, {"images": x})[0]
        assert full.shape == (7, 3)
        one = np.concatenate([clf.session.run(None, {"images": x[i : i + 1]})[0] for i in range(7)])
        np.testing.assert_allclose(one, full, atol=1e-5)


def test_export_files(exported):
    report = json.loads((exported.out / "export.json").read_text())
    assert set(report["rows"]) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    for row in report["rows"].values():
        assert set(row) == {"file", "size_mb", "images_per_s", "accuracy", "agreement", "max_abs_diff"}
        assert row["images_per_s"] > 0 and row["size_mb"] > 0
    assert report["timing"]["batch_size"] == 32 and report["checked_on"]["n"] == len(DATA.val)
    pre = json.loads((exported.out / "preprocessing.json").read_text())
    assert pre["classes"] == list(COLOURS) and pre["input"]["height"] == 32 and pre["backbone"]["id"] == "tiny_cnn"
    assert {"mean", "std", "resize", "headstart_version", "models"} <= set(pre)


def test_int8_refused_below_the_agreement_threshold(run, tmp_path):
    with pytest.raises(HeadstartError, match="--min-agreement"):
        export_run(run, quantize="int8", out=tmp_path / "x", calibration=DATA, min_agreement=1.01)
    assert not (tmp_path / "x" / "model.onnx").exists()


def test_default_data_is_the_runs_recorded_validation_split(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for i, (x, y) in enumerate(zip(np.concatenate([d.items for d in (DATA.train, DATA.val, DATA.test)]), np.concatenate([d.labels for d in (DATA.train, DATA.val, DATA.test)]))):
        (root / DATA.classes[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(root / DATA.classes[y] / f"{i}.png")
    headstart.fit(str(root), backbone="tiny_cnn", strategy="linear", out=tmp_path / "run", val=0.3, test=0.2)
    res = export_run(tmp_path / "run", out=tmp_path / "x")  # no calibration: config.yaml's data, fractions and seed
    val = headstart.load_splits(str(root), val=0.3, test=0.2, seed=0).val
    assert res.report["checked_on"]["n"] == len(val) and res.report["checked_on"]["data"].startswith("validation split of")
    assert res.rows["onnx_fp32"]["agreement"] == 1.0 and "onnx_int8" not in res.rows


def test_bad_inputs(run, tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        export_run(tmp_path / "nope", out=tmp_path / "x")
    with pytest.raises(HeadstartError, match="format must be one of"):
        export_run(run, format="tflite", out=tmp_path / "x")
    with pytest.raises(HeadstartError, match="--quantize must be one of"):
        export_run(run, quantize="int4", out=tmp_path / "x")
    with pytest.raises(DataError, match="--calibration DATA"):  # trained on in-memory data: no recorded source
        export_run(run, out=tmp_path / "x")
    text = tmp_path / "text_run"
    text.mkdir()
    meta = json.loads((run / "model.json").read_text())
    (text / "model.json").write_text(json.dumps({**meta, "modality": "text"}))
    with pytest.raises(HeadstartError, match="text run; export handles image runs only"):
        export_run(text, out=tmp_path / "x")


def test_cli_export(run, tmp_path, cli):
    from PIL import Image

    for i, (x, y) in enumerate(zip(DATA.val.items, DATA.val.labels)):  # --calibration: a folder of class folders
        (tmp_path / "cal" / DATA.classes[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(tmp_path / "cal" / DATA.classes[y] / f"{i}.png")
    r = cli("export", run, "--format", "onnx", "--quantize", "int8", "--out", tmp_path / "ok", "--calibration", tmp_path / "cal")
    assert r.returncode == 0, r.stderr
    assert "onnx_int8" in r.stdout and "images/s" in r.stdout
    assert {p.name for p in (tmp_path / "ok").iterdir()} == {"model.onnx", "model_int8.onnx", "preprocessing.json", "export.json"}
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "e", "--calibration", str(run / "nope"))
    assert r.returncode == 2 and "--calibration" in r.stderr
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "e2", "--calibration", "shapes")
    assert r.returncode == 2 and "classes the run does not know" in r.stderr
    r = cli("export", run, "--format", "onnnx", "--out", tmp_path / "e3")
    assert r.returncode == 2 and "format must be one of" in r.stderr


def test_classifier_imports_no_torch(exported):
    code = (
        "import sys; from headstart.export import OnnxClassifier; import numpy as np\n"
        f"clf = OnnxClassifier({str(exported.out)!r})\n"
        "print(clf.predict([np.full((20, 20, 3), (220, 40, 40), np.uint8)]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'lightning', 'timm', 'sklearn'))\n"
        "bad += sorted(m for m in sys.modules if m.startswith('headstart.') and m.split('.')[1] in ('model', 'train', 'features', 'fitting', 'backbones'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "red" in r.stdout


@pytest.fixture(scope="module")
def pruned(run, tmp_path_factory):
    return export_run(run, prune=0.5, prune_epochs=1, quantize="int8", out=tmp_path_factory.mktemp("pruned") / "x", calibration=DATA)


def test_prune_removes_channels_and_the_graph_matches_the_pruned_model(pruned, run):
    p = pruned.report["prune"]
    assert p["amount"] == 0.5 and p["params"][1] < p["params"][0] and p["macs"][1] < p["macs"][0]
    assert set(pruned.rows) == {"torch_fp32", "torch_pruned", "onnx_pruned_fp32", "onnx_pruned_int8"}
    assert pruned.rows["onnx_pruned_fp32"]["max_abs_diff"] <= 1e-4  # against the pruned eager model
    assert pruned.rows["torch_pruned"]["accuracy"] >= pruned.rows["torch_fp32"]["accuracy"] - 0.02
    assert p["finetune"]["epochs"] == 1 and p["finetune"]["train_items"] == len(DATA.train)
    import onnx

    graph = onnx.load(str(pruned.out / "model.onnx"))
    assert sum(int(np.prod(t.dims)) for t in graph.graph.initializer) < p["params"][0]  # fewer weights in the file, not zeros
    pre = json.loads((pruned.out / "preprocessing.json").read_text())
    assert pre["pruned"]["amount"] == 0.5
    clf = OnnxClassifier(pruned.out, precision="fp32")
    assert clf.predict(list(DATA.val.items)) == [DATA.classes[i] for i in DATA.val.labels]


def test_prune_bad_inputs(run, tmp_path, monkeypatch):
    for bad in (0, 1, 1.5, -0.2, "lots"):
        with pytest.raises(HeadstartError, match="between 0 and 1"):
            export_run(run, prune=bad, out=tmp_path / "x", calibration=DATA)
    with pytest.raises(DataError, match="calibration=Splits"):  # in-memory data, only validation images given: nothing to fine-tune on
        export_run(run, prune=0.3, out=tmp_path / "x", calibration=DATA.val)
    with pytest.raises(HeadstartError, match="--prune-epochs must be at least 1"):
        export_run(run, prune=0.3, prune_epochs=0, out=tmp_path / "x", calibration=DATA)
    with pytest.raises(HeadstartError, match="--max-accuracy-drop"):
        export_run(run, prune=0.5, prune_epochs=1, out=tmp_path / "x", calibration=DATA, max_accuracy_drop=-1.0)
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # not installed
    with pytest.raises(HeadstartError, match="pip install 'torch-pruning==1.6.1'"):
        export_run(run, prune=0.3, out=tmp_path / "x", calibration=DATA)


def test_openvino_export(run, tmp_path):
    res = export_run(run, format="openvino", quantize="int8", out=tmp_path / "ov", calibration=DATA)
    assert set(res.rows) == {"torch_fp32", "openvino_fp32", "openvino_int8"}
    assert res.rows["openvino_fp32"]["max_abs_diff"] <= 1e-4 and res.rows["openvino_int8"]["agreement"] >= 0.99
    assert {p.name for p in res.out.iterdir()} == {"model.xml", "model.bin", "model_int8.xml", "model_int8.bin", "preprocessing.json", "export.json"}
    model = headstart.load(run)
    clf = OnnxClassifier(res.out, precision="fp32")  # the torch-free classifier (and so headstart serve) runs the IR in OpenVINO
    np.testing.assert_allclose(clf.predict_proba(list(DATA.val.items)), model.predict_proba(DATA.val, runtime="torch"), atol=2e-2)
    x = np.stack([clf.preprocess(im) for im in DATA.test.items[:5]])
    assert clf.session.run(None, {"images": x})[0].shape == (5, 3)  # dynamic batch


def test_the_runs_report_shows_its_exports(exported, pruned, run):
    from headstart.evaluate.export_table import read_exports
    from headstart.evaluate.report import build_report

    recorded = read_exports(run)
    assert str(exported.out.resolve()) in recorded and recorded[str(pruned.out.resolve())]["prune"]["amount"] == 0.5
    html, md, _ = build_report(run)
    assert 'id="exports"' in html and "onnx_int8" in html and "onnx_pruned_fp32" in html and "Pruning removed 50%" in html
    assert "| onnx_pruned_int8 |" in md
