"""The one training loop: tiny_cnn on a toy image problem, freezing, early stopping, loss terms."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from headstart.backbones import create_backbone
from headstart.data.dataset import LabeledDataset, TorchDataset
from headstart.heads import create_head, feature_loader
from headstart.train import ClassifierModule, TrainResult, train_classifier

ROW_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}


def _bars(n: int, seed: int) -> LabeledDataset:
    """Dark noisy 32x32 images with one bright horizontal (class 0) or vertical (class 1) bar."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8)
    for i, pos in enumerate(rng.integers(4, 28, n)):
        if y[i]:
            x[i, :, pos - 2 : pos + 2] = 220
        else:
            x[i, pos - 2 : pos + 2, :] = 220
    return LabeledDataset(items=x, labels=y, classes=["horizontal", "vertical"], source=f"bars:seed={seed}")


@pytest.fixture(scope="module")
def bars_loaders():
    tf = create_backbone("tiny_cnn").preprocessing.transform()
    train = DataLoader(TorchDataset(_bars(256, 0), tf), batch_size=32, shuffle=True)
    val = DataLoader(TorchDataset(_bars(128, 1), tf), batch_size=128)
    return train, val


def _feature_loaders(n=256, d=8, seed=0, noise_labels=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, d, generator=g)
    y = torch.randint(0, 2, (2 * n,), generator=g) if noise_labels else (x[:, 0] > 0).long()
    return feature_loader(x[:n], y[:n], batch_size=64, shuffle=True), feature_loader(x[n:], y[n:], batch_size=512)


def _val_loss(head, loader):
    with torch.no_grad():
        x, y = next(iter(loader))
        return float(torch.nn.functional.cross_entropy(head.eval()(x), y))


def test_tiny_cnn_learns_bars(bars_loaders):
    train, val = bars_loaders
    bb = create_backbone("tiny_cnn")
    head = create_head("linear", bb.num_features, 2)
    res = train_classifier(bb, head, train, val, epochs=4, lr=1e-2, seed=0)
    assert isinstance(res, TrainResult)
    assert [r["epoch"] for r in res.history] == [0, 1, 2, 3]
    assert all(ROW_KEYS <= set(r) for r in res.history)
    assert res.steps == 4 * len(train)
    assert res.best_val_loss == min(r["val_loss"] for r in res.history)
    assert res.history[res.best_epoch]["val_acc"] > 0.8
    assert not bb.training and not head.training  # handed back in eval mode


def test_trainable_head_freezes_weights_and_batchnorm_stats(bars_loaders):
    train, val = bars_loaders
    bb = create_backbone("tiny_cnn").train()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)
    head = create_head("mlp", bb.num_features, 2)
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    train_classifier(bb, head, train, val, epochs=2, trainable="head")
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), f"backbone {k} changed"
    assert any(not torch.equal(v, head_before[k]) for k, v in head.state_dict().items())
    assert all(p.requires_grad for p in bb.parameters())  # the caller's flags are given back


def test_trainable_all_moves_backbone_and_batchnorm(bars_loaders):
    train, _ = bars_loaders
    bb = create_backbone("tiny_cnn")
    bn = next(m for m in bb.modules() if isinstance(m, _BatchNorm))
    stats, w = bn.running_mean.clone(), bb.blocks[0][0].weight.clone()
    res = train_classifier(bb, create_head("linear", bb.num_features, 2), train, epochs=1, backbone_lr=1e-3)
    assert not torch.equal(bn.running_mean, stats) and not torch.equal(bb.blocks[0][0].weight, w)
    assert res.history[0]["val_loss"] is None and res.best_epoch == 0 and res.best_val_loss is None


def test_forward_returns_logits_in_train_and_eval():
    bb = create_backbone("tiny_cnn")
    module = ClassifierModule(bb, create_head("mlp", bb.num_features, 3))
    x = torch.randn(4, 3, 32, 32)
    out_train = module.train()(x)
    out_eval = module.eval()(x)
    assert type(out_train) is type(out_eval) is torch.Tensor
    assert out_train.shape == out_eval.shape == (4, 3)


def test_class_weights_change_the_loss():
    logits, y = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    head = create_head("linear", 3, 3)
    plain = ClassifierModule(None, head).loss(logits, y)
    weighted = ClassifierModule(None, head, class_weights=[1.0, 5.0, 0.2]).loss(logits, y)
    smoothed = ClassifierModule(None, head, label_smoothing=0.2).loss(logits, y)
    assert not torch.isclose(plain, weighted) and not torch.isclose(plain, smoothed)


def test_feature_training_and_early_stopping_restores_best():
    train, val = _feature_loaders(noise_labels=True)  # nothing to learn: validation loss only rises
    head = create_head("mlp", 8, 2, hidden=64, dropout=0.0)
    res = train_classifier(None, head, train, val, epochs=40, lr=1e-2, patience=2)
    assert res.stopped_early and len(res.history) < 40
    assert len(res.history) == res.best_epoch + 3  # patience epochs after the best one
    assert _val_loss(head, val) == pytest.approx(res.best_val_loss, rel=1e-4)


def test_feature_training_learns_and_is_seeded():
    runs = []
    init = create_head("linear", 8, 2)
    for _ in range(2):
        train, val = _feature_loaders()
        head = copy.deepcopy(init)
        runs.append(train_classifier(None, head, train, val, epochs=10, lr=1e-1, seed=3))
    assert runs[0].history[-1]["val_acc"] > 0.9
    assert [r["val_loss"] for r in runs[0].history] == [r["val_loss"] for r in runs[1].history]


def test_extra_loss_terms_are_added():
    train, _ = _feature_loaders()
    seen = []

    def constant(module, batch, outputs):
        seen.append(set(outputs))
        return torch.tensor(5.0)

    res = train_classifier(None, create_head("linear", 8, 2), train, epochs=1, lr=1e-9, extra_losses=[constant])
    assert res.history[0]["train_loss"] > 5.0
    assert seen[0] == {"features", "logits", "ce"}


def test_validation_errors_and_csv_log(tmp_path):
    train, val = _feature_loaders()
    head = create_head("linear", 8, 2)
    with pytest.raises(ValueError, match="'trainable' parameter must be one of"):
        train_classifier(None, head, train, val, trainable="backbone")
    with pytest.raises(ValueError, match="pass a val_loader"):
        train_classifier(None, head, train, patience=2)
    train_classifier(None, head, train, val, epochs=2, log_dir=tmp_path)
    assert (tmp_path / "metrics.csv").is_file()
    assert "val_loss" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_no_global_state_left_behind():
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    levels = [logging.getLogger(n).level for n in names]
    det = torch.are_deterministic_algorithms_enabled()
    train, val = _feature_loaders()
    train_classifier(None, create_head("linear", 8, 2), train, val, epochs=1)
    assert [logging.getLogger(n).level for n in names] == levels
    assert torch.are_deterministic_algorithms_enabled() == det


def test_loop_settings_objects_and_keywords_are_the_same_run():
    """train_classifier takes LoopConfig/LoopRuntime, or their fields by name on top of them."""
    from headstart.heads import create_head, feature_loader
    from headstart.train import LoopConfig, LoopRuntime, train_classifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g)
    runs = []
    for call in ({"config": LoopConfig(epochs=2, lr=5e-2, seed=1), "runtime": LoopRuntime(logger=None)},
                 {"epochs": 2, "lr": 5e-2, "seed": 1, "logger": None},
                 {"config": LoopConfig(epochs=5, lr=5e-2), "epochs": 2, "seed": 1, "logger": None}):
        torch.manual_seed(0)
        head = create_head("linear", 6, 2)
        res = train_classifier(None, head, feature_loader(x, y, batch_size=16, shuffle=True), None, **call)
        runs.append((res.steps, [round(r["train_loss"], 6) for r in res.history]))
    assert runs[0] == runs[1] == runs[2] and runs[0][0] == 8
    with pytest.raises(TypeError, match="unexpected keyword argument.*'epoch'"):
        train_classifier(None, create_head("linear", 6, 2), feature_loader(x, y), epoch=3)
    with pytest.raises(ValueError, match="'trainable' parameter must be one of"):
        LoopConfig(trainable="some")
