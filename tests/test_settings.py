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
NON_DEFAULT = {
    "val": (0.2, ["--val", "0.2"]), "test": (0.1, ["--test", "0.1"]), "strict": (True, ["--strict"]),
    "text_col": ("body", ["--text-col", "body"]), "label_col": ("y", ["--label-col", "y"]), "image_size": (96, ["--image-size", "96"]),
    "backbone": ("tiny_cnn", ["-b", "tiny_cnn"]), "candidates": ("tiny_cnn,scratch_cnn", ["--candidates", "tiny_cnn,scratch_cnn"]),
    "weights": ("w.safetensors", ["--weights", "w.safetensors"]), "runtime": ("torch", ["--runtime", "torch"]), "cache": (False, ["--no-cache"]),
    "head": ("mlp", ["--head", "mlp"]), "hidden": (64, ["--hidden", "64"]), "dropout": (0.1, ["--dropout", "0.1"]),
    "class_weights": ("balanced", ["--class-weights", "balanced"]), "strategy": ("finetune", ["-s", "finetune"]), "seed": (3, ["--seed", "3"]),
    "epochs": (7, ["--epochs", "7"]), "lr": (3e-4, ["--lr", "3e-4"]), "batch_size": (16, ["--batch-size", "16"]), "patience": (2, ["--patience", "2"]),
    "unfreeze": (2, ["--unfreeze", "2"]), "backbone_lr": (1e-5, ["--backbone-lr", "1e-5"]), "lr_decay": (0.7, ["--lr-decay", "0.7"]),
    "freeze_epochs": (0, ["--freeze-epochs", "0"]), "augment": ("light", ["--augment", "light"]), "schedule": ("onecycle", ["--schedule", "onecycle"]),
    "label_smoothing": (0.1, ["--label-smoothing", "0.1"]), "clip_grad": (1.0, ["--clip-grad", "1"]),
    "activation_cache": (False, ["--no-activation-cache"]), "train_bn": (True, ["--train-bn"]), "time_limit": (60.0, ["--time-limit", "60"]),
    "accelerator": ("cpu", ["--accelerator", "cpu"]), "devices": (2, ["--devices", "2"]), "dist": ("ddp", ["--dist", "ddp"]),
    "precision": ("bf16-mixed", ["--precision", "bf16-mixed"]), "out": ("runs/x", ["-o", "runs/x"]), "overwrite": (True, ["--overwrite"]),
    "logger": ("tensorboard", ["--logger", "tensorboard"]),
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
    for _, f in setting_fields():
        assert NON_DEFAULT[flat_name(f)][0] != f.default, flat_name(f)


def test_defaults_agree_between_cli_python_and_file(captured):
    _, from_cli = captured("data/")
    assert from_cli == Settings.from_flat(progress=True)  # the command line shows progress bars; nothing else differs
    assert Settings.from_dict(yaml.safe_load(yaml.safe_dump(Settings().to_dict()))) == Settings()


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_setting_from_cli_python_and_file(name, captured):
    value, argv = NON_DEFAULT[name]
    python = Settings.from_flat(**{name: value})
    assert python.flat()[name] == value
    assert Settings.from_dict(yaml.safe_load(yaml.safe_dump(python.to_dict()))) == python  # YAML round trip, exact
    if argv is not None:  # the option exists and gives the same value
        _, from_cli = captured("data/", *argv)
        assert from_cli.flat()[name] == value, (argv, from_cli.flat()[name])


def test_all_settings_at_once_round_trip(captured):
    python = Settings.from_flat(**{k: v for k, (v, _) in NON_DEFAULT.items()})
    argv = [a for _, (_, args) in NON_DEFAULT.items() if args for a in args]
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
