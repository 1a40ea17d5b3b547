"""TF-IDF as a text backbone (fitted on the training split only), hybrids (``a+b``), and the sparse baseline in metrics.json.

Hybrid tests join TF-IDF with a tiny random BERT (2 layers of width 32, the real MiniLM tokenizer)
saved as a local Hugging Face folder; extraction runs in eager torch with a per-test cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.backbones import create_backbone
from headstart.data import LabeledDataset, Splits
from headstart.errors import BackboneError, HeadstartError
from headstart.features import extract_features
from headstart.features.fitted import fit_on_train

POS = ["great phone, battery lasts for days", "great value and it works perfectly", "fantastic sound, very happy with it",
       "the best purchase, great value", "excellent build quality, very happy", "works perfectly, would buy again",
       "superb screen, lovely design, great", "really happy, it works perfectly", "lovely, light and well made",
       "five stars, great value"]
NEG = ["it broke after two days, awful", "terrible quality, do not buy", "the battery died, awful",
       "waste of money, it stopped working", "arrived broken, terrible support", "very disappointed, it feels cheap",
       "the screen cracked, awful", "loud, slow and terrible", "refund requested, nothing works",
       "worst purchase ever, do not buy"]


def _ds(texts, labels, source="test") -> LabeledDataset:
    return LabeledDataset(list(texts), np.asarray(labels, dtype=np.int64), ["neg", "pos"], "text", source)


def _splits(test_extra: str = "") -> Splits:
    """Train: 7 + 7 texts; val and test: 3 + 3 each; ``test_extra`` appended to every test text."""
    def part(lo, hi, extra=""):
        texts = [t + extra for t in POS[lo:hi]] + [t + extra for t in NEG[lo:hi]]
        return _ds(texts, [1] * (hi - lo) + [0] * (hi - lo))

    return Splits(part(0, 7), _ds(POS[7:] + NEG[7:], [1] * 3 + [0] * 3), part(7, 10, test_extra))


def _env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}



@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------- tfidf
def test_tfidf_equals_sklearn_and_forward_equals_transform():
    from sklearn.feature_extraction.text import TfidfVectorizer

    sp = _splits()
    bb = create_backbone("tfidf")
    assert not bb.fitted
    fit_on_train(bb, sp.train)
    x = extract_features(bb, sp.test)
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(sp.train.items)
    assert bb.vocab == sorted(ref.vocabulary_, key=ref.vocabulary_.get)
    np.testing.assert_allclose(x, ref.transform(sp.test.items).toarray(), atol=1e-6)
    np.testing.assert_allclose(bb(bb.tokenize(sp.test.items)).numpy(), x, atol=1e-6)  # the training loop's path
    assert not (Path(os.environ["HEADSTART_CACHE"]) / "features").exists()  # not cached


def test_fitted_on_the_training_split_only(tmp_path):
    from headstart.fitting import fit

    sp = _splits(test_extra=" zyzzyva")  # in every test text (>= min_df), in no training text
    model = fit(sp, backbone="tfidf", save=False)
    assert "zyzzyva" not in model.backbone.index and "great" in model.backbone.index
    assert model.backbone.provenance.pretrained_on.startswith("14 training texts")
    only_new = model.features(["zyzzyva zyzzyva"])
    assert only_new.shape == (1, model.backbone.num_features) and not only_new.any()


def test_unfitted_tfidf_names_the_fix():
    with pytest.raises(BackboneError, match="no vocabulary yet.*fit_texts"):
        extract_features(create_backbone("tfidf"), _splits().test)
    with pytest.raises(BackboneError, match="no term in at least 2"):
        create_backbone("tfidf").fit_texts(["one", "two"])
    with pytest.raises(BackboneError, match="takes no --weights"):
        create_backbone("tfidf", weights="x.pth")


def test_tfidf_run_round_trip_in_a_fresh_process(tmp_path):
    from headstart.fitting import fit

    run = tmp_path / "run"
    model = fit(_splits(), backbone="tfidf", out=run)
    saved = json.loads((run / "backbone" / "tfidf.json").read_text(encoding="utf-8"))
    assert saved["vocabulary"] == model.backbone.vocab and not list(run.rglob("*.pkl")) and not list(run.rglob("*.pickle"))
    metrics = json.loads((run / "metrics.json").read_text())
    base = metrics["sparse_baseline"]
    assert base["model"].startswith("TF-IDF") and 0.0 <= base["accuracy"] <= 1.0 and base["n_test"] == 6
    assert "Bag-of-words baseline" in (run / "report.md").read_text(encoding="utf-8")  # beside the run's figures
    texts = ["great value, works perfectly", "terrible, do not buy", "zyzzyva"]
    expect = model.predict_proba(texts)
    code = ("import json, sys; import headstart; m = headstart.load(sys.argv[1]); "
            "print(json.dumps(m.predict_proba(json.loads(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(run), json.dumps(texts)], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])), expect, atol=1e-6)


def test_tfidf_char_is_registered_and_fits():
    bb = create_backbone("tfidf_char")
    fit_on_train(bb, _splits().train)
    assert bb.fitted and any(" " in t or len(t) <= 5 for t in bb.vocab)


# ------------------------------------------------------------------------------------ hybrid
def test_hybrid_dimensions_and_block_scaling(tiny_bert):
    sp = _splits()
    hy = create_backbone(f"{tiny_bert}+tfidf")
    fit_on_train(hy, sp.train, runtime="torch")
    enc, tf = hy.parts
    assert hy.num_features == 32 + tf.num_features and hy.fitted
    x = extract_features(hy, sp.train, runtime="torch")
    blocks = (x[:, :32], x[:, 32:])
    for b in blocks:  # each block at unit total variance on the training split
        assert b.astype(np.float64).var(0).sum() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(x[:, 32:], extract_features(tf, sp.train) * float(hy.scales[1]), rtol=1e-6)
    np.testing.assert_allclose(hy(hy.tokenize(sp.train.items)).detach().numpy(), x, atol=1e-4)  # forward == extraction


def test_hybrid_run_saves_and_loads(tmp_path, tiny_bert):
    from headstart.fitting import fit
    from headstart.model import load

    run = tmp_path / "run"
    model = fit(_splits(), backbone=f"{tiny_bert}+tfidf", out=run, runtime="torch")
    assert (run / "backbone" / "0" / "tokenizer.json").is_file() and (run / "backbone" / "1" / "tfidf.json").is_file()
    again = load(run)
    torch.testing.assert_close(again.backbone.scales, model.backbone.scales)
    texts = ["great value, works perfectly", "terrible, do not buy"]
    np.testing.assert_allclose(again.predict_proba(texts, runtime="torch"), model.predict_proba(texts, runtime="torch"), atol=1e-5)


def test_auto_always_ranks_tfidf_for_texts(tiny_bert):
    from headstart.fitting import fit
    from headstart.select.rank import DEFAULT_TEXT_CANDIDATES

    assert "tfidf" in DEFAULT_TEXT_CANDIDATES
    model = fit(_splits(), backbone="auto", candidates=tiny_bert, save=False, runtime="torch")  # a list without it: tfidf joins
    ranked = [r["backbone"] for r in model.metrics["backbone_ranking"]]
    assert sorted(ranked) == sorted([tiny_bert, "tfidf"])


# ------------------------------------------------------------------------------------ errors
def test_clear_errors():
    from headstart.fitting import fit

    with pytest.raises(HeadstartError, match="images but backbone 'tfidf' is a text backbone.*--backbone"):
        fit("shapes:circle,square,triangle", backbone="tfidf", save=False)
    with pytest.raises(BackboneError, match="Part 'nope' of hybrid backbone 'tfidf\\+nope': Unknown backbone 'nope'"):
        create_backbone("tfidf+nope")
    with pytest.raises(BackboneError, match="'scratch_cnn' of hybrid.*image backbone.*text parts"):
        create_backbone("tfidf+scratch_cnn")
    with pytest.raises(BackboneError, match="not a hybrid of named parts"):
        create_backbone("tfidf+")
    with pytest.raises(BackboneError, match="names a part twice"):
        create_backbone("tfidf+tfidf")
