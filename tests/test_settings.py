"""One settings object: the command line, the Python keywords and config.yaml are read from it and cannot drift."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import headstart
import headstart.fitting as fitting
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.settings import Settings, flat_name, setting_fields

# A value other than the default for every setting, as Python gives it and as the command line spells it.
# A new setting fails test_every_setting_has_a_non_default_case until it is added here.
# Settings that only mean something with another one: method options need a method.
CONTEXT = {"method_opt": {"method": "focal"}, "heads": {"from_run": "runs/old"}, "sampler": {"strategy": "finetune"}, "pairs": {"strategy": "auto"}}
NON_DEFAULT = {
    "val": (0.2, ["--val", "0.2"]), "test": (0.1, ["--test", "0.1"]), "strict": (True, ["--strict"]),
    "target": ("target/", ["--target", "target/"]), "target_test": ("target_test/", ["--target-test", "target_test/"]),
    "from_run": ("runs/old", ["--from", "runs/old"]), "old_data": ("old/", ["--old-data", "old/"]),
    "heads": ("separate", ["--heads", "separate", "--from", "runs/old"]), "unlabeled": ("more/", ["--unlabeled", "more/"]),
    "text_col": ("body", ["--text-col", "body"]), "label_col": ("y", ["--label-col", "y"]), "classes": ("a,b", ["--classes", "a,b"]), "image_size": (96, ["--image-size", "96"]),
    "backbone": ("tiny_cnn", ["-b", "tiny_cnn"]), "candidates": ("tiny_cnn,scratch_cnn", ["--candidates", "tiny_cnn,scratch_cnn"]),
    "weights": ("w.safetensors", ["--weights", "w.safetensors"]), "runtime": ("torch", ["--runtime", "torch"]), "feature_precision": ("f32", ["--feature-precision", "f32"]), "cache": (False, ["--no-cache"]),
    "head": ("mlp", ["--head", "mlp"]), "hidden": (64, ["--hidden", "64"]), "dropout": (0.1, ["--dropout", "0.1"]),
    "class_weights": ("balanced", ["--class-weights", "balanced"]), "threshold": ("youden", ["--threshold", "youden"]), "calibrate": ("temperature", ["--calibrate", "temperature"]),
    "sampler": ("balanced", ["--sampler", "balanced", "-s", "finetune"]), "strategy": ("auto", ["-s", "auto"]), "seed": (3, ["--seed", "3"]),
    "epochs": (7, ["--epochs", "7"]), "lr": (3e-4, ["--lr", "3e-4"]), "batch_size": (16, ["--batch-size", "16"]), "patience": (2, ["--patience", "2"]),
    "unfreeze": (2, ["--unfreeze", "2"]), "backbone_lr": (1e-5, ["--backbone-lr", "1e-5"]), "lr_decay": (0.7, ["--lr-decay", "0.7"]),
    "freeze_epochs": (0, ["--freeze-epochs", "0"]), "augment": ("light", ["--augment", "light"]), "schedule": ("onecycle", ["--schedule", "onecycle"]),
    "label_smoothing": (0.1, ["--label-smoothing", "0.1"]), "clip_grad": (1.0, ["--clip-grad", "1"]),
    "activation_cache": (False, ["--no-activation-cache"]), "train_bn": (True, ["--train-bn"]), "time_limit": (60.0, ["--time-limit", "60"]),
    "pairs": (500, ["--pairs", "500", "-s", "auto"]),  # read by setfit and auto only
    "keep": ("final", ["--keep", "final"]),
    "accelerator": ("cpu", ["--accelerator", "cpu"]), "devices": (2, ["--devices", "2"]), "dist": ("ddp", ["--dist", "ddp"]),
    "precision": ("bf16-mixed", ["--precision", "bf16-mixed"]), "out": ("runs/x", ["-o", "runs/x"]), "overwrite": (True, ["--overwrite"]),
    "logger": ("tensorboard", ["--logger", "tensorboard"]), "method": ("focal", ["--method", "focal"]),
    "method_opt": ({"gamma": 3.0, "alpha": 0.25}, ["--method", "focal", "--method-opt", "gamma=3", "--method-opt", "alpha=0.25"]),
    "save": (False, None), "progress": (True, None),  # Python only: the command line always saves and shows progress
}


@pytest.fixture
def captured(monkeypatch):
    """Run ``headstart fit ...`` without training: returns the Settings the command line built."""
    seen = {}

    def fake_fit(data=None, settings=None, *, resume=None, **overrides):
        seen["data"], seen["settings"] = data, Settings.from_flat(settings, **overrides)

    monkeypatch.setattr(fitting, "fit", fake_fit)

    def run(*args):
        r = CliRunner().invoke(app, ["fit", *map(str, args)])
        assert r.exit_code == 0, r.output + repr(r.exception)
        return seen["data"], seen["settings"]

    return run


def test_every_setting_has_a_non_default_case():
    names = [flat_name(f) for _, f in setting_fields()]
    assert sorted(names) == sorted(NON_DEFAULT)
    for group, f in setting_fields():
        assert NON_DEFAULT[flat_name(f)][0] != getattr(getattr(Settings(), group), f.name), flat_name(f)


def test_defaults_agree_between_cli_python_and_file(captured):
    _, from_cli = captured("data/")
    assert from_cli == Settings.from_flat(progress=True)  # the command line shows progress bars; nothing else differs
    assert Settings.from_dict(yaml.safe_load(yaml.safe_dump(Settings().to_dict()))) == Settings()


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_setting_from_cli_python_and_file(name, captured):
    value, argv = NON_DEFAULT[name]
    python = Settings.from_flat(**CONTEXT.get(name, {}), **{name: value})
    assert python.flat()[name] == value
    assert Settings.from_dict(yaml.safe_load(yaml.safe_dump(python.to_dict()))) == python  # YAML round trip, exact
    if argv is not None:  # the option exists and gives the same value
        _, from_cli = captured("data/", *argv)
        assert from_cli.flat()[name] == value, (argv, from_cli.flat()[name])


def test_all_settings_at_once_round_trip(captured):
    python = Settings.from_flat(**{k: v for k, (v, _) in NON_DEFAULT.items()})
    argv = [a for name, (_, args) in NON_DEFAULT.items() if args and name != "method" for a in args]
    _, from_cli = captured("data/", *argv)
    assert from_cli == python.replace(save=True)  # save is Python-only
    assert Settings.from_dict(yaml.safe_load(yaml.safe_dump(python.to_dict()))) == python


def test_flags_override_the_config_file(tmp_path, captured):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": "shapes:circle,square", "settings": {"training": {"epochs": 4, "lr": 0.01}, "head": {"kind": "mlp"}}}))
    data, s = captured("--config", cfg, "--epochs", "9")
    assert data == "shapes:circle,square"
    assert (s.training.epochs, s.training.lr, s.head.kind) == (9, 0.01, "mlp")
    data, _ = captured("other/", "--config", cfg)  # DATA on the command line wins too
    assert data == "other/"


@pytest.mark.parametrize("kwargs, message", [
    ({"epoch": 3}, "Unknown setting(s) 'epoch'. Did you mean 'epochs'? See headstart.settings.Settings (or 'headstart fit --help')."),
    ({"unfreeze": "two"}, "The 'unfreeze' parameter must be a whole number or 'all'; got 'two'."),
    ({"devices": 0}, "The 'devices' parameter must be at least 1 or 'auto'; got 0."),
    ({"lr": -1}, "The 'lr' parameter must be a positive number; got -1."),
    ({"runtime": "tensorrt"}, "The 'runtime' parameter must be one of {'auto', 'openvino', 'onnx', 'torch'}; got 'tensorrt'."),
    ({"lr_decay": 1.5}, "The 'lr_decay' parameter must be in (0, 1]; got 1.5."),
    ({"method": "fokal"}, "Unknown method 'fokal'; the methods are 'coral', 'dan', 'dann', 'distill', 'ewc', 'focal', 'l2sp', 'lwf', 'naive', 'rehearsal'. Did you mean 'focal'?"),
    ({"method": "focal", "method_opt": ["gama=2"]}, "Method 'focal' has no option(s) 'gama'; its options are 'gamma', 'alpha'."),
    ({"method": "focal", "method_opt": ["gamma"]}, "A method option must be KEY=VALUE (e.g. gamma=2); got 'gamma'."),
    ({"method": "focal", "method_opt": ["gamma=strong"]}, "Method 'focal' option 'gamma' must be float; got 'strong'."),
    ({"method": "focal", "method_opt": ["alpha=1.5"]}, "focal option alpha must be in (0, 1); got 1.5."),
    ({"method_opt": ["gamma=2"]}, "Method options {'gamma': '2'} were given without a method. Fix: add --method NAME (e.g. focal)."),
])
def test_bad_settings_are_named_with_the_fix(kwargs, message):
    with pytest.raises(HeadstartError) as e:
        headstart.fit("shapes:circle,square", **kwargs)
    assert str(e.value) == message


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  training:\n    epoch: 3\n")
    with pytest.raises(HeadstartError, match="Unknown setting.*'epoch'.*in group 'training'"):
        fitting.read_config(bad)
    bad.write_text("settings:\n  trainer: {}\n")
    with pytest.raises(HeadstartError, match="Unknown settings group.*'trainer'"):
        fitting.read_config(bad)
    bad.write_text("settings: [1, 2\n")
    with pytest.raises(HeadstartError, match="Cannot read the config file"):
        fitting.read_config(bad)


def test_config_yaml_of_a_run_reproduces_it_exactly(tmp_path):
    """``headstart fit --config RUN/config.yaml --out NEW``: the same settings and data, the same test accuracy
    (CPU, same seed; a random-init backbone fine-tuned, so the seed matters)."""
    first = tmp_path / "first"
    r = CliRunner().invoke(app, ["fit", "shapes:circle,square,triangle", "-b", "tiny_cnn", "-s", "finetune", "--unfreeze", "all",
                                 "--epochs", "2", "--seed", "5", "--out", str(first)])
    assert r.exit_code == 0, r.output
    again = tmp_path / "again"
    r = CliRunner().invoke(app, ["fit", "--config", str(first / "config.yaml"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (first, again))
    assert a["test"]["accuracy"] == b["test"]["accuracy"] and a["test"]["log_loss"] == b["test"]["log_loss"]
    ca, cb = (yaml.safe_load((run / "config.yaml").read_text()) for run in (first, again))
    assert {**ca["settings"], "output": None} == {**cb["settings"], "output": None}
    assert ca["settings"]["training"]["seed"] == 5 and ca["data"] == cb["data"] == "shapes:circle,square,triangle"


# --- the method slot ---------------------------------------------------------------------------------

def test_focal_with_gamma_0_is_cross_entropy():
    import torch
    import torch.nn.functional as F

    from headstart.methods.focal import focal_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(64, 5, generator=g), torch.randint(0, 5, (64,), generator=g)
    w = torch.rand(5, generator=g) + 0.5
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y), atol=1e-6)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0, weight=w), F.cross_entropy(logits, y, weight=w), atol=1e-6)
    # gamma > 0 lowers every item's loss, the confident ones most
    p = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    per_item = -(1 - p) ** 2 * p.log()
    assert torch.allclose(focal_loss(logits, y, gamma=2.0), per_item.mean(), atol=1e-6)
    # alpha weights class 1 of a binary task
    lb, yb = logits[:, :2], (y > 1).long()
    pb = lb.softmax(1).gather(1, yb[:, None]).squeeze(1)
    a = torch.where(yb == 1, 0.25, 0.75)
    assert torch.allclose(focal_loss(lb, yb, gamma=1.0, alpha=0.25), (-a * (1 - pb) * pb.log()).sum() / a.sum(), atol=1e-6)
    with pytest.raises(HeadstartError, match="alpha weights class 1 of a binary task"):
        focal_loss(logits, y, alpha=0.25)


def test_methods_registry_and_bad_methods():
    from headstart.methods import Method, create_method, list_methods, register_method

    assert "focal" in list_methods() and create_method("focal", {"gamma": "0.5"}).options.gamma == 0.5
    with pytest.raises(ValueError, match="empty or taken"):
        register_method(type("Again", (Method,), {"name": "focal"}))
    with pytest.raises(HeadstartError, match="trains through the loop"):
        headstart.fit("shapes:circle,square", method="focal", save=False)


def test_focal_end_to_end_on_the_command_line(tmp_path):
    """``headstart fit data --method focal --method-opt gamma=2``: trains with it, records it, the report shows it."""
    from test_fit import write_folder

    data = write_folder(tmp_path / "data", {"circle": 30, "square": 12})
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", str(data), "-b", "tiny_cnn", "-s", "finetune", "--unfreeze", "all", "--epochs", "2",
                                 "--method", "focal", "--method-opt", "gamma=2", "--out", str(run)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["settings"]["method"] == {"name": "focal", "options": {"gamma": 2.0}}
    html = (run / "report.html").read_text()
    assert "focal" in html and "gamma" in html
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs (the loop ran it: test below)


def test_the_loop_trains_with_the_method_criterion():
    """The method's criterion replaces the training loss; validation keeps cross-entropy."""
    import torch

    from headstart.heads import create_head, feature_loader
    from headstart.methods import create_method
    from headstart.train import train_classifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    calls = []
    focal = create_method("focal", {"gamma": 2})
    crit = focal.criterion()

    def spy(module, logits, yy):
        calls.append(1)
        return crit(module, logits, yy)

    head = create_head("linear", 8, 3)
    res = train_classifier(None, head, feature_loader(x, y, batch_size=32, shuffle=True),
                           feature_loader(x, y, batch_size=32, shuffle=False), epochs=2, lr=1e-2, seed=0, criterion=spy, patience=None)
    assert len(calls) == 6  # 3 batches x 2 epochs
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(head.eval()(x), y).item()
    assert res.history[-1]["val_loss"] == pytest.approx(ce, rel=1e-4)


def test_defaults_measured_in_train_are_the_settings_defaults():
    """The settings module sits below train/, so the fine-tuning defaults chosen by measurement there
    (train/recipes.py) are written again as the settings' defaults: they must stay equal."""
    from headstart.train.recipes import LR_DECAY

    assert Settings().training.lr_decay == LR_DECAY


def test_lr_default_depends_on_what_trains():
    """No --lr: 2e-3 when fine-tuning a pretrained image backbone (measured, train/recipes.py), 1e-3
    for everything else; a given lr is used as is."""
    from headstart.train.recipes import FINETUNE_LR, HEAD_LR, default_lr

    assert Settings().training.lr is None
    assert (default_lr(None, finetune_pretrained=True), default_lr(None)) == (FINETUNE_LR, HEAD_LR) == (2e-3, 1e-3)
    assert default_lr(3e-4, finetune_pretrained=True) == default_lr(3e-4) == 3e-4
