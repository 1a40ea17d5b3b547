"""Real 2-process DDP on CPU (gloo): the same result as one process with the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}

# Lightning's "ddp" strategy starts the second process by running this script again (its
# subprocess launcher); each rank sees half of every batch and DDP averages the gradients: the
# global batch is 2 x 32 = the whole training set (so the two runs see the same items in every step,
# whatever order each sampler picks). The plan: 2 epochs of the head on the frozen backbone (BatchNorm in eval:
# the same arithmetic as one process, so the head must match closely), then 1 epoch with every
# group unfrozen (BatchNorm normalises each rank's 32 items, not 64 — SyncBatchNorm is GPU-only —
# so that part matches within a looser tolerance, which scales with the backbone's learning rate:
# the backbone trains at lr/10 here, not the default lr/2).
SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from headstart.backbones import create_backbone
    from headstart.data import TorchDataset
    from headstart.heads import create_head
    from lightning.pytorch.callbacks import Callback
    from headstart.train import Stage, finetune_plan, make_loader, train_classifier
    from test_finetune import _bars

    devices, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    bb = create_backbone("tiny_cnn")
    head = create_head("linear", bb.num_features, 2)
    tf = bb.preprocessing.transform()
    train = make_loader(TorchDataset(_bars(64, 0), tf), batch, shuffle=False)
    val = make_loader(TorchDataset(_bars(32, 1), tf), 16, shuffle=False)
    kw = dict(accelerator="cpu", devices=devices, dist="ddp") if devices > 1 else dict(accelerator="cpu")
    snap = {}

    class AfterHeadStage(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                snap.update({"stage0." + k: v.detach().clone() for k, v in pl_module.head.state_dict().items()})

    plan = [Stage("head", 2, 0, 3e-2)] + finetune_plan(2, 2, 1, 3e-2, backbone_ratio=0.1)
    res = train_classifier(bb, head, train, val, stages=plan, seed=0, callbacks=[AfterHeadStage()], **kw)
    if res.global_rank == 0:
        sd = {**snap, **{k: v.detach().clone() for k, v in bb.state_dict().items()}, **{"head." + k: v.detach().clone() for k, v in head.state_dict().items()}}
        torch.save(sd, out + ".pt")
        json.dump({"steps": res.steps, "val_loss": [r["val_loss"] for r in res.history], "val_acc": [r["val_acc"] for r in res.history],
                   "world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1}, open(out + ".json", "w"))
''')


def _run(tmp_path: Path, devices: int, batch: int) -> tuple[dict, dict]:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out{devices}"
    r = subprocess.run([sys.executable, str(script), str(devices), str(batch), str(out)], env=ENV, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(Path(str(out) + ".json").read_text()), torch.load(str(out) + ".pt", weights_only=True)


@pytest.mark.slow  # 40-60 s of subprocesses; CI runs the slow tests too (make test-slow)
def test_two_process_ddp_matches_one_process(tmp_path):
    ddp, ddp_sd = _run(tmp_path, devices=2, batch=32)
    one, one_sd = _run(tmp_path, devices=1, batch=64)
    assert ddp["world"] == 2 and one["world"] == 1
    assert ddp["steps"] == one["steps"] == 3  # one global batch of 64 per epoch, 3 epochs
    # Head stage: the same arithmetic (averaged gradients of the two halves), metrics all-reduced.
    assert ddp["val_loss"][:2] == pytest.approx(one["val_loss"][:2], rel=1e-4, abs=1e-5)
    for k in [k for k in one_sd if k.startswith("stage0.")]:
        assert torch.allclose(ddp_sd[k], one_sd[k], atol=1e-5, rtol=1e-4), k
    # Whole network: BatchNorm statistics over 32 instead of 64 items per step.
    assert ddp["val_loss"][2] == pytest.approx(one["val_loss"][2], rel=0.05)
    for k, v in one_sd.items():
        if v.is_floating_point():
            assert (ddp_sd[k] - v).abs().max() <= 0.05 * v.abs().max() + 1e-3, k
