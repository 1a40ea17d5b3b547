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


# --- the decoding pipeline (issue 16) ------------------------------------------------------------


def _jpegs(tmp_path, n: int, size=(300, 200)) -> LabeledDataset:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"{i:03d}.jpg"))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return LabeledDataset(paths, rng.integers(0, 2, n), ["a", "b"])


@pytest.mark.parametrize("threads", [1, 3, None])
def test_pipeline_gives_the_sequential_features_in_order(tiny, tmp_path, threads):
    ds = _jpegs(tmp_path, 23)
    feats = extract_features(tiny, ds, batch_size=5, runtime="torch", num_workers=threads, cache=False, cache_dir=tmp_path / "c")
    tf = tiny.preprocessing.transform()
    tiny.eval()
    with torch.no_grad():  # the sequential path: one item after another, decoded the same way
        ref = np.stack([tiny(tf(ds.load(i, decode_size=tf.decode_size))[None])[0].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)


def test_pipeline_error_names_the_file_and_keeps_what_was_computed(tiny, tmp_path, monkeypatch):
    from headstart.errors import DataError

    ds = _jpegs(tmp_path, 14)
    data = open(ds.items[11], "rb").read()
    open(ds.items[11], "wb").write(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError, match="011.jpg"):
        extract_features(tiny, ds, batch_size=4, runtime="torch", cache_dir=tmp_path / "c")
    counter = _Counter(monkeypatch)
    extract_features(tiny, ds.subset(range(8)), batch_size=4, runtime="torch", cache_dir=tmp_path / "c")
    assert counter.rows == 0  # the first two batches were cached before the failure


def test_decode_threads_share_the_cores_by_cost():
    from headstart.features.extract import decode_threads

    assert decode_threads(0.0028, 0.00175, runtime_threads=2, cores=2) == 2  # 500-px JPEGs, OpenVINO bf16 (Intel)
    assert decode_threads(0.0028, 0.004, runtime_threads=2, cores=2) == 2  # 500-px JPEGs, OpenVINO fp32 (Intel)
    assert decode_threads(0.038, 0.0021, runtime_threads=2, cores=2) == 2  # 12-MP JPEGs in draft mode
    assert decode_threads(0.0062, 0.01225, runtime_threads=2, cores=2) == 1  # 500-px JPEGs, fp32 on AVX2: decoding ~1/5 of the work
    assert decode_threads(0.0028, 0.0005, runtime_threads=8, cores=8) == 8  # many cores, decoding the larger stage
    assert decode_threads(0.0028, 0.01, runtime_threads=8, cores=8) == 1  # decoding 3% of the work
    assert decode_threads(0.0, 0.01, runtime_threads=2, cores=8) == 1
    assert decode_threads(0.05, 0.0, runtime_threads=2, cores=8) == 8


def test_torch_threads_restored_after_extraction(tiny, tmp_path):
    before = torch.get_num_threads()
    extract_features(tiny, _jpegs(tmp_path, 12), batch_size=4, runtime="onnx", cache=False, cache_dir=tmp_path / "c")
    assert torch.get_num_threads() == before


def test_bad_decoding_threads_name_the_fix(tiny):
    with pytest.raises(ValueError, match="'num_workers' parameter \\(decoding threads\\)"):
        extract_features(tiny, _dataset(2), num_workers=0)


# --- JPEG draft decoding (issue 16) --------------------------------------------------------------


def _photo(path, size, fmt="JPEG", exif_orientation=None):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    kw = {"quality": 92} if fmt == "JPEG" else {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(path, fmt, **kw)
    return str(path)


def test_draft_decodes_large_jpegs_small_but_never_below_what_the_model_needs(tmp_path):
    from headstart.data.images import open_image

    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocessing
    big = _photo(tmp_path / "big.jpg", (4000, 3000))
    img = open_image(big, draft=pre.decode_size)
    need = pre.decode_size(4000, 3000)
    assert img.size == (1000, 750) and img.width >= need[0] and img.height >= need[1]  # 1/4 scale
    assert open_image(big).size == (4000, 3000)
    png = _photo(tmp_path / "big.png", (2400, 1800), fmt="PNG")
    assert open_image(png, draft=pre.decode_size).size == (2400, 1800)  # only JPEGs are drafted
    small = _photo(tmp_path / "small.jpg", (500, 375))
    assert open_image(small, draft=pre.decode_size).size == (500, 375)  # too small to reduce
    tf = pre.transform()
    full, drafted = tf(open_image(big)), tf(open_image(big, draft=pre.decode_size))
    assert full.shape == drafted.shape == (3, 224, 224)  # the model sees the same size


def test_draft_follows_exif_orientation(tmp_path):
    from headstart.data.images import open_image

    from headstart.backbones.base import Preprocessing

    pre = Preprocessing(input_size=(64, 256), crop_pct=1.0)  # a wide, non-square input: orientation matters
    assert pre.decode_size(1000, 4000) == (512, 128)
    path = _photo(tmp_path / "rotated.jpg", (4000, 1000), exif_orientation=6)  # stored landscape, shown portrait
    img = open_image(path, draft=pre.decode_size)
    assert img.size == (1000, 4000)  # the upright width 1000 cannot be halved (512 needed): not drafted
    path = _photo(tmp_path / "upright.jpg", (4000, 1000))
    assert open_image(path, draft=pre.decode_size).size == (1000, 250)  # 1/4 scale: both sides still large enough


def test_draft_still_refuses_a_truncated_jpeg(tmp_path):
    from headstart.data.images import open_image
    from headstart.errors import DataError

    pre = create_backbone("efficientnet_lite0", pretrained=False).preprocessing
    path = _photo(tmp_path / "cut.jpg", (3000, 2000))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg.*truncated"):
        open_image(path, draft=pre.decode_size)


def test_drafted_features_agree_with_the_full_decode(tmp_path):
    bb = create_backbone("efficientnet_lite0").eval()
    tf = bb.preprocessing.transform()
    ds = LabeledDataset([_photo(tmp_path / "p.jpg", (4000, 3000))], [0], ["x"])
    with torch.no_grad():
        full = bb(tf(ds.load(0))[None])[0].numpy()
        drafted = bb(tf(ds.load(0, decode_size=tf.decode_size))[None])[0].numpy()
    assert not np.array_equal(full, drafted)  # it was really drafted
    assert float(full @ drafted / np.linalg.norm(full) / np.linalg.norm(drafted)) > 0.999


def test_decoding_is_part_of_the_image_cache_key(tiny):
    from headstart.features.extract import image_cache_fingerprint

    fp = backbone_fingerprint(tiny)
    assert image_cache_fingerprint(fp) != fp and image_cache_fingerprint(fp) == image_cache_fingerprint(fp)
