"""headstart.features: same features on every runtime, order kept, content-keyed cache, modes restored."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.backbones.registry import create_backbone
from headstart.data.dataset import LabeledDataset
from headstart.features import backbone_fingerprint, extract_features
from headstart.features import extract as extract_mod
from headstart.features import runtime as runtime_mod

try:  # LabeledDataset.load reads files through data.images; a stand-in keeps these tests independent of it
    import headstart.data.images  # noqa: F401
except ImportError:  # pragma: no cover
    _stub = types.ModuleType("headstart.data.images")
    _stub.open_image = lambda p: Image.open(p).convert("RGB")
    sys.modules["headstart.data.images"] = _stub


def _dataset(n: int = 37, seed: int = 0, size: int = 40) -> LabeledDataset:
    rng = np.random.default_rng(seed)
    return LabeledDataset(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, n), ["a", "b", "c"], source="test")


def _eager(bb, ds: LabeledDataset) -> np.ndarray:
    """Reference: one item at a time, eval mode, plain torch."""
    tf = bb.preprocessing.transform()
    modes = [(m, m.training) for m in bb.modules()]
    bb.eval()
    with torch.no_grad():
        out = np.stack([bb(tf(ds.load(i))[None])[0].numpy() for i in range(len(ds))])
    for m, training in modes:
        m.training = training
    return out


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_backbone("tiny_cnn")


class _Counter:
    """Wraps make_runner to count the rows each runner computes."""

    def __init__(self, monkeypatch):
        self.rows = 0
        real = runtime_mod.make_runner

        def make(*args, **kwargs):
            runner = real(*args, **kwargs)

            counter = self

            class Counting:
                name = runner.name

                def __call__(self, x):
                    counter.rows += len(x)
                    return runner(x)

            return Counting()

        monkeypatch.setattr(extract_mod, "make_runner", make)


@pytest.fixture
def no_openvino(monkeypatch):
    """Make ``import openvino`` fail, as on an install without it."""
    monkeypatch.setitem(sys.modules, "openvino", None)


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino", "auto"])
def test_runtimes_match_eager_in_order(tiny, tmp_path, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    ds = _dataset()
    ref = _eager(tiny, ds)
    feats = extract_features(tiny, ds, batch_size=8, runtime=runtime, cache=False, cache_dir=tmp_path)
    assert feats.shape == (len(ds), tiny.num_features) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    perm = np.random.default_rng(1).permutation(len(ds))
    again = extract_features(tiny, ds.subset(perm), batch_size=5, runtime=runtime, cache=False, cache_dir=tmp_path)
    np.testing.assert_allclose(again, feats[perm], rtol=1e-4, atol=1e-5)


def test_auto_uses_openvino_when_available_and_logs_it(tiny, tmp_path, caplog):
    pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger="headstart.features"):
        extract_features(tiny, _dataset(6), cache=False, cache_dir=tmp_path)
    assert "runtime openvino" in caplog.text
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    (verdict,) = list((tmp_path / "onnx").glob("*.openvino*.json"))
    assert '"ok": true' in verdict.read_text() and '"f32"' in verdict.read_text()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="headstart.features"):  # reuses the export and the verdict
        extract_features(tiny, _dataset(6), cache=False, cache_dir=tmp_path)
    assert "runtime openvino" in caplog.text and "verified" not in caplog.text and "exported" not in caplog.text


def test_auto_uses_onnx_without_openvino(tiny, tmp_path, caplog, no_openvino):
    ds = _dataset(6)
    with caplog.at_level(logging.INFO, logger="headstart.features"):
        feats = extract_features(tiny, ds, cache=False, cache_dir=tmp_path)
    assert "runtime onnx (OpenVINO not usable" in caplog.text
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    np.testing.assert_allclose(feats, _eager(tiny, ds), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="runtime='openvino' is not usable"):
        extract_features(tiny, ds, runtime="openvino", cache=False, cache_dir=tmp_path)


def test_auto_falls_back_to_onnx_when_openvino_differs(tiny, tmp_path, monkeypatch, caplog):
    pytest.importorskip("openvino")
    real = runtime_mod.OpenVinoRunner.__call__
    monkeypatch.setattr(runtime_mod.OpenVinoRunner, "__call__", lambda self, x: real(self, x) + 0.01)  # e.g. bf16
    ds = _dataset(6)
    with caplog.at_level(logging.INFO, logger="headstart.features"):
        feats = extract_features(tiny, ds, cache=False, cache_dir=tmp_path)
    assert "runtime onnx (OpenVINO not usable" in caplog.text and "OpenVINO features differ" in caplog.text
    np.testing.assert_allclose(feats, _eager(tiny, ds), rtol=1e-4, atol=1e-5)
    monkeypatch.undo()  # the failed check is remembered, not redone on every call
    with pytest.raises(RuntimeError, match="runtime='openvino' is not usable.*earlier check failed"):
        extract_features(tiny, ds, runtime="openvino", cache=False, cache_dir=tmp_path)


def test_openvino_throughput_mode_keeps_order(tiny, tmp_path):
    pytest.importorskip("openvino")
    ds = _dataset(11)
    extract_features(tiny, ds, runtime="onnx", cache=False, cache_dir=tmp_path)  # the export
    (path,) = list((tmp_path / "onnx").glob("*.onnx"))
    x = torch.stack([tiny.preprocessing.transform()(ds.load(i)) for i in range(len(ds))])
    got = runtime_mod.OpenVinoRunner(path, hint="THROUGHPUT", chunk=2)(x)
    np.testing.assert_allclose(got, _eager(tiny, ds), rtol=1e-4, atol=1e-5)


def test_auto_falls_back_to_torch_when_export_fails(tiny, tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(runtime_mod, "_export", broken)
    ds = _dataset(6)
    with caplog.at_level(logging.INFO, logger="headstart.features"):
        feats = extract_features(tiny, ds, cache=False, cache_dir=tmp_path)
    assert "runtime torch (ONNX Runtime not usable" in caplog.text and "unsupported operator" in caplog.text
    np.testing.assert_allclose(feats, _eager(tiny, ds), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="runtime='onnx' is not usable"):
        extract_features(tiny, ds, runtime="onnx", cache=False, cache_dir=tmp_path)


def test_second_call_is_a_cache_hit_without_forward_passes(tiny, tmp_path, monkeypatch):
    ds = _dataset()
    first = extract_features(tiny, ds, batch_size=8, cache_dir=tmp_path)
    calls = []
    tiny.register_forward_hook(lambda *a: calls.append(1))

    def no_runner(*a, **k):
        raise AssertionError("a cache hit must not build a runtime")

    monkeypatch.setattr(extract_mod, "make_runner", no_runner)
    second = extract_features(tiny, ds, batch_size=8, cache_dir=tmp_path)
    assert calls == [] and np.array_equal(first, second)


def test_partial_overlap_reuses_cached_items(tiny, tmp_path, monkeypatch):
    ds = _dataset(30)
    full = extract_features(tiny, ds, cache=False, cache_dir=tmp_path)
    extract_features(tiny, ds.subset(range(0, 20)), cache_dir=tmp_path)
    counter = _Counter(monkeypatch)
    feats = extract_features(tiny, ds.subset(range(10, 30)), batch_size=4, cache_dir=tmp_path)
    assert counter.rows == 10
    np.testing.assert_allclose(feats, full[10:30], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_cache_entry_is_recomputed(tiny, tmp_path, monkeypatch, damage):
    ds = _dataset(12)
    first = extract_features(tiny, ds, cache_dir=tmp_path)
    (block,) = list((tmp_path / "features").rglob("*.hsf"))
    data = bytearray(block.read_bytes())
    if damage == "truncate":
        block.write_bytes(data[: len(data) - 7])
    else:
        data[-9] ^= 0xFF  # one byte of the last feature row
        block.write_bytes(bytes(data))
    counter = _Counter(monkeypatch)
    again = extract_features(tiny, ds, cache_dir=tmp_path)
    assert counter.rows == len(ds)
    np.testing.assert_array_equal(again, first)
    counter.rows = 0
    extract_features(tiny, ds, cache_dir=tmp_path)  # the recomputed rows were cached again
    assert counter.rows == 0


def test_fingerprint_follows_weights_and_preprocessing(tiny, tmp_path):
    torch.manual_seed(1)
    other = create_backbone("tiny_cnn")
    assert backbone_fingerprint(tiny) != backbone_fingerprint(other)
    other.load_state_dict(tiny.state_dict())
    assert backbone_fingerprint(tiny) == backbone_fingerprint(other)
    with torch.no_grad():
        other.blocks[0][1].bias.add_(1.0)  # a BatchNorm shift
    assert backbone_fingerprint(tiny) != backbone_fingerprint(other)
    ds = _dataset(8)
    a = extract_features(tiny, ds, cache_dir=tmp_path)
    b = extract_features(other, ds, cache_dir=tmp_path)  # not served from tiny's entries
    np.testing.assert_allclose(b, _eager(other, ds), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, b)


def test_modes_are_restored_and_eval_semantics_used(tiny, tmp_path):
    tiny.train()
    tiny.blocks[0][1].eval()  # a frozen BatchNorm inside a training model
    modes = {n: m.training for n, m in tiny.named_modules()}
    ds = _dataset(10)
    for runtime in ("torch", "onnx"):
        feats = extract_features(tiny, ds, runtime=runtime, cache=False, cache_dir=tmp_path)
        assert {n: m.training for n, m in tiny.named_modules()} == modes
        np.testing.assert_allclose(feats, _eager(tiny, ds), rtol=1e-4, atol=1e-5)


def test_files_on_disk_with_a_loader_worker(tiny, tmp_path):
    arrays = _dataset(9).items
    paths = []
    for i, a in enumerate(arrays):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    ds = LabeledDataset(paths, np.zeros(len(paths), dtype=np.int64), ["x"])
    feats = extract_features(tiny, ds, batch_size=4, num_workers=1, cache_dir=tmp_path / "c")
    np.testing.assert_allclose(feats, _eager(tiny, _dataset(9)), rtol=1e-4, atol=1e-5)


def test_bad_arguments_name_the_fix(tiny):
    with pytest.raises(ValueError, match="'runtime' parameter must be one of"):
        extract_features(tiny, _dataset(2), runtime="tensorrt")
    with pytest.raises(ValueError, match="'batch_size'"):
        extract_features(tiny, _dataset(2), batch_size=0)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_efficientnet_lite0_matches_eager(tmp_path, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    bb = create_backbone("efficientnet_lite0")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    imgs = np.stack([np.asarray(Image.fromarray(b).resize((96, 96), Image.BILINEAR)) for b in base])  # smooth images
    ds = LabeledDataset(imgs, np.zeros(4, dtype=np.int64), ["x"])
    got = extract_features(bb, ds, runtime=runtime, cache=False, cache_dir=tmp_path)
    eager = extract_features(bb, ds, runtime="torch", cache=False, cache_dir=tmp_path)
    assert got.shape == (4, 1280)
    assert np.abs(got - eager).max() <= 1e-4 * max(1.0, np.abs(eager).max())
