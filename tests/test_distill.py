"""Knowledge distillation (``--method distill``, ``headstart distill``): the loss, the equivalences, the run, bad inputs.

The toy task: 16-px images of one colour each (red, green, blue), which the tiny CNN learns in a
few epochs; the teacher is a finished tiny-CNN run, the student another tiny CNN.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import headstart
from headstart.data import from_arrays
from headstart.errors import HeadstartError
from headstart.methods.distill import soft_loss

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
STUDENT = dict(backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=2, lr=3e-3)


def colours(names, n=24, seed=0, noise=60):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.clip(np.array(COLOURS[c])[None, None, None] + rng.normal(0, noise, (n, 16, 16, 3)), 0, 255) for c in names])
    return from_arrays(x.astype(np.uint8), np.repeat(np.arange(len(names)), n), list(names), source="colours:" + ",".join(names))


DATA = colours(["red", "green", "blue"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    headstart.fit(DATA, backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=3, lr=3e-3, out=run)
    return run


def test_soft_loss_is_t_squared_kl_and_its_gradient_keeps_scale():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    for t in (1.0, 4.0):
        p, q = torch.softmax(zt / t, 1), torch.softmax(zs / t, 1)
        want = t * t * (p * (p.log() - q.log())).sum(1).mean()
        assert float(soft_loss(zs, zt, t)) == pytest.approx(float(want), rel=1e-5)
    # Hinton et al. 2.1: for large T the gradient of T^2 KL w.r.t. the student's logits tends to ((zs - zt) - mean) / K (per item,
    # over the batch mean): the T^2 factor keeps it on the hard loss's scale whatever T is
    zs.requires_grad_(True)
    soft_loss(zs, zt, 200.0).backward()
    d = zs.detach() - zt
    np.testing.assert_allclose(zs.grad.numpy(), ((d - d.mean(1, keepdim=True)) / 5 / 4).numpy(), atol=2e-3)
    zs.grad = None
    soft_loss(zs, zt, 1.0).backward()
    assert not np.allclose(zs.grad.numpy(), ((d - d.mean(1, keepdim=True)) / 20).numpy(), atol=2e-3)  # not at T = 1


def test_alpha_zero_is_training_on_the_labels(teacher):
    plain = headstart.fit(DATA, **STUDENT, seed=1, save=False)
    zero = headstart.fit(DATA, **STUDENT, seed=1, method="distill", method_opt={"teacher": str(teacher), "alpha": 0}, save=False)
    np.testing.assert_array_equal(zero.predict_proba(DATA), plain.predict_proba(DATA))
    full = headstart.fit(DATA, **STUDENT, seed=1, method="distill", method_opt={"teacher": str(teacher), "alpha": 1.0}, save=False)
    assert np.abs(full.predict_proba(DATA) - plain.predict_proba(DATA)).max() > 1e-3


def test_a_distilled_run_reports_teacher_and_student(teacher, tmp_path, monkeypatch):
    from headstart.methods import distill

    calls = []
    real = distill.Distill._logits
    monkeypatch.setattr(distill.Distill, "_logits", lambda self, ds, *a: calls.append(len(ds)) or real(self, ds, *a))
    unlabeled = colours(["blue", "red"], n=10, seed=5)
    np.savez(tmp_path / "unlabeled.npz", images=unlabeled.items)
    out = tmp_path / "student"
    model = headstart.fit(DATA, **{**STUDENT, "epochs": 3}, method="distill", method_opt={"teacher": str(teacher), "temperature": 2},
                          unlabeled=str(tmp_path / "unlabeled.npz"), out=out)
    d = model.metrics["distill"]
    n_train = model.metrics["counts"]["train"]
    assert calls == [sum(n_train.values()), 20]  # the teacher ran once over the training items and once over the unlabeled ones
    assert d["transfer_set"] == {"train": sum(n_train.values()), "unlabeled": 20} and d["temperature"] == 2.0 and d["alpha"] == 0.7
    assert 0 <= d["agreement"] <= 1 and d["student_accuracy"] == pytest.approx(model.metrics["test"]["accuracy"])
    assert d["teacher_parameters"] == d["student_parameters"] > 0 and d["teacher_images_per_s"] > 0 and d["speedup"] > 0
    conf = d["teacher_confidence"]  # the teacher's mean top probability: softened by T, never below 1/K
    assert set(conf) == {"train_T1", "train_T2", "unlabeled_T1", "unlabeled_T2"}
    assert all(1 / 3 - 1e-6 <= conf[f"{n}_T2"] <= conf[f"{n}_T1"] <= 1 for n in ("train", "unlabeled"))
    from headstart.data import load_splits

    test = load_splits(DATA, seed=0).test  # the split fit scored
    assert d["teacher_accuracy"] == pytest.approx(headstart.load(teacher).evaluate(test)["accuracy"]) and d["n"] == len(test)
    report = (out / "report.md").read_text()
    assert "## Teacher and student" in report and "agrees with the teacher" in report
    assert json.loads((out / "metrics.json").read_text())["distill"]["n"] == d["n"]


def test_the_cli_distills(teacher, tmp_path, cli):
    from PIL import Image

    for c in range(3):
        (tmp_path / "data" / DATA.classes[c]).mkdir(parents=True)
        for j in np.flatnonzero(DATA.labels == c)[:10]:
            Image.fromarray(DATA.items[j]).save(tmp_path / "data" / DATA.classes[c] / f"{j}.png")
    r = cli("distill", teacher, tmp_path / "data", "--student", "tiny_cnn", "--epochs", "1", "--alpha", "0.5", "-o", tmp_path / "s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-> student" in r.stdout and "images/s" in r.stdout
    cfg = next((tmp_path / "s").rglob("config.yaml")).read_text()
    assert "distill" in cfg and "alpha: 0.5" in cfg


@pytest.mark.parametrize("case, match", [
    ("no teacher", "learns from a teacher run, and none was given. Fix: headstart distill TEACHER_RUN"),
    ("alpha", "option alpha .* must be in \\[0, 1\\]"),
    ("temperature", "option temperature must be > 0"),
    ("classes", "the student learns the teacher's classes. Fix: give data of the teacher's classes"),
    ("unlabeled without distill", "--unlabeled is read by method\\(s\\) distill.*Fix: add --method distill"),
    ("no such teacher", "no/such/run"),
])
def test_bad_distillations_are_named_with_the_fix(teacher, case, match):
    t = {"teacher": str(teacher)}
    data, kw = DATA, {"method": "distill", "method_opt": t}
    if case == "no teacher":
        kw["method_opt"] = {}
    elif case == "alpha":
        kw["method_opt"] = {**t, "alpha": 1.5}
    elif case == "temperature":
        kw["method_opt"] = {**t, "temperature": 0}
    elif case == "classes":
        data = colours(["red", "green"])
    elif case == "unlabeled without distill":
        kw = {"unlabeled": "x.npz"}
    else:
        kw["method_opt"] = {"teacher": "no/such/run"}
    with pytest.raises(HeadstartError, match=match):
        headstart.fit(data, **STUDENT, **kw, save=False)
