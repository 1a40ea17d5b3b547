"""Ensembles of runs (``headstart ensemble``): the combinations, the folder, stacking's data, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import headstart
from headstart.data import Splits, from_arrays
from headstart.ensemble import build_ensemble, stack_features
from headstart.errors import HeadstartError

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colours(n, seed, noise=90):
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    x = np.concatenate([np.clip(np.array(COLOURS[c])[None, None, None] + rng.normal(0, noise, (n, 16, 16, 3)), 0, 255) for c in names])
    return x.astype(np.uint8), np.repeat(np.arange(3), n)


def splits(test_labels=None):
    parts = []
    for i, n in enumerate((20, 12, 12)):
        x, y = colours(n, seed=i)
        if i == 2 and test_labels is not None:
            y = test_labels
        parts.append(from_arrays(x, y, list(COLOURS), source=f"colours:{i}"))
    return Splits(*parts)


DATA = splits()


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    runs = []
    for i, kw in enumerate([dict(head="logreg", epochs=2), dict(head="mlp", epochs=3), dict(head="logreg", epochs=1, lr=1e-2)]):
        headstart.fit(DATA, backbone="tiny_cnn", strategy="finetune", unfreeze="all", lr=kw.pop("lr", 3e-3), out=root / f"m{i}", **kw)
        runs.append(root / f"m{i}")
    return runs


def member_probas(runs, ds):
    return np.stack([headstart.load(r).predict_proba(ds) for r in runs])


def test_average_and_vote_combine_the_members(members):
    p = member_probas(members, DATA.test)
    avg = build_ensemble(members, method="average", save=False)
    np.testing.assert_allclose(avg.predict_proba(DATA.test), p.mean(0), atol=1e-6)
    vote = build_ensemble(members, method="vote", data=DATA, save=False)
    majority = [np.bincount(col, minlength=3).argmax() for col in p.argmax(2).T]
    counts = [np.sort(np.bincount(col, minlength=3))[-2:] for col in p.argmax(2).T]
    clear = [c[1] > c[0] for c in counts]  # no tie: the majority wins
    pred = vote.predict_proba(DATA.test).argmax(1)
    assert all(pr == mj for pr, mj, ok in zip(pred, majority, clear) if ok)
    e = vote.metrics["ensemble"]
    assert len(e["members"]) == 3 and e["gain_over_best_member"] == pytest.approx(vote.metrics["test"]["accuracy"] - max(m["accuracy"] for m in e["members"]))


def test_stacking_fits_on_validation_and_never_sees_test_labels(members, monkeypatch):
    from headstart import ensemble

    seen = []
    real = ensemble.fit_stacker
    monkeypatch.setattr(ensemble, "fit_stacker", lambda p, y, k: seen.append((p.shape, np.array(y))) or real(p, y, k))
    a = build_ensemble(members, method="stack", data=DATA, save=False)
    assert seen[0][0] == (3, len(DATA.val), 3) and np.array_equal(seen[0][1], DATA.val.labels)
    shuffled = np.random.default_rng(0).permutation(DATA.test.labels)
    b = build_ensemble(members, method="stack", data=splits(test_labels=shuffled), save=False)
    np.testing.assert_array_equal(a.weight, b.weight)  # the combiner is the same whatever the test labels are ...
    np.testing.assert_array_equal(a.bias, b.bias)
    assert a.metrics["test"]["accuracy"] != b.metrics["test"]["accuracy"]  # ... only the scores change
    p = member_probas(members, DATA.test)
    z = stack_features(p) @ a.weight.T + a.bias
    np.testing.assert_allclose(a.predict_proba(DATA.test), np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-6)


def test_the_feature_cache_gives_the_same_ensemble(members, tmp_path, monkeypatch):
    # cache=True (benchmarks combining the same members many ways): fine-tuned members have their own cache entries
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    plain = build_ensemble(members, method="stack", data=DATA, save=False)
    for _ in range(2):  # filling the cache, then reading it
        cached = build_ensemble(members, method="stack", data=DATA, save=False, cache=True)
        np.testing.assert_allclose(cached.weight, plain.weight, atol=1e-6)
        assert cached.metrics["test"]["accuracy"] == plain.metrics["test"]["accuracy"]
        assert cached.metrics["test"]["log_loss"] == pytest.approx(plain.metrics["test"]["log_loss"], abs=1e-6)
    assert any((tmp_path / "cache").rglob("*"))


def test_an_ensemble_folder_reloads_in_a_fresh_process(members, tmp_path, cli):
    out = tmp_path / "ens"
    ens = build_ensemble(members, method="stack", data=DATA, out=out)
    meta = json.loads((out / "ensemble.json").read_text())
    assert meta["method"] == "stack" and len(meta["members"]) == 3 and all(m["weights_sha256"] for m in meta["members"])
    assert (out / "stacker.safetensors").is_file() and not list(out.glob("*.pkl"))
    assert "## Ensemble and its members" in (out / "report.md").read_text()
    np.save(tmp_path / "x.npy", DATA.test.items)
    code = ("import sys, numpy as np, headstart; from headstart.data import from_arrays; m = headstart.load(sys.argv[1]); "
            "np.save(sys.argv[3], m.predict_proba(from_arrays(np.load(sys.argv[2]), np.zeros(36, int), ['?'])))")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ens.predict_proba(DATA.test), atol=1e-5)
    from PIL import Image

    Image.fromarray(DATA.test.items[0]).save(tmp_path / "one.png")
    r = cli("predict", out, tmp_path / "one.png", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["prediction"] in COLOURS
    r = cli("report", out)
    assert r.returncode == 0, r.stdout + r.stderr
    # a member changed since: named, with the fix
    (members[2] / "model.json").write_text((members[2] / "model.json").read_text().replace(meta["members"][2]["weights_sha256"], "0" * 64))
    try:
        with pytest.raises(HeadstartError, match="changed since the ensemble .* was built.*Fix: rebuild"):
            headstart.load(out)
    finally:
        (members[2] / "model.json").write_text((members[2] / "model.json").read_text().replace("0" * 64, meta["members"][2]["weights_sha256"]))


def test_the_cli_builds_an_ensemble(members, tmp_path, cli):
    r = cli("ensemble", *members, "--method", "average", "-o", tmp_path / "e")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "e" / "ensemble.json").is_file() and "ensemble folder" in r.stdout
    r = cli("ensemble", *members, "-o", tmp_path / "e")
    assert r.returncode != 0 and "already holds a finished run" in r.stdout + r.stderr


def test_bad_ensembles_are_named_with_the_fix(members, tmp_path):
    with pytest.raises(HeadstartError, match="at least 2 runs"):
        build_ensemble(members[:1], save=False)
    with pytest.raises(HeadstartError, match="Unknown ensemble method 'boost'"):
        build_ensemble(members, method="boost", save=False)
    with pytest.raises(HeadstartError, match="Stacking fits its combiner on validation predictions.*Fix: pass --data"):
        build_ensemble(members, method="stack", save=False)
    x, y = colours(10, seed=3)
    other = tmp_path / "two"
    headstart.fit(from_arrays(x[y < 2], y[y < 2], ["red", "green"]), backbone="tiny_cnn", strategy="linear", out=other)
    with pytest.raises(HeadstartError, match="ensemble members must classify the same classes"):
        build_ensemble([members[0], other], save=False)
    x, y = colours(20, seed=4)
    flat = from_arrays(x, y, list(COLOURS))
    for i, seed in enumerate((0, 1)):
        headstart.fit(flat, backbone="tiny_cnn", strategy="linear", seed=seed, out=tmp_path / f"s{i}")
    with pytest.raises(HeadstartError, match="split .* differently.*Fix: give data with fixed train/ val/ test/ folders"):
        build_ensemble([tmp_path / "s0", tmp_path / "s1"], data=flat, save=False)
