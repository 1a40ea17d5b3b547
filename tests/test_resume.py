"""Resumable training: freeze state, BN modes and optimiser groups survive a resume; a killed run finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.nn.modules.batchnorm import _BatchNorm

import headstart
from headstart.backbones import create_backbone
from headstart.data import TorchDataset
from headstart.heads import create_head
from headstart.train import make_loader, progressive_plan, train_classifier
from headstart.train.checkpoint import AtomicCheckpointIO

from test_finetune import Probe, _bars
from test_fit import write_folder

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(Path(__file__).parent)}


class Crash(Callback):
    """Raise in the middle of epoch ``epoch`` (a stand-in for a kill, in-process)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def _progressive(tmp, callbacks, resume=False):
    torch.manual_seed(0)
    bb = create_backbone("tiny_cnn")
    head = create_head("linear", bb.num_features, 2)
    tf = bb.preprocessing.transform()
    train = make_loader(TorchDataset(_bars(96, 0), tf), 16, shuffle=True, seed=3)
    val = make_loader(TorchDataset(_bars(48, 1), tf), 48, shuffle=False)
    stages = progressive_plan(2, 2, 1e-2)  # head (epochs 0-1), unfreeze1 (2-3), unfreeze2 (4-5)
    res = train_classifier(bb, head, train, val, stages=stages, checkpoint_dir=tmp, resume=resume, callbacks=callbacks, seed=0)
    return res, bb, head


def test_resume_mid_stage_restores_freeze_state_bn_modes_and_optimizer_groups(tmp_path):
    ref_probe = Probe()
    ref, ref_bb, ref_head = _progressive(tmp_path / "ref", [ref_probe])
    # Crash in the middle of epoch 3: the second stage (last group unfrozen) is running; last.ckpt is from epoch 2.
    with pytest.raises(RuntimeError, match="simulated crash"):
        _progressive(tmp_path / "run", [Crash(3, 2)])
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)  # plain data: loads without pickled code
    assert ckpt["epoch"] == 2 and ckpt["headstart"]["stage"]["name"] == "unfreeze1"
    probe = Probe()
    res, bb, head = _progressive(tmp_path / "run", [probe], resume=True)
    assert sorted(probe.rows) == [3, 4, 5]
    for epoch in (3, 4, 5):
        assert probe.rows[epoch]["flags"] == ref_probe.rows[epoch]["flags"]
        assert probe.rows[epoch]["bn"] == ref_probe.rows[epoch]["bn"]
        assert probe.rows[epoch]["lrs"] == pytest.approx(ref_probe.rows[epoch]["lrs"])
    assert probe.rows[3]["flags"] == [False, True] and probe.rows[3]["bn"] == [False, True]  # not re-frozen
    assert res.steps == ref.steps
    assert [r["stage_name"] for r in res.history] == [r["stage_name"] for r in ref.history]
    assert [r["val_loss"] for r in res.history] == pytest.approx([r["val_loss"] for r in ref.history], rel=1e-4)
    for (k, v), w in zip(bb.state_dict().items(), ref_bb.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)

    def dies(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpo")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["step"] == 1  # the previous checkpoint, intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


SCRIPT = textwrap.dedent('''
    import json, sys, time
    import torch
    from lightning.pytorch.callbacks import Callback
    from headstart.backbones import create_backbone
    from headstart.data import TorchDataset
    from headstart.heads import create_head
    from headstart.train import make_loader, finetune_plan, train_classifier
    from test_finetune import _bars

    class Slow(Callback):  # a visible, slowish epoch so the parent can kill it mid-way
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            print(f"epoch {trainer.current_epoch} batch {batch_idx}", flush=True)
            time.sleep(0.05)

    ckpt_dir, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    torch.manual_seed(0)
    bb = create_backbone("tiny_cnn")
    head = create_head("linear", bb.num_features, 2)
    tf = bb.preprocessing.transform()
    train = make_loader(TorchDataset(_bars(128, 0), tf), 16, shuffle=True, seed=1)
    val = make_loader(TorchDataset(_bars(64, 1), tf), 64, shuffle=False)
    res = train_classifier(bb, head, train, val, stages=finetune_plan(2, 2, 4, 1e-2), checkpoint_dir=ckpt_dir,
                           resume=resume, callbacks=[Slow()], seed=0)
    json.dump({"steps": res.steps, "val_acc": res.history[res.best_epoch]["val_acc"], "epochs": len(res.history)}, open(out, "w"))
''')


@pytest.mark.slow  # 40-60 s of subprocesses; CI runs the slow tests too (make test-slow)
def test_sigkill_mid_epoch_then_resume_finishes_with_the_same_steps(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    py = sys.executable
    subprocess.run([py, str(script), str(tmp_path / "ref_ckpt"), str(tmp_path / "ref.json"), "0"], env=ENV, check=True, capture_output=True, timeout=300)
    ref = json.loads((tmp_path / "ref.json").read_text())

    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.Popen([py, str(script), str(ckpt_dir), str(tmp_path / "out.json"), "0"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed_at = None
    for line in proc.stdout:  # kill in the middle of the second epoch, after the first checkpoint
        if line.startswith("epoch 1 batch 3") and (ckpt_dir / "last.ckpt").is_file():
            proc.send_signal(signal.SIGKILL)
            killed_at = line.strip()
            break
    proc.wait(timeout=60)
    assert killed_at and proc.returncode == -signal.SIGKILL and not (tmp_path / "out.json").exists()
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 0
    subprocess.run([py, str(script), str(ckpt_dir), str(tmp_path / "out.json"), "1"], env=ENV, check=True, capture_output=True, timeout=300)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["steps"] == ref["steps"] == 4 * 8
    assert out["epochs"] == ref["epochs"] == 4
    assert abs(out["val_acc"] - ref["val_acc"]) <= 0.05


@pytest.mark.slow  # 40-60 s of subprocesses; CI runs the slow tests too (make test-slow)
def test_cli_resume_after_kill(tmp_path):
    data = write_folder(tmp_path / "data", {"circle": 60, "square": 60})
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "headstart.cli", "fit", str(data), "-b", "tiny_cnn", "-s", "finetune", "--unfreeze", "all",
           "--epochs", "12", "--batch-size", "4", "--patience", "100", "--out", str(run)]
    env = {**ENV, "HEADSTART_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert yaml.safe_load((run / "config.yaml").read_text())["status"] == "training" and not (run / "model.json").exists()
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "fit", "--resume", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["training"]["steps"] == 12 * int(np.ceil(cfg["split_sizes"]["train"] / 4))
    assert (run / "history.csv").read_text().count("\n") == 13 and metrics["test"]["accuracy"] >= 0.0
    assert not (run / "checkpoints").exists()
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "fit", "--resume", str(run)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nothing to resume" in r.stderr
