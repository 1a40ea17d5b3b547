"""Continual learning (``fit --from RUN --keep-old METHOD``): the measures, the methods, the lineage, the bad inputs.

The toy sequence: 16-px images of one colour each (red, green -> blue, yellow), which the tiny CNN
learns in a few epochs; trained on the new colours alone, the grown head forgets the old ones.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import headstart
from headstart.continual import Continuation
from headstart.data import from_arrays
from headstart.errors import HeadstartError
from headstart.methods.forgetting import memory_indices

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (220, 210, 40)}
FAST = dict(backbone=None, strategy="finetune", unfreeze="all", epochs=3, lr=3e-3)


def colours(names, n=30, seed=0):
    rng = np.random.default_rng([seed, len(names[0])])
    x = np.concatenate([np.clip(np.array(COLOURS[c])[None, None, None] + rng.normal(0, 25, (n, 16, 16, 3)), 0, 255) for c in names])
    return from_arrays(x.astype(np.uint8), np.repeat(np.arange(len(names)), n), list(names), source="colours:" + ",".join(names))


OLD, NEW = colours(["red", "green"]), colours(["blue", "yellow"], seed=1)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("old") / "run"
    headstart.fit(OLD, backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=3, lr=3e-3, out=run)
    return run


def cont(old_run, method=None, **kw):
    return headstart.fit(NEW, **{**FAST, **kw}, from_run=old_run, method=method, save=kw.pop("save", False) if "out" not in kw else True)


def test_measures_are_the_accuracies_of_the_joint_test_split():
    """metrics['continual'] from known predictions: new items first, then the old task's."""
    c = Continuation(Path("run"), SimpleNamespace(classes=["a", "b"]), None, None, classes=["a", "b", "c", "d"], n_new_test=4,
                     before={"accuracy": 0.75})
    y = np.array([2, 3, 2, 3, 0, 1, 0, 1])
    pred = np.array([2, 3, 3, 0, 0, 2, 0, 3])  # new: 2 of 4 right; old: 2 of 4 right, and within a/b 3 of 4
    proba = np.full((8, 4), 0.1)
    proba[np.arange(8), pred] = 0.6
    proba[5, 1], proba[6, 1] = 0.3, 0.05  # item 5 (b) prefers b among the old classes; item 6 still a
    m = c.measures(y, proba)
    assert m["new_after"] == 0.5 and m["old_after"] == 0.5 and m["average_after"] == 0.5
    assert m["old_after_within_task"] == 0.75 and m["new_after_within_task"] == 0.5
    assert m["forgetting"] == pytest.approx(0.25) and m["backward_transfer"] == pytest.approx(-0.25)
    assert (m["old_test_n"], m["new_test_n"]) == (4, 4)


def test_naive_forgets_the_toy_sequence_and_rehearsal_keeps_more(old_run):
    naive = cont(old_run, "naive", old_data=OLD)
    replay = cont(old_run, "rehearsal", old_data=OLD, method_opt={"memory": 10})
    n, r = naive.metrics["continual"], replay.metrics["continual"]
    assert naive.classes == ["red", "green", "blue", "yellow"]
    assert n["old_before"] >= 0.75 and n["old_before"] == r["old_before"]  # the old run on the old test split
    assert n["new_after"] >= 0.75  # learned the new colours ...
    assert n["forgetting"] >= 0.5 and n["forgetting"] == pytest.approx(n["old_before"] - n["old_after"])  # ... and lost the old ones
    assert r["old_after"] >= n["old_after"] + 0.2 and r["forgetting"] <= n["forgetting"] - 0.2
    assert r["old_after_within_task"] >= 0.75  # the old rows still tell red from green


def test_a_linear_continuation_keeps_the_old_rows_and_features(old_run):
    """--strategy linear: the backbone stays the old one and the old head rows are copied, so within the old
    classes the old task is predicted exactly as before; the new rows come from a probe on the new items."""
    model = cont(old_run, None, strategy="linear", old_data=OLD)
    c = model.metrics["continual"]
    assert c["old_after_within_task"] == c["old_before"] and c["new_after_within_task"] >= 0.75
    old = headstart.load(old_run)
    np.testing.assert_allclose(model.predict_proba(OLD)[:, :2].argmax(1), old.predict_proba(OLD).argmax(1))


def test_ewc_with_lambda_zero_is_naive_fine_tuning(old_run):
    """Without the old data the new validation items judge the epochs, so the trained weights are kept and compared."""
    naive = cont(old_run, "naive")
    zero = cont(old_run, "ewc", method_opt={"lam": 0})
    strong = cont(old_run, "ewc", method_opt={"lam": 1e6})
    np.testing.assert_array_equal(zero.predict_proba(NEW), naive.predict_proba(NEW))
    assert np.abs(strong.predict_proba(NEW) - naive.predict_proba(NEW)).max() > 1e-3
    assert "note" in naive.metrics["continual"]  # old data not given: not scored, and said so


def test_rehearsal_memory_is_balanced_and_reproducible():
    labels = np.repeat([0, 1, 2], [50, 30, 4])
    m = memory_indices(labels, 10, 3, seed=0)
    assert np.bincount(labels[m]).tolist() == [10, 10, 4]  # all of a class smaller than the memory
    assert np.array_equal(m, memory_indices(labels, 10, 3, seed=0)) and not np.array_equal(m, memory_indices(labels, 10, 3, seed=1))
    assert len(set(m.tolist())) == len(m) and np.all(np.diff(m) > 0)
    r = memory_indices(labels, 10, 3, sampling="reservoir", seed=0)
    assert len(r) == 30 and len(set(r.tolist())) == 30 and np.array_equal(r, memory_indices(labels, 10, 3, sampling="reservoir", seed=0))
    big = memory_indices(np.repeat([0, 1], [900, 100]), 100, 2, sampling="reservoir", seed=0)  # in proportion to the stream
    assert 150 <= int((np.repeat([0, 1], [900, 100])[big] == 0).sum()) <= 195


def test_lineage_and_memory_round_trip_through_the_run_folder(old_run, tmp_path):
    out = tmp_path / "child"
    model = headstart.fit(NEW, **FAST, from_run=old_run, old_data=OLD, method="rehearsal", method_opt={"memory": 5}, out=out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    meta = json.loads((out / "model.json").read_text())
    parent_meta = json.loads((old_run / "model.json").read_text())
    for parent in (cfg["parent"], meta["info"]["parent"]):
        assert parent["run"] == str(Path(old_run).resolve()) and parent["classes"] == ["red", "green"]
        assert parent["method"] == "rehearsal" and parent["weights_sha256"] == parent_meta["weights_sha256"]
    assert cfg["settings"]["data"]["from_run"] == str(old_run) and cfg["settings"]["data"]["old_data"] is None  # in memory
    memory = json.loads((out / "memory.json").read_text())
    assert memory["counts"] == {"red": 5, "green": 5} and len(memory["indices"]) == 10 and memory["sampling"] == "balanced"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["continual"]["old_classes"] == ["red", "green"] and "forgetting" in metrics["continual"]
    report = (out / "report.md").read_text()
    assert "## Old and new task" in report and "Forgetting (old before - after)" in report and "rehearsal" in report
    from headstart.evaluate.compare import compare_row

    row = compare_row(out, speed=False)
    assert row["method"] == "rehearsal" and row["forgetting"] == pytest.approx(metrics["continual"]["forgetting"])
    x = NEW.items[:6]
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, headstart; from headstart.data import from_arrays; m = headstart.load(sys.argv[1]); "
            "print(m.classes); np.save(sys.argv[3], m.predict_proba(from_arrays(np.load(sys.argv[2]), np.zeros(6, int), ['?'])))")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "['red', 'green', 'blue', 'yellow']" in r.stdout
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model.predict_proba(from_arrays(x, np.zeros(6, int), ["?"])), atol=1e-5)


def test_the_cli_continues_a_run(old_run, tmp_path, cli):
    from PIL import Image

    for i, name in enumerate(["blue", "yellow"]):
        (tmp_path / "new" / name).mkdir(parents=True)
        for j in range(12):
            Image.fromarray(NEW.items[i * 30 + j]).save(tmp_path / "new" / name / f"{j}.png")
    r = cli("fit", tmp_path / "new", "--from", old_run, "--keep-old", "lwf", "-s", "finetune", "--unfreeze", "all", "--epochs", "1",
            "-o", tmp_path / "child")
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = json.loads(next((tmp_path / "child").rglob("metrics.json")).read_text())
    assert metrics["continual"]["new_classes"] == ["blue", "yellow"]


def test_merged_class_names_are_warned_about(old_run, caplog):
    both = colours(["green", "blue"], seed=2)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        model = headstart.fit(both, **{**FAST, "epochs": 1}, from_run=old_run, save=False)
    assert model.classes == ["red", "green", "blue"] and model.metrics["continual"]["merged_classes"] == ["green"]
    assert "same class" in caplog.text and "rename" in caplog.text


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "lwf", "from_run": None}, "continues a finished run. Fix: pass --from RUN"),
    ({"old_data": "shapes:circle,square", "from_run": None}, "--old-data is the old task's data.*Fix: add --from RUN"),
    ({"method": "rehearsal"}, "Method 'rehearsal' trains on the old task's items.*Fix: pass --old-data"),
    ({"backbone": "tiny_cnn"}, "--backbone tiny_cnn is another network. Fix: drop --backbone"),
    ({"strategy": "auto"}, "'auto' would fit a new head over every class.*Fix: --strategy finetune"),
    ({"strategy": "linear", "method": "ewc"}, "strategy 'linear' fits a probe on frozen features without it. Fix: use --strategy finetune, progressive\\.$"),
    ({"data": OLD}, "are all classes the --from run knows already.*Fix: give data of new classes"),
    ({"old_data": colours(["red", "blue"])}, r"class\(es\) \['blue'\] that the --from run does not know.*Fix: pass --old-data"),
    ({"from_run": "no/such/run"}, "no/such/run"),
])
def test_bad_continuations_are_named_with_the_fix(old_run, kwargs, match):
    kw = {**FAST, "from_run": old_run, "save": False, **kwargs}
    with pytest.raises(HeadstartError, match=match):
        headstart.fit(kw.pop("data", NEW), **kw)


# --- task-incremental: one head per task (--heads separate) -------------------------------------------

def test_task_cross_entropy_is_cross_entropy_over_each_items_task():
    import torch
    import torch.nn.functional as F

    from headstart.train.module import task_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 3, 4, 2, 3])
    task = torch.tensor([0, 0, 0, 1, 1])  # classes 0-2 task 0, 3-4 task 1
    masked = logits.masked_fill(task[None] != task[y][:, None], float("-inf"))
    first, second = y < 3, y >= 3
    for eps in (0.0, 0.1):
        want = (F.cross_entropy(logits[first][:, :3], y[first], label_smoothing=eps, reduction="sum")
                + F.cross_entropy(logits[second][:, 3:], y[second] - 3, label_smoothing=eps, reduction="sum")) / 6
        assert float(task_cross_entropy(masked, y, label_smoothing=eps)) == pytest.approx(float(want), rel=1e-6)
    w = torch.tensor([1.0, 2.0, 1.0, 3.0, 0.5])
    want = (F.nll_loss(torch.log_softmax(logits[first][:, :3], 1), y[first], weight=w[:3], reduction="sum")
            + F.nll_loss(torch.log_softmax(logits[second][:, 3:], 1), y[second] - 3, weight=w[3:], reduction="sum")) / w[y].sum()
    assert float(task_cross_entropy(masked, y, weight=w)) == pytest.approx(float(want), rel=1e-6)


@pytest.fixture(scope="module")
def separate_run(old_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("separate") / "run"
    model = headstart.fit(NEW, **FAST, from_run=old_run, old_data=OLD, method="naive", heads="separate", out=out)
    return out, model


def test_separate_heads_record_the_tasks_and_score_each_item_in_its_task(old_run, separate_run):
    out, model = separate_run
    assert [t["classes"] for t in model.tasks] == [["red", "green"], ["blue", "yellow"]] and [t["name"] for t in model.tasks] == ["task0", "task1"]
    c = model.metrics["continual"]
    assert c["heads"] == "separate" and c["old_after"] == c["old_after_within_task"] and c["new_after"] == c["new_after_within_task"]
    joint = cont(old_run, "naive", old_data=OLD)  # the same run, one head over the four colours
    # naive fine-tuning on blue/yellow alone pushes red/green items to the new classes; told the task, the old rows still separate them
    assert c["old_after"] >= 0.6 and c["old_after"] >= joint.metrics["continual"]["old_after"] + 0.25
    loaded = headstart.load(out)
    assert loaded.tasks == model.tasks and yaml.safe_load((out / "config.yaml").read_text())["tasks"] == model.tasks
    p_old, p_new = loaded.predict_proba(OLD, task="task0"), loaded.predict_proba(OLD, task=1)
    assert np.all(p_old[:, 2:] == 0) and np.all(p_new[:, :2] == 0) and np.allclose(p_old.sum(1), 1) and np.allclose(p_new.sum(1), 1)
    per_item = loaded.predict_proba(OLD, task=[0, 1] * (len(OLD) // 2))
    np.testing.assert_allclose(per_item[::2], p_old[::2], atol=1e-6)
    assert set(loaded.predict(NEW, task="task1")) <= {"blue", "yellow"}
    assert loaded.evaluate(OLD)["accuracy"] == pytest.approx(float((p_old.argmax(1) == np.asarray(OLD.labels)).mean()))
    assert "One head per task" in (out / "report.md").read_text()
    with pytest.raises(HeadstartError, match=r"Unknown task 'task7'.*0 = task0 \(red, green\); 1 = task1 \(blue, yellow\)"):
        loaded.predict(OLD, task="task7")
    with pytest.raises(HeadstartError, match="one head over all of its classes.*Fix: drop --task"):
        joint.predict(OLD, task=0)


def test_predict_task_on_the_command_line(separate_run, tmp_path, cli):
    from PIL import Image

    out, _ = separate_run
    Image.fromarray(OLD.items[0]).save(tmp_path / "red.png")
    r = cli("predict", out, tmp_path / "red.png", "--task", "task0", "--json", "--top-k", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["prediction"] in ("red", "green") and {t["class"] for t in row["top"] if t["probability"] > 0} <= {"red", "green"}
    r = cli("predict", out, tmp_path / "red.png", "--task", "nine")
    assert r.returncode != 0 and "Unknown task 'nine'" in r.stdout + r.stderr


def test_separate_heads_bad_inputs(old_run):
    with pytest.raises(HeadstartError, match="--heads separate gives each task of a continued run its own head.*Fix: add --from RUN"):
        headstart.fit(NEW, **FAST, heads="separate", save=False)
    with pytest.raises(HeadstartError, match=r"class\(es\) \['green'\] of the new data are classes of the --from run's task.*--heads joint"):
        headstart.fit(colours(["green", "blue"], seed=2), **{**FAST, "epochs": 1}, from_run=old_run, heads="separate", save=False)
    with pytest.raises(HeadstartError, match="'heads' parameter must be one of"):
        headstart.fit(NEW, **FAST, from_run=old_run, heads="many", save=False)
