"""features.precision: bf16 features only where a check on the run's own images shows they agree with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.backbones.registry import create_backbone
from headstart.data.dataset import LabeledDataset
from headstart.features import backbone_fingerprint, extract_features
from headstart.features import precision as precision_mod


def _dataset(n: int = 60, seed: int = 0) -> LabeledDataset:
    rng = np.random.default_rng(seed)
    return LabeledDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 3, ["a", "b", "c"], source="test")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_backbone("tiny_cnn")


@pytest.fixture
def simulated(monkeypatch, tmp_path):
    """bf16 'supported', and the check's extraction replaced by separable fp32 features plus a chosen
    error and inference time per candidate: all-bf16, and bf16 after an fp32 stem."""
    state = {"noise": {"bf16": 0.0, "bf16@stem": 0.0}, "seconds": {"f32": 2.0, "bf16": 1.0, "bf16@stem": 1.3}, "calls": []}

    def fake_run(backbone, ds, **kw):
        state["calls"].append(len(ds))
        rng = np.random.default_rng(0)
        dim = int(backbone.num_features)
        f32 = np.eye(3, dim)[ds.labels] * 4.0 + np.random.default_rng(1).normal(0, 1.0, (len(ds), dim))
        out = {"f32": (f32, state["seconds"]["f32"])}
        for name, noise in state["noise"].items():
            out[name] = (f32 + rng.normal(0, noise, f32.shape), state["seconds"][name])
        return out

    monkeypatch.setattr(precision_mod, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision_mod, "run_precisions", fake_run)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    return state


def test_bf16_chosen_when_probe_and_features_agree(tiny, simulated):
    simulated["noise"].update(bf16=1e-4, **{"bf16@stem": 1e-4})
    d = precision_mod.choose_precision(tiny, _dataset(), total_items=10_000)
    assert d["precision"] == "bf16" and d["agreement"] == 1.0 and d["cosine_mean"] > 0.999  # the faster of the two
    assert simulated["calls"] == [60] and "agrees" in d["reason"]
    assert [t["precision"] for t in d["tried"]] == ["f32", "bf16", "bf16@stem"]
    assert tiny.feature_precision is d


def test_an_fp32_stem_is_chosen_where_all_bf16_differs(tiny, simulated):
    simulated["noise"].update(bf16=0.12, **{"bf16@stem": 1e-4})  # all-bf16: cosine below 0.999
    d = precision_mod.choose_precision(tiny, _dataset(), total_items=10_000)
    assert d["precision"] == "bf16@stem" and d["cosine_mean"] > 0.999
    assert "bf16 (fp32 up to stem)" in d["reason"] and d["tried"][1]["cosine_mean"] < precision_mod.MIN_COSINE
    assert precision_mod.backbone_precision(tiny, backbone_fingerprint(tiny)) == "bf16@stem"


def test_the_checked_sample_is_cached_at_the_chosen_precision(tiny, simulated, monkeypatch):
    simulated["noise"].update(bf16=0.12, **{"bf16@stem": 1e-4})
    ds = _dataset()
    d = precision_mod.choose_precision(tiny, ds, total_items=10_000)
    checked = precision_mod.run_precisions(tiny, ds)["bf16@stem"][0]  # the simulation is deterministic
    monkeypatch.setattr("headstart.features.extract.make_runner", lambda *a, **k: pytest.fail("the sample was extracted again"))
    np.testing.assert_allclose(extract_features(tiny, ds, precision=d["precision"]), checked, rtol=1e-6)


def test_bf16_refused_when_agreement_falls_below_the_threshold(tiny, simulated):
    simulated["noise"].update(bf16=3.0, **{"bf16@stem": 3.0})  # predictions flip
    d = precision_mod.choose_precision(tiny, _dataset(), total_items=10_000)
    assert d["precision"] == "f32" and d["agreement"] < precision_mod.MIN_AGREEMENT
    assert d["reason"].startswith("bf16 refused") and "probe agreement" in d["reason"] and "fp32 up to stem" in d["reason"]


def test_bf16_refused_when_features_differ_though_predictions_agree(tiny, simulated, monkeypatch):
    simulated["noise"].update(bf16=0.12, **{"bf16@stem": 0.12})  # cosine below 0.999, argmax unchanged
    d = precision_mod.check(tiny, _dataset(), min_agreement=0.0)
    assert d["precision"] == "f32" and d["cosine_mean"] < precision_mod.MIN_COSINE


def test_bf16_refused_where_it_agrees_but_is_no_faster(tiny, simulated):
    simulated["noise"].update(bf16=1e-4, **{"bf16@stem": 1e-4})
    simulated["seconds"].update(bf16=2.5, **{"bf16@stem": 2.2})  # slower than fp32's 2.0
    d = precision_mod.check(tiny, _dataset())
    assert d["precision"] == "f32" and "no faster" in d["reason"]


@pytest.mark.parametrize("kw, reason", [
    ({"setting": "f32"}, "--feature-precision f32"),
    ({"runtime": "onnx"}, "runtime 'onnx'"),
    ({"total_items": 100}, "fewer than"),
])
def test_no_check_where_bf16_cannot_pay_or_was_not_asked(tiny, simulated, kw, reason):
    d = precision_mod.choose_precision(tiny, _dataset(), **{"total_items": 10_000, **kw})
    assert d["precision"] == "f32" and reason in d["reason"] and simulated["calls"] == []


def test_bf16_forced_skips_the_check_and_unsupported_cpu_stays_f32(tiny, simulated, monkeypatch):
    assert precision_mod.choose_precision(tiny, _dataset(), setting="bf16")["precision"] == "bf16"
    monkeypatch.setattr(precision_mod, "bf16_supported", lambda: False)
    d = precision_mod.choose_precision(tiny, _dataset(), setting="bf16")
    assert d["precision"] == "f32" and "no native bf16" in d["reason"] and simulated["calls"] == []
    with pytest.raises(ValueError, match="'precision' parameter"):
        precision_mod.choose_precision(tiny, _dataset(), setting="fp8")


def test_decision_applies_only_to_the_weights_it_was_checked_on(tiny):
    fp = backbone_fingerprint(tiny)
    tiny.feature_precision = {"precision": "bf16", "fingerprint": fp}
    assert precision_mod.backbone_precision(tiny, fp) == "bf16"
    with torch.no_grad():
        next(tiny.parameters()).add_(1.0)  # fine-tuned: another fingerprint
    assert precision_mod.backbone_precision(tiny, backbone_fingerprint(tiny)) == "f32"


def test_bf16_features_have_their_own_cache_key(tiny, tmp_path):
    if not precision_mod.bf16_supported():
        pytest.skip("this CPU has no native bf16 in OpenVINO")
    ds = _dataset(12)
    f32 = extract_features(tiny, ds, precision="f32", cache_dir=tmp_path)
    bf16 = extract_features(tiny, ds, precision="bf16", cache_dir=tmp_path)
    assert not np.array_equal(f32, bf16) and np.allclose(f32, bf16, rtol=0.05, atol=0.05)
    np.testing.assert_array_equal(extract_features(tiny, ds, precision="f32", cache_dir=tmp_path), f32)
    np.testing.assert_array_equal(extract_features(tiny, ds, precision="bf16", cache_dir=tmp_path), bf16)


def test_bf16_on_a_cpu_without_it_is_fp32_under_the_fp32_key(tiny, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision_mod, "bf16_supported", lambda: False)
    ds = _dataset(8)
    with caplog.at_level("WARNING", logger="headstart.features"):
        asked = extract_features(tiny, ds, precision="bf16", cache_dir=tmp_path)
    assert "no native bf16" in caplog.text
    f32 = extract_features(tiny, ds, precision="f32", cache_dir=tmp_path, runtime="torch", cache=False)
    np.testing.assert_allclose(asked, f32, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(extract_features(tiny, ds, precision="f32", cache_dir=tmp_path), asked)


def test_check_refuses_bf16_on_a_cpu_without_it(tiny, simulated, monkeypatch):
    monkeypatch.setattr(precision_mod, "bf16_supported", lambda: False)
    d = precision_mod.check(tiny, _dataset())
    assert d["precision"] == "f32" and "no native bf16" in d["reason"] and simulated["calls"] == []


def test_bf16_needs_openvino(tiny):
    with pytest.raises(ValueError, match="precision='bf16' runs in OpenVINO"):
        extract_features(tiny, _dataset(4), precision="bf16", runtime="onnx", cache=False)


def test_the_decision_travels_with_the_run(tmp_path):
    import headstart

    if not precision_mod.bf16_supported():
        pytest.skip("this CPU has no native bf16 in OpenVINO")
    ds = _dataset(30)
    model = headstart.fit(ds, backbone="tiny_cnn", strategy="linear", feature_precision="bf16", out=tmp_path / "run", image_size=32)
    assert model.backbone.feature_precision["precision"] == "bf16"
    again = headstart.load(tmp_path / "run")
    assert again.backbone.feature_precision == model.backbone.feature_precision
    np.testing.assert_allclose(again.predict_proba(ds.items[:5]), model.predict_proba(ds.items[:5]), atol=1e-6)
