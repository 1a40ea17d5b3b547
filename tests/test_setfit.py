"""SetFit-style contrastive fine-tuning (headstart.train.setfit): the pair sampler, the recipe on a toy set
where a random encoder's embeddings separate the classes poorly, its errors, and a run that predicts
in a fresh process through the new weights' ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from headstart.errors import HeadstartError
from headstart.train.setfit import sample_pairs

FILLER = ("the a of to and in is it that was for on with as his they at be this from have or by one had not but what all were when we "
          "there can an your which their said if do will each about how up out them then she many some so these would other into").split()
CLASS_WORDS = (("excellent", "wonderful", "superb"), ("terrible", "awful", "horrible"))


def toy(n: int, seed: int, filler: int = 4):
    """``n`` texts of ``filler`` random common words and one class word (alternating classes): a random
    encoder's mean-pooled embedding is mostly the filler, so its probe is weak."""
    from headstart.data import LabeledDataset

    rng = np.random.default_rng(seed)
    items, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, filler))
        words.insert(int(rng.integers(filler + 1)), str(rng.choice(CLASS_WORDS[i % 2])))
        items.append(" ".join(words))
        labels.append(i % 2)
    return LabeledDataset(items, np.array(labels), ["neg", "pos"], "text", f"toy{seed}")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------- pair sampler
def test_pairs_balanced_seeded_bounded():
    labels = np.array([0] * 5 + [1] * 12 + [2] * 3)
    a, b, t = sample_pairs(labels, 101, seed=0)
    assert len(a) == len(b) == len(t) == 101 and int(t.sum()) == 51  # bounded by N; ceil(N/2) same-class, floor(N/2) cross-class
    assert np.all(a != b)
    assert np.all((labels[a] == labels[b]) == (t == 1))
    for target in (0, 1):  # anchors cycle through every item: each anchors as often as any other, to within one
        counts = np.bincount(a[t == target], minlength=len(labels))
        assert counts.max() - counts.min() <= 1
    again = sample_pairs(labels, 101, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip((a, b, t), again))
    other = sample_pairs(labels, 101, seed=1)
    assert not (np.array_equal(a, other[0]) and np.array_equal(b, other[1]))
    assert len(sample_pairs(labels, 2, seed=0)[0]) == 2


def test_pair_sampler_errors_name_the_fix():
    with pytest.raises(HeadstartError, match="at least 2 training texts in every class.*'rare' has 1.*--strategy linear"):
        sample_pairs([0, 0, 1], 10, classes=["common", "rare"])
    with pytest.raises(HeadstartError, match="one class.*at least two classes"):
        sample_pairs([0, 0, 0], 10)
    with pytest.raises(HeadstartError, match="at least 2 pairs.*--pairs 2"):
        sample_pairs([0, 0, 1, 1], 1)


# ------------------------------------------------------------------------------------ the recipe
def test_setfit_improves_a_weak_probe(tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(toy(64, 0, filler=6), None, toy(200, 1, filler=6))
    probe = fit(splits, backbone=tiny_bert, save=False, runtime="torch")
    tuned = fit(splits, backbone=tiny_bert, strategy="setfit", pairs=256, backbone_lr=3e-3, save=False, runtime="torch")
    before, after = probe.metrics["test"]["accuracy"], tuned.metrics["test"]["accuracy"]
    assert after >= before + 0.05, (before, after)  # measured: 0.785 -> 0.86
    assert tuned.metrics["strategy"] == "setfit" and "+setfit" in tuned.backbone.provenance.source


def test_settings_and_backbone_errors(tmp_path, tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(toy(8, 0), None, toy(8, 1))
    with pytest.raises(HeadstartError, match="'pairs' parameter must be at least 2"):
        fit(splits, backbone=tiny_bert, strategy="setfit", pairs=1, save=False)
    with pytest.raises(HeadstartError, match="method 'focal'.*drop --method"):
        fit(splits, backbone=tiny_bert, strategy="setfit", method="focal", save=False)
    with pytest.raises(HeadstartError, match="no trainable layers.*minilm_l6"):
        fit(splits, backbone="tfidf", strategy="setfit", save=False)
    with pytest.raises(HeadstartError, match="setfit.*images"):
        fit("shapes:circle,square", backbone="scratch_cnn", strategy="setfit", save=False)
    one = Splits(toy(8, 0).subset(np.array([0, 1, 3, 5])), None, toy(8, 1))  # 'neg' (even items) has one training text
    with pytest.raises(HeadstartError, match="class 'neg' has 1"):
        fit(one, backbone=tiny_bert, strategy="setfit", save=False, runtime="torch")


def test_hybrid_trains_its_encoder_and_rescales(tiny_bert):
    from headstart.backbones import create_backbone
    from headstart.data import Splits
    from headstart.features.fitted import fit_on_train
    from headstart.fitting import fit

    splits = Splits(toy(16, 0), None, toy(8, 1))
    model = fit(splits, backbone=f"{tiny_bert}+tfidf", strategy="setfit", pairs=64, backbone_lr=3e-3, save=False, runtime="torch")
    enc, tfidf = model.backbone.parts
    assert "+setfit" in enc.provenance.source and "+setfit" not in tfidf.provenance.source
    pretrained = create_backbone(f"{tiny_bert}+tfidf")
    fit_on_train(pretrained, splits.train, runtime="torch")
    assert float(model.backbone.scales[0]) != pytest.approx(float(pretrained.scales[0]))  # the encoder's block rescaled on its new features
    assert float(model.backbone.scales[1]) == pytest.approx(float(pretrained.scales[1]))
    assert model.predict(["the superb of a"])[0] in ("neg", "pos")


def test_time_limit_and_unfreeze(tmp_path, tiny_bert):
    import yaml

    from headstart.backbones import create_backbone
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(toy(16, 0), None, toy(8, 1))
    model = fit(splits, backbone=tiny_bert, strategy="setfit", pairs=20000, unfreeze=2, time_limit=5, runtime="torch", out=tmp_path / "run")
    info = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))["training"]["setfit"]
    assert info["pairs"] == 20000 and info["steps"] < 20000 // 16 and "time limit" in info["stopped"]
    before = create_backbone(tiny_bert).state_dict()
    after = model.backbone.state_dict()
    lower = [k for k in before if "encoder.layer.1." not in k and "pooler" not in k]  # --unfreeze 2: the last layer and the (unused) pooler
    assert all(torch_equal(before[k], after[k]) for k in lower)
    assert not all(torch_equal(before[k], after[k]) for k in before)
    with pytest.raises(HeadstartError, match="--unfreeze 9.*between 1 and 4"):
        fit(splits, backbone=tiny_bert, strategy="setfit", unfreeze=9, save=False, runtime="torch")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.fixture(scope="module")
def setfit_run(tmp_path_factory, tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    tmp = tmp_path_factory.mktemp("setfit")
    before = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(tmp / "cache")  # module scope: set by hand, put back below
    try:
        splits = Splits(toy(32, 0), toy(16, 2), toy(40, 1))
        model = fit(splits, backbone=tiny_bert, strategy="setfit", pairs=64, backbone_lr=3e-3, out=tmp / "run")  # runtime auto: ONNX
        yield model, tmp / "run", splits
    finally:
        if before is None:
            os.environ.pop("HEADSTART_CACHE", None)
        else:
            os.environ["HEADSTART_CACHE"] = before


def test_setfit_features_come_from_the_new_weights(setfit_run, tiny_bert):
    from headstart.backbones import create_backbone
    from headstart.features import extract_features
    from headstart.features.cache import backbone_fingerprint

    model, run, splits = setfit_run
    pretrained = create_backbone(tiny_bert)
    assert backbone_fingerprint(model.backbone) != backbone_fingerprint(pretrained)  # no cached feature of the old weights is reused
    fast = extract_features(model.backbone, splits.test, runtime="onnx", cache=False)  # the export of the fine-tuned weights
    eager = extract_features(model.backbone, splits.test, runtime="torch", cache=False)
    old = extract_features(pretrained, splits.test, runtime="torch", cache=False)
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    assert np.abs(eager - old).max() > 1e-2
    cfg = (run / "config.yaml").read_text(encoding="utf-8")
    assert "setfit:" in cfg and "pairs: 64" in cfg
    rows = (run / "history.csv").read_text(encoding="utf-8")
    assert "setfit pairs" in rows


def test_setfit_run_predicts_in_a_fresh_process(setfit_run):
    model, run, _ = setfit_run
    texts = ["the a superb of it", "to terrible and the is"]
    expect = model.predict_proba(texts)
    code = ("import json, sys; import headstart; m = headstart.load(sys.argv[1]); "
            "print(json.dumps(m.predict_proba(json.loads(sys.argv[2])).tolist()))")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(run), json.dumps(texts)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])), expect, atol=1e-4)
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert "+setfit" in meta["backbone"]["provenance"]["source"] and meta["info"]["strategy"] == "setfit"
