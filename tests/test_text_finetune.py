"""Text fine-tuning made fast enough to use (issue 17, item 4): sequence-length bucketing of the training
and validation batches, --time-limit honoured by the text recipe, --strategy auto on texts, and the
--pairs error. The tiny random BERT of ``conftest.tiny_bert`` (the real MiniLM tokenizer) throughout."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from headstart.errors import HeadstartError
from headstart.train.text_recipe import length_grouped_indices, padded_tokens, text_loaders, token_lengths

WORDS = ("the a of to and in is it that was for on with as his they at be this from have or by one had not but what all were when "
         "there can an your which their said if do will each about how up out them then she many some so these would other into").split()


def texts(n: int, seed: int):
    """``n`` texts of 1 to 40 random words and one class word (alternating classes): lengths vary a lot."""
    from headstart.data import LabeledDataset

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        words = list(rng.choice(WORDS, int(rng.integers(1, 41))))
        words.insert(int(rng.integers(len(words) + 1)), ("superb", "awful")[i % 2])
        items.append(" ".join(words))
    return LabeledDataset(items, np.arange(n) % 2, ["neg", "pos"], "text", f"texts{seed}")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------ bucketing
def test_length_groups_hold_every_index_once_seeded_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 80, size=1000)
    g = torch.Generator().manual_seed(0)
    first, second = length_grouped_indices(lengths, 32, g), length_grouped_indices(lengths, 32, g)
    assert sorted(first) == sorted(second) == list(range(1000))  # each item once per epoch
    assert first != second  # a new order each epoch ...
    assert first == length_grouped_indices(lengths, 32, torch.Generator().manual_seed(0))  # ... and the same for the same seed
    assert lengths[first[0]] == lengths.max()  # the longest batch first (memory runs out at once, if it does)
    shuffled = rng.permutation(1000)
    assert padded_tokens(lengths, first, 32) < 0.8 * padded_tokens(lengths, shuffled, 32)
    assert padded_tokens(lengths, first, 32) >= lengths.sum()


def test_bucketed_loaders_same_texts_same_outputs_fewer_pads(tiny_bert):
    from headstart.backbones import create_backbone
    from headstart.data import Splits

    bb = create_backbone(tiny_bert).eval()
    splits = Splits(texts(96, 0), texts(40, 1), None)
    plain_tr, plain_val = text_loaders(bb, splits, 8, seed=0, bucket=False)
    buck_tr, buck_val = text_loaders(bb, splits, 8, seed=0, bucket=True)

    def pads(loader):
        return sum(int((x["attention_mask"] == 0).sum()) for x, _ in loader)

    # training: every text once per epoch, the labels with it, and fewer padding tokens
    seen = []
    for x, y in buck_tr:
        ids = x["input_ids"]
        for row, label in zip(ids, y):
            seen.append((bb.tokenizer.decode([int(t) for t in row if int(t) != bb.pad_id], skip_special_tokens=True), int(label)))
    want = [(bb.tokenizer.decode(e.ids, skip_special_tokens=True), int(lab)) for e, lab in zip(bb.tokenizer.encode_batch(list(splits.train.items)), splits.train.labels)]
    assert sorted(seen) == sorted(want)
    assert pads(buck_tr) < 0.7 * pads(plain_tr)
    # validation: longest first; mapped back to the items, the same features as unbucketed batches
    order = list(buck_val.sampler)
    assert sorted(order) == list(range(len(splits.val)))
    lengths = token_lengths(bb, splits.val.items)
    assert list(lengths[order]) == sorted(lengths, reverse=True)
    with torch.inference_mode():
        plain = torch.cat([bb(x) for x, _ in plain_val])
        bucketed = torch.cat([bb(x) for x, _ in buck_val])
        labels = torch.cat([y for _, y in buck_val])
    restored = torch.empty_like(bucketed)
    restored[torch.as_tensor(order)] = bucketed
    torch.testing.assert_close(restored, plain, atol=1e-5, rtol=1e-4)
    assert labels.tolist() == [int(splits.val.labels[i]) for i in order]
    assert pads(buck_val) < 0.7 * pads(plain_val)


# -------------------------------------------------------------------------- time limit and auto
def test_text_finetune_keeps_to_the_time_limit(tiny_bert):
    from headstart.backbones import create_backbone
    from headstart.data import Splits
    from headstart.train.text_recipe import fit_text_finetune

    bb = create_backbone(tiny_bert)
    splits = Splits(texts(64, 0), texts(32, 1), texts(32, 2))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    head, history = fit_text_finetune(bb, splits, seed=0, class_weights=None, batch_size=8, epochs=10_000, lr=1e-3, backbone_lr=None,
                                      patience=None, progress=False, dropout=None, timings=timings, runtime="torch", head_epochs=1, max_time=30)
    took = time.perf_counter() - t
    assert took < 30 + 10, took  # the limit, plus slack for a loaded shared CPU
    assert timings["train"] > 0 and 0 < sum(row["stage"] > 0 for row in history) < 10_000  # stage 2 ran, and stopped at the limit
    assert "+finetune" in bb.provenance.source


def test_fit_passes_its_time_limit_to_the_text_recipe(tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(texts(64, 0), texts(32, 1), texts(32, 2))
    t = time.perf_counter()
    model = fit(splits, backbone=tiny_bert, strategy="finetune", epochs=10_000, patience=None, time_limit=15, runtime="torch", save=False)
    assert time.perf_counter() - t < 15 + 20  # not 10,000 epochs: stopped in stage 2, or stage 2 skipped when the head took the time
    assert model.metrics["strategy"] == "finetune"


def test_text_finetune_skips_stage_2_when_no_time_is_left(tiny_bert):
    from headstart.data import Splits
    from headstart.train.text_recipe import fit_text_finetune
    from headstart.backbones import create_backbone

    bb = create_backbone(tiny_bert)
    splits = Splits(texts(32, 0), texts(16, 1), texts(16, 2))
    timings: dict[str, float] = {}
    head, history = fit_text_finetune(bb, splits, seed=0, class_weights=None, batch_size=8, epochs=3, lr=1e-3, backbone_lr=None, patience=None,
                                      progress=False, dropout=None, timings=timings, runtime="torch", max_time=0.5)
    assert timings["train"] == 0.0 and all(row["stage"] == 0 for row in history)
    assert "+finetune" not in bb.provenance.source and bb.provenance.weights_sha256 is not None  # the encoder was not trained


def test_auto_on_few_texts_picks_setfit(tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(texts(16, 0), None, texts(16, 2))  # no validation split, 8 texts per class
    model = fit(splits, backbone=tiny_bert, strategy="auto", pairs=32, runtime="torch", save=False)
    assert model.metrics["strategy"] == "setfit" and "SetFit" in model.metrics["auto"]["reason"]
    assert "+setfit" in model.backbone.provenance.source


def test_hybrid_finetune_resets_the_trained_part_only(tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit

    splits = Splits(texts(32, 0), texts(16, 1), texts(16, 2))
    model = fit(splits, backbone=f"{tiny_bert}+tfidf", strategy="finetune", epochs=1, runtime="torch", save=False)
    enc, tfidf = model.backbone.parts
    assert "+finetune" in enc.provenance.source and enc.provenance.weights_sha256 is None  # its cached features are not reused
    assert "+finetune" not in tfidf.provenance.source and tfidf.provenance.weights_sha256 is not None


# ------------------------------------------------------------------------------------ --pairs
def test_pairs_without_setfit_is_an_error_naming_the_fix(tiny_bert):
    from headstart.data import Splits
    from headstart.fitting import fit
    from headstart.settings import TrainingSettings

    splits = Splits(texts(8, 0), None, texts(8, 1))
    for strategy in ("linear", "finetune", "progressive"):
        with pytest.raises(HeadstartError, match=rf"--pairs .*strategy '{strategy}' uses no pairs\. Fix: add --strategy setfit.*or drop --pairs"):
            fit(splits, backbone=tiny_bert, strategy=strategy, pairs=100, save=False)
    assert TrainingSettings(strategy="setfit", pairs=100).pairs == 100
    assert TrainingSettings(strategy="auto", pairs=100).pairs == 100  # auto picks setfit for few texts
