"""Fine-tuning strategies on tiny_cnn: plans, freezing/BatchNorm, layer-wise LRs, activation cache, augmentation, auto."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.nn.modules.batchnorm import _BatchNorm

import headstart
from headstart.backbones import create_backbone
from headstart.data import TorchDataset
from headstart.errors import HeadstartError
from headstart.heads import create_head
from headstart.train import (
    Stage,
    finetune_plan,
    frozen_prefix,
    layerwise_lrs,
    make_loader,
    progressive_plan,
    recipe_plan,
    set_trainable_groups,
    train_classifier,
    trainable_group_count,
)
from headstart.train.augment import Augment
from headstart.train.cache import cache_activations
from headstart.train.recipes import build_plan, choose_auto
from headstart.train.selection import Score
from headstart.train.schedule import StageLR, one_cycle, warmup_cosine

from test_fit import write_folder
from test_train import _bars




@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("ft") / "data", {"circle": 24, "square": 24, "triangle": 24})


class Probe(Callback):
    """Records, at each epoch's first batch: trainable flags per group, BN modes, and the lr per param group."""

    def __init__(self):
        self.rows = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        bb = pl_module.backbone
        self.rows[trainer.current_epoch] = {
            "flags": [all(p.requires_grad for p in g.parameters()) for g in bb.layer_groups()],
            "bn": [m.training for m in bb.modules() if isinstance(m, _BatchNorm)],
            "lrs": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
        }


# --- plans, freezing, schedules --------------------------------------------------------------------

def test_plans():
    lrs = layerwise_lrs(3, 1e-4, 0.5)
    assert lrs == pytest.approx([2.5e-5, 5e-5, 1e-4])
    (s,) = finetune_plan(3, 2, 4, 1e-3, backbone_ratio=0.1, decay=0.5)
    assert s.unfreeze == 2 and s.group_lrs == pytest.approx((2.5e-5, 5e-5, 1e-4))
    r = recipe_plan(3, 5, 1e-3, freeze_epochs=2)
    assert [(x.unfreeze, x.epochs) for x in r] == [(0, 2), (3, 5)] and r[1].lr == 5e-4
    p = progressive_plan(3, 2, 1e-3, max_unfreeze=2, stage_decay=0.5)
    assert [x.unfreeze for x in p] == [0, 1, 2] and [x.lr for x in p] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert frozen_prefix(p, 3) == 1 and frozen_prefix(r, 3) == 0
    assert build_plan("finetune", 3, epochs=2, lr=1e-3)[0][0].name == "head_warmup"  # the default recipe
    with pytest.raises(HeadstartError, match="between 0 and 3"):
        build_plan("finetune", 3, epochs=2, lr=1e-3, unfreeze=7)


def test_set_trainable_groups_and_frozen_batchnorm():
    bb = create_backbone("tiny_cnn")
    set_trainable_groups(bb, 1)
    assert [all(p.requires_grad for p in g.parameters()) for g in bb.layer_groups()] == [False, True]
    assert trainable_group_count(bb) == 1
    from headstart.train import ClassifierModule

    m = ClassifierModule(bb, create_head("linear", bb.num_features, 2)).train()
    bns = [x for x in bb.modules() if isinstance(x, _BatchNorm)]
    assert [b.training for b in bns] == [False, True]  # the frozen group's BN stays in eval
    m2 = ClassifierModule(bb, create_head("linear", bb.num_features, 2), train_bn=True).train()
    assert all(b.training for b in bns)  # ... unless asked
    del m, m2


def test_schedules():
    cos, oc = warmup_cosine(100, 10), one_cycle(100)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0 and cos(99) < 0.01
    assert oc(0) == pytest.approx(1 / 25) and oc(25) == pytest.approx(1.0) and oc(99) < 1e-3
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    s = StageLR(opt, total_steps=10, kind="onecycle")
    for _ in range(3):
        opt.step()
        s.step()
    s.begin_stage([0.5], 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 / 25)
    s2 = StageLR(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0), total_steps=1)
    s2.load_state_dict(s.state_dict())
    assert (s2.stage_start, s2.stage_steps, s2.stage_base_lrs, s2.kind) == (3, 4, [0.5], "onecycle")


def test_finetune_unfreeze_one_keeps_the_frozen_prefix_and_uses_layerwise_lrs():
    tf = create_backbone("tiny_cnn").preprocessing.transform()
    train = make_loader(TorchDataset(_bars(96, 0), tf), 32, shuffle=True)
    bb = create_backbone("tiny_cnn")
    before = {k: v.clone() for k, v in bb.blocks[0].state_dict().items()}
    top_before = bb.blocks[1][0].weight.clone()
    probe = Probe()
    stages = finetune_plan(2, 1, 2, 1e-2, backbone_ratio=0.1, decay=0.5)
    res = train_classifier(bb, create_head("linear", bb.num_features, 2), train, stages=stages, callbacks=[probe])
    for k, v in bb.blocks[0].state_dict().items():
        assert torch.equal(v, before[k]), f"frozen {k} changed"  # weights and BN running stats
    assert not torch.equal(bb.blocks[1][0].weight, top_before)
    row = probe.rows[0]
    assert row["flags"] == [False, True] and row["bn"] == [False, True]
    assert row["lrs"]["group1"] == pytest.approx(2 * row["lrs"]["group0"]) and row["lrs"]["head"] == pytest.approx(10 * row["lrs"]["group1"])
    assert res.steps == 2 * len(train) and {r["stage_name"] for r in res.history} == {"unfreeze1"}
    assert all(p.requires_grad for p in bb.parameters())  # the caller's flags are given back


def test_progressive_stops_when_a_stage_does_not_improve():
    tf = create_backbone("tiny_cnn").preprocessing.transform()
    train, val = make_loader(TorchDataset(_bars(64, 0), tf), 32, shuffle=True), make_loader(TorchDataset(_bars(64, 1), tf), 64, shuffle=False)
    bb = create_backbone("tiny_cnn")
    # The second stage cannot move anything (lr 1e-12): it does not improve, so the third never runs.
    stages = [Stage("head", 2, 0, 1e-1), Stage("still", 2, 0, 1e-12), Stage("unfreeze2", 2, 2, 1e-2, (1e-3, 1e-3))]
    res = train_classifier(bb, create_head("linear", bb.num_features, 2), train, val, stages=stages, stop_on_plateau=True)
    assert [r["stage_name"] for r in res.history] == ["head", "head", "still", "still"] and res.stopped_early
    assert res.best_epoch == 1


# --- the activation cache -------------------------------------------------------------------------

def _twin_models(n_train):
    """``(twin, train, val)``: ``twin()`` gives a fresh scratch_cnn + linear head, always with the same weights."""
    bb0 = create_backbone("scratch_cnn")
    head0 = create_head("linear", bb0.num_features, 2)
    tf = bb0.preprocessing.transform()

    def twin():
        bb, head = create_backbone("scratch_cnn"), create_head("linear", bb0.num_features, 2)
        bb.load_state_dict(bb0.state_dict())
        head.load_state_dict(head0.state_dict())
        return bb, head

    return twin, TorchDataset(_bars(n_train, 0), tf), TorchDataset(_bars(64, 1), tf)


def test_activation_cache_gives_the_same_result_with_less_work():
    twin, train_ds, val_ds = _twin_models(192)
    stages = finetune_plan(2, 1, 4, 3e-3)
    results = {}
    for cached in (False, True):
        bb, head = twin()
        calls = []  # items through the frozen first group: the work the cache saves (counted, not timed)
        bb.layer_groups()[0].register_forward_hook(lambda m, i, o: calls.append(len(o)))
        if cached:
            set_trainable_groups(bb, 1)
            tr, va = cache_activations(bb, 1, train_ds, batch_size=64), cache_activations(bb, 1, val_ds, batch_size=64)
        else:
            tr, va = train_ds, val_ds
        res = train_classifier(bb, head, make_loader(tr, 32, shuffle=True, seed=1), make_loader(va, 64, shuffle=False),
                               stages=stages, start_group=1 if cached else 0, seed=1)
        results[cached] = (sum(calls), res, bb.state_dict())
    (n_full, r_full, sd_full), (n_cache, r_cache, sd_cache) = results[False], results[True]
    assert [r["val_loss"] for r in r_cache.history] == pytest.approx([r["val_loss"] for r in r_full.history], rel=1e-4, abs=1e-5)
    for k in sd_full:
        assert torch.allclose(sd_full[k].float(), sd_cache[k].float(), atol=1e-4), k
    assert n_cache == len(train_ds) + len(val_ds) and n_full > 3 * n_cache, (n_cache, n_full)  # once vs every epoch


def test_per_stage_activation_cache_gives_the_same_progressive_run():
    """Progressive unfreezing with each stage's activations cached at its own boundary trains the same
    weights as running the whole backbone every step (scratch_cnn: 2 groups, stages unfreeze 1 then 2)."""
    from headstart.train.cache import StagedActivations

    twin, train_ds, val_ds = _twin_models(128)
    stages = progressive_plan(2, 2, 3e-3)[1:]  # unfreeze1, unfreeze2 (the probe replaces the head stage)
    results = {}
    for cached in (False, True):
        bb, head = twin()
        staged = StagedActivations(bb, train_ds, val_ds, batch_size=32, make_loader=make_loader, seed=1, num_groups=2) if cached else None
        res = train_classifier(bb, head, make_loader(train_ds, 32, shuffle=True, seed=1), make_loader(val_ds, 32, shuffle=False),
                               stages=stages, stop_on_plateau=True, seed=1, staged=staged, patience=None)
        results[cached] = (res, bb.state_dict(), staged)
    (r_full, sd_full, _), (r_cache, sd_cache, staged) = results[False], results[True]
    assert [r["stage_name"] for r in r_cache.history] == [r["stage_name"] for r in r_full.history]
    assert [r["val_loss"] for r in r_cache.history] == pytest.approx([r["val_loss"] for r in r_full.history], rel=1e-4, abs=1e-5)
    for k in sd_full:
        assert torch.allclose(sd_full[k].float(), sd_cache[k].float(), atol=1e-4), k
    assert staged._k == 0 and staged.seconds > 0  # the last stage trains every group: its inputs are the images


def test_fit_logs_the_activation_cache(folder, tmp_path, caplog):
    caplog.set_level("INFO", logger="headstart")
    model = headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", unfreeze=1, out=tmp_path / "run", epochs=2)
    assert "caching activations at the freeze boundary (group 1 of 2)" in caplog.text
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["training"]["activation_cache"]["group"] == 1 and cfg["settings"]["training"]["unfreeze"] == 1
    assert not (tmp_path / "run" / "checkpoints").exists()  # a finished run keeps no checkpoints
    assert model.metrics["strategy"] == "finetune"


# --- augmentation ---------------------------------------------------------------------------------

def test_augmentation_presets_match_the_preprocessing():
    pre = create_backbone("tiny_cnn").preprocessing
    img = _bars(1, 0).load(0)
    assert torch.equal(Augment.preset("none").transform(pre)(img), pre.transform()(img))
    light, strong = Augment.preset("light").transform(pre), Augment.preset("strong").transform(pre)
    torch.manual_seed(0)
    outs = [light(img) for _ in range(4)] + [strong(img) for _ in range(2)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:4])  # random
    assert not Augment.preset("light", hflip=False).hflip  # configurable, e.g. for digits
    with pytest.raises(ValueError, match="'augment' parameter must be one of"):
        Augment.preset("heavy")


# --- fit with every strategy ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,stages", [
    ({"strategy": "finetune"}, {"unfreeze_all"}),  # head_warmup: the probe replaces it
    ({"strategy": "finetune", "unfreeze": "all", "augment": "light", "schedule": "onecycle", "label_smoothing": 0.1, "clip_grad": 1.0}, {"unfreeze_all"}),
    ({"strategy": "progressive", "patience": None}, {"unfreeze1", "unfreeze2"}),
    ({"strategy": "progressive", "unfreeze": 1, "class_weights": "balanced"}, {"unfreeze1"}),
    ({"strategy": "progressive", "head": "mlp", "patience": None}, {"unfreeze1", "unfreeze2"}),
])
def test_fit_strategies(folder, tmp_path, kwargs, stages):
    run = tmp_path / "run"
    model = headstart.fit(folder, backbone="tiny_cnn", out=run, epochs=1, lr=3e-3, **kwargs)
    hist = (run / "history.csv").read_text().splitlines()
    assert hist[0].split(",")[:1] == ["epoch"] and "stage_name" in hist[0]
    names = {line.split(",")[hist[0].split(",").index("stage_name")] for line in hist[1:]}
    assert names <= stages and len(names) >= (2 if kwargs.get("patience", 5) is None else 1)
    assert (run / "logs" / "metrics.csv").is_file() and (run / "model.safetensors").is_file()
    assert 0.0 <= model.metrics["test"]["accuracy"] <= 1.0
    assert yaml.safe_load((run / "config.yaml").read_text())["settings"]["training"]["strategy"] == kwargs["strategy"]


def test_auto_says_why(folder, tmp_path):
    headstart.fit(folder, backbone="tiny_cnn", strategy="auto", out=tmp_path / "run", epochs=1)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert metrics["auto"]["strategy"] in ("linear", "finetune") and metrics["strategy"] == metrics["auto"]["strategy"]
    assert cfg["auto"]["reason"] and "probe" not in cfg["auto"]
    assert choose_auto(5, 0.5, 4)[0] == "linear" and "overfit" in choose_auto(5, 0.5, 4)[1]
    assert choose_auto(100, 0.99, 4)[0] == "linear" and choose_auto(100, 0.7, 4)[0] == "finetune"
    assert choose_auto(100, None, 4)[0] == "linear" and choose_auto(100, 0.5, 0)[0] == "linear"


def test_cli_fit_progressive(folder, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    r = CliRunner().invoke(app, ["fit", str(folder), "-b", "tiny_cnn", "-s", "progressive", "--unfreeze", "1", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model.json").is_file()
    r = CliRunner().invoke(app, ["fit", str(folder), "-b", "tiny_cnn", "-s", "finetune", "--unfreeze", "9", "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0 and "between 0 and 2" in str(r.exception)


def test_loggers(tmp_path):
    from headstart.train.loop import _make_loggers

    assert _make_loggers(None, "csv") is False and len(_make_loggers(tmp_path, "csv")) == 1
    with pytest.raises(ValueError, match="'logger' parameter must be one of"):
        _make_loggers(tmp_path, "wandb")
    for kind, module, fix in (("tensorboard", "tensorboard", "pip install tensorboard"), ("mlflow", "mlflow", "pip install mlflow")):
        try:
            __import__(module)
        except ImportError:
            if kind == "tensorboard":
                try:
                    __import__("tensorboardX")
                    continue
                except ImportError:
                    pass
            with pytest.raises(HeadstartError, match=fix):
                _make_loggers(tmp_path, kind)
        else:
            assert len(_make_loggers(tmp_path, kind)) == 2


def test_start_weights_are_kept_unless_an_epoch_beats_them():
    tf = create_backbone("tiny_cnn").preprocessing.transform()
    train, val = make_loader(TorchDataset(_bars(64, 0), tf), 32, shuffle=True), make_loader(TorchDataset(_bars(32, 1), tf), 32, shuffle=False)
    bb = create_backbone("tiny_cnn")
    head = create_head("linear", bb.num_features, 2)
    start = {k: v.clone() for k, v in {**bb.state_dict(), **head.state_dict()}.items()}
    res = train_classifier(bb, head, train, val, stages=finetune_plan(2, 2, 2, 1e-2), initial=Score(1.0, -1.0, 32))  # unbeatable
    assert res.best_epoch == -1 and len(res.history) == 2
    for k, v in {**bb.state_dict(), **head.state_dict()}.items():
        assert torch.equal(v, start[k]), k


def test_finetune_starts_from_the_linear_probe(folder, tmp_path):
    headstart.fit(folder, backbone="tiny_cnn", strategy="progressive", unfreeze=1, out=tmp_path / "run", epochs=1)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    init = cfg["training"]["head_init"]
    assert init["from"].startswith("linear probe") and 0.0 <= init["probe_val_acc"] <= 1.0 and init["probe_val_loss"] > 0
