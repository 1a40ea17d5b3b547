"""LP-FT done right: which weights are kept, head-only stages on cached features, the time limit, the input size."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import torch
import pytest
import yaml

import headstart
from headstart.backbones import create_backbone
from headstart.data import from_arrays
from headstart.errors import HeadstartError
from headstart.settings import Settings
from headstart.backbones.size import resolve_image_size
from headstart.train.selection import Score, accuracy_se, better, keeps_latest, why

from test_fit import write_folder


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))


from test_finetune import folder  # noqa: E402,F401  (the same three-shape folder fixture)


# --- the keep rule ----------------------------------------------------------------------------------

def test_better_weighs_accuracy_and_loss_together():
    probe = Score(0.90, 0.25, 500)
    assert better(Score(0.90, 0.20, 500), probe)  # same accuracy, lower loss
    assert better(Score(0.92, 0.25, 500), probe)  # higher accuracy, same loss
    assert not better(Score(0.89, 0.30, 500), probe)  # worse on both
    assert not better(probe, probe)  # equal: the incumbent stays
    assert accuracy_se(0.90, 0.93, 500) == pytest.approx(np.sqrt(0.915 * 0.085 / 500))
    assert better(Score(0.93, 0.30, 500), probe)  # +3 points > one standard error (0.012): accuracy decides
    assert not better(Score(0.905, 0.30, 500), probe)  # +0.5 point is noise: the higher loss decides
    assert better(Score(0.895, 0.20, 500), probe)  # -0.5 point is noise: the lower loss decides
    assert not better(Score(0.85, 0.20, 500), probe)  # -5 points: accuracy decides
    assert not better(Score(0.93, 0.30, 30), Score(0.90, 0.25, 30))  # +3 points of 30 items is one item: noise
    text = why(Score(0.93, 0.30, 500), probe, new_name="epoch 3", old_name="the probe")
    assert text.startswith("kept epoch 3") and "standard error" in text


def test_keep_latest_tolerates_noise_not_a_drop():
    """Domain adaptation's rule: the latest weights unless their accuracy falls > 1 se below the best seen."""
    top = Score(0.95, 0.10, 500)  # se near 0.95 on 500 items: 0.0097
    assert keeps_latest(Score(0.945, 0.40, 500), top)  # -0.5 point, much higher loss: kept (the loss does not count)
    assert not keeps_latest(Score(0.93, 0.10, 500), top)  # -2 points: a real drop
    assert keeps_latest(top, top)


def test_best_weights_keep_latest_over_epochs():
    from types import SimpleNamespace

    from headstart.train import BestWeights

    def module(e, acc, loss):
        return SimpleNamespace(epoch_metrics={"val_acc": acc, "val_loss": loss, "val_n": 500, "train_loss": 0.1, "train_acc": 1.0},
                               backbone=None, stage={}, state_dict=lambda: {"w": torch.tensor(float(e))})

    best = BestWeights(Score(0.90, 0.05, 500), keep="latest")
    best.on_train_start(None, module(-1, 0.90, 0.05))
    for e, (acc, loss) in enumerate([(0.95, 0.30), (0.945, 0.50), (0.92, 0.60)]):  # the loss rises all along
        trainer = SimpleNamespace(val_dataloaders=[0], current_epoch=e, optimizers=[])
        best.on_train_epoch_start(trainer, None)
        best.on_train_epoch_end(trainer, module(e, acc, loss))
    assert best.best_epoch == 1 and float(best.best_state["w"]) == 1.0  # epoch 2 fell 3 points below the best (epoch 0)
    assert "latest weights" in best.reason and "epoch 2 fell below" in best.reason
    again = BestWeights(keep="latest")
    again.load_state_dict(best.state_dict())  # resume keeps the best accuracy seen
    assert again.top == Score(0.95, 0.30, 500)
    default = BestWeights(Score(0.90, 0.05, 500))
    default.on_train_start(None, module(-1, 0.90, 0.05))
    trainer = SimpleNamespace(val_dataloaders=[0], current_epoch=0, optimizers=[])
    default.on_train_epoch_end(trainer, module(0, 0.905, 0.30))
    assert default.best_epoch == -1  # the default rule keeps the probe: +0.5 point is noise, the loss is worse


def _epochs(best, scores):
    def module(e, acc, loss):
        return SimpleNamespace(epoch_metrics={"val_acc": acc, "val_loss": loss, "val_n": 78, "train_loss": 0.1, "train_acc": 1.0},
                               backbone=None, stage={}, state_dict=lambda: {"w": torch.tensor(float(e))})

    best.on_train_start(None, module(-1, 0.80, 0.40))
    for e, (acc, loss) in enumerate(scores):
        trainer = SimpleNamespace(val_dataloaders=[0], current_epoch=e, optimizers=[])
        best.on_train_epoch_start(trainer, None)
        best.on_train_epoch_end(trainer, module(e, acc, loss))
    return best


def test_keep_final_compares_only_the_end_of_the_schedule_with_the_probe():
    from headstart.train import BestWeights

    probe = Score(0.80, 0.40, 78)
    peak_then_worse = [(0.90, 0.30), (0.85, 0.35), (0.78, 0.45)]  # epoch 0 beats everything; the final epoch loses to the probe
    assert _epochs(BestWeights(probe), peak_then_worse).best_epoch == 0  # best: the mid-schedule peak
    final = _epochs(BestWeights(probe, keep="final"), peak_then_worse)
    assert final.best_epoch == -1 and float(final.best_state["w"]) == -1.0  # final: the probe, its own weights restored
    assert final.reason.startswith("kept the starting weights") and "keep rule 'final'" in final.reason
    peak_then_good = [(0.90, 0.30), (0.85, 0.35), (0.86, 0.33)]
    final = _epochs(BestWeights(probe, keep="final"), peak_then_good)
    assert final.best_epoch == 2 and float(final.best_state["w"]) == 2.0  # the final epoch beats the probe: kept, not the peak
    assert final.reason.startswith("kept the final epoch 2")
    again = BestWeights(probe, keep="final")
    again.load_state_dict(_epochs(BestWeights(probe, keep="final"), peak_then_good[:1]).state_dict())  # resumed after epoch 0
    trainer = SimpleNamespace(val_dataloaders=[0], current_epoch=1, optimizers=[])
    again.on_train_epoch_end(trainer, SimpleNamespace(epoch_metrics={"val_acc": 0.70, "val_loss": 0.6, "val_n": 78}, backbone=None, stage={},
                                                       state_dict=lambda: {"w": torch.tensor(1.0)}))
    assert again.best_epoch == -1 and float(again.best_state["w"]) == -1.0  # the probe's weights survive a resume


def test_keep_auto_is_final_on_a_small_validation_split():
    from headstart.train.selection import resolve_keep

    breast_val = np.r_[np.zeros(21), np.ones(57)]  # BreastMNIST's validation split
    assert resolve_keep("auto", breast_val, 2) == "final"
    assert resolve_keep("auto", np.repeat(np.arange(10), 50), 10) == "best"  # MNIST 5k: 50 per class
    assert resolve_keep("auto", None, 2) == "best" and resolve_keep("best", breast_val, 2) == "best"
    with pytest.raises(HeadstartError, match="'keep' parameter must be one of"):
        Settings.from_flat(keep="last")


def test_run_log_says_which_weights_were_kept(folder, tmp_path, caplog):
    caplog.set_level("INFO", logger="headstart")
    headstart.fit(folder, backbone="tiny_cnn", strategy="progressive", unfreeze=1, out=tmp_path / "run", epochs=2)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    kept = cfg["training"]["kept"]
    assert kept.startswith("kept ") and "val acc" in kept and kept in caplog.text


# --- no wasted compute ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source_run(folder, tmp_path_factory):
    """A trained tiny_cnn: fixed weights to transfer from (a random-init backbone is trained from scratch instead)."""
    src = tmp_path_factory.mktemp("src") / "run"
    headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", unfreeze="all", out=src, epochs=1)
    return src


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_head_only_stages_never_call_the_backbone(folder, source_run, monkeypatch, head):
    """The probe (or the MLP fit on cached features) replaces head-only stages: with the features cached, a
    plan of head-only stages (progressive --unfreeze 0) runs the backbone zero times."""
    from headstart.backbones.scratch import ScratchCNN

    bb = f"run:{source_run}"
    headstart.fit(folder, backbone=bb, strategy="linear", head=head, runtime="torch", save=False)  # fills the cache
    calls = []
    real = ScratchCNN.forward
    monkeypatch.setattr(ScratchCNN, "forward", lambda self, x: calls.append(len(x)) or real(self, x))
    model = headstart.fit(folder, backbone=bb, strategy="progressive", unfreeze=0, head=head, runtime="torch", save=False)
    assert calls == [] and model.metrics["test"]["accuracy"] > 0


def test_random_init_finetune_trains_from_scratch(folder, tmp_path):
    run = tmp_path / "run"
    headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", out=run, epochs=1)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert "skipped_stages" not in cfg["training"] and "head_init" not in cfg["training"]  # no probe: nothing pretrained


def test_pretrained_finetune_skips_the_head_warmup(folder, source_run, tmp_path):
    run = tmp_path / "run"
    headstart.fit(folder, backbone=f"run:{source_run}", strategy="finetune", out=run, epochs=1)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["training"]["skipped_stages"]["stages"] == ["head_warmup"]
    assert [s["name"] for s in cfg["training"]["stages"]] == ["unfreeze_all"]
    hist = (run / "history.csv").read_text()
    assert "head_warmup" not in hist


# --- the time limit ----------------------------------------------------------------------------------

def test_time_limit_is_respected(folder, tmp_path):
    limit = 25.0
    t = time.perf_counter()
    model = headstart.fit(folder, backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=100_000, patience=None,
                          time_limit=limit, out=tmp_path / "run")
    took = time.perf_counter() - t
    assert took <= 1.1 * limit, took
    epochs = len((tmp_path / "run" / "history.csv").read_text().splitlines()) - 1
    assert 1 <= epochs < 100_000 and model.metrics["test"]["accuracy"] > 0
    with pytest.raises(HeadstartError, match="'time_limit' parameter must be a positive number"):
        headstart.fit(folder, backbone="tiny_cnn", time_limit=0, save=False)


@pytest.mark.parametrize("epoch_s, strategy", [(1e6, "linear"), (1e-3, "finetune")])
def test_auto_uses_the_time_limit_to_decide(tmp_path, source_run, monkeypatch, epoch_s, strategy):
    # The epoch cost is fixed here so the decision does not depend on how fast the CI machine is
    # (with the measured cost, a tiny CNN fitted an epoch into 1 s on a fast machine and not on a slow one).
    import headstart.train.budget as budget

    monkeypatch.setattr(budget, "epoch_seconds", lambda *a, **k: epoch_s)
    data = write_folder(tmp_path / "data", {"circle": 60, "square": 60, "triangle": 60}, seed=1)  # enough per class to fine-tune
    m = headstart.fit(data, backbone=f"run:{source_run}", strategy="auto", time_limit=600.0, epochs=3, save=False)
    auto = m.metrics["auto"]
    assert auto["strategy"] == strategy and "time limit" in auto["reason"] and auto["epoch_estimate_s"] == round(epoch_s, 1)
    if strategy == "finetune":
        assert auto["epochs"] == 3  # capped by epochs, not by the budget


# --- the input size ----------------------------------------------------------------------------------

def test_image_size_round_trips_through_the_run_folder(folder, tmp_path):
    run = tmp_path / "run"
    model = headstart.fit(folder, backbone="tiny_cnn", strategy="linear", image_size=48, out=run)
    meta = json.loads((run / "model.json").read_text())
    assert meta["backbone"]["preprocessing"]["input_size"] == [48, 48]
    loaded = headstart.load(run)
    assert loaded.backbone.preprocessing.input_size == (48, 48)
    some = sorted(folder.rglob("*.png"))[:4]
    np.testing.assert_allclose(loaded.predict_proba(some), model.predict_proba(some), atol=1e-5)
    with pytest.raises(HeadstartError, match="'image_size' parameter must be 'auto' or a whole number"):
        headstart.fit(folder, backbone="tiny_cnn", image_size="big", save=False)


def test_auto_image_size_does_not_blow_up_small_images():
    lite = create_backbone("efficientnet_lite0", pretrained=False)
    small = from_arrays(np.zeros((4, 28, 28), np.uint8), [0, 1, 0, 1])
    large = from_arrays(np.zeros((4, 300, 400), np.uint8), [0, 1, 0, 1])
    assert resolve_image_size("auto", lite, small) == 112  # the probe: 4 x 28, not 224
    assert resolve_image_size("auto", lite, small, "finetune") == resolve_image_size("auto", lite, small, "auto") == 64
    assert resolve_image_size("auto", lite, large) == 224  # the backbone's own size
    assert resolve_image_size("auto", create_backbone("tiny_cnn"), small) == 32  # never above the backbone's size
    assert resolve_image_size(96, lite, small) == 96


def test_cli_image_size_and_time_limit(folder, tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(folder), "-b", "tiny_cnn", "--image-size", "40", "--time-limit", "120", "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "model.json").read_text())["backbone"]["preprocessing"]["input_size"] == [40, 40]
    assert yaml.safe_load((run / "config.yaml").read_text())["settings"]["training"]["time_limit"] == 120
    r = CliRunner().invoke(app, ["fit", str(folder), "-b", "tiny_cnn", "--image-size", "huge", "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0 and "'image_size' parameter must be 'auto' or a whole number" in str(r.exception)


@pytest.mark.parametrize("probe_wins", [True, False])
def test_auto_keeps_the_larger_probe_unless_fine_tuning_beats_it(source_run, monkeypatch, probe_wins):
    """Small images: auto probes at 4x their side, fine-tunes at 2x from a probe fit there, and then keeps
    whichever of the 4x probe and the fine-tuned model is better on validation (the backbone restored
    to its pretrained weights and the probe's size when the probe wins). The rule's verdict is forced
    both ways here (the rule itself: test_better_weighs_accuracy_and_loss_together)."""
    import headstart.backbones.size as size
    import headstart.train.selection as selection
    from headstart.data import make_shapes

    monkeypatch.setattr(size, "AUTO_MIN_SIZE", 16)  # 8-px images: probe at 32 px, training at 16 px (tiny_cnn: 32)
    monkeypatch.setattr(selection, "better", lambda new, old: probe_wins)  # as _keep_wide_probe sees it
    data = make_shapes(("circle", "square", "triangle"), n_per_class=60, size=8, seed=3)
    pretrained = headstart.create_backbone(f"run:{source_run}").state_dict()
    m = headstart.fit(data, backbone=f"run:{source_run}", strategy="auto", epochs=2, save=False)
    auto = m.metrics["auto"]
    assert auto["strategy"] == "finetune" and auto["probe_sizes"] == {**auto["probe_sizes"], "probe_px": 32, "train_px": 16}
    assert "the linear probe at 32 px" in auto["final"] and "wide_probe" not in auto and yaml.safe_dump(auto)  # plain data: config.yaml
    if probe_wins:
        assert m.metrics["strategy"] == "linear" and m.backbone.preprocessing.input_size == (32, 32)
        assert all(torch.equal(v, pretrained[k]) for k, v in m.backbone.state_dict().items())
    else:
        assert m.metrics["strategy"] == "finetune" and m.backbone.preprocessing.input_size == (16, 16)
