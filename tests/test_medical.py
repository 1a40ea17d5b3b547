"""Medical-style binary classification (issue 15): a .npz file's own splits (MedMNIST, Keras), the operating point
(fit --threshold, chosen on validation, stored in model.json, used by predict/evaluate), and bootstrap 95% intervals."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import headstart
from headstart.data import load_splits
from headstart.errors import DataError, HeadstartError
from headstart.evaluate.bootstrap import _rank_auc, bootstrap_intervals
from headstart.evaluate.metrics import classification_metrics
from headstart.evaluate.operating import at_threshold, choose_threshold
from headstart.settings import Settings, parse_threshold_rule

BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist.npz"


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 8, 8), dtype=np.uint8)


def test_medmnist_layout_keeps_its_splits_and_flattens_n_by_1_labels(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, train_images=_images(30), train_labels=(np.arange(30) % 3).reshape(-1, 1), val_images=_images(9, 1),
             val_labels=(np.arange(9) % 3).reshape(-1, 1), test_images=_images(6, 2), test_labels=np.array([[0], [1], [0], [1], [0], [1]]))
    sp = load_splits(p)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (30, 9, 6)
    assert sp.classes == sp.test.classes == ["0", "1", "2"]  # class 2 is absent from test and keeps its index
    assert sp.test.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert load_splits(p, classes="a,b,c").val.classes == ["a", "b", "c"]


def test_keras_layout_splits_val_off_train(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, x_train=_images(40), y_train=np.repeat([0, 1], 20), x_test=_images(10, 1), y_test=np.repeat([0, 1], 5),
             classes=np.array(["cat", "dog"]))
    sp = load_splits(p, val=0.15, test=0.15, seed=0)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (33, 7, 10)
    assert sp.classes == ["cat", "dog"]
    assert np.array_equal(load_splits(p, seed=0).val.labels, sp.val.labels)  # seeded


@pytest.mark.parametrize("arrays, missing", [
    ({"train_images": 4, "val_images": 2}, r"missing \['train_labels', 'val_labels', 'test_images', 'test_labels'\]"),
    ({"x_train": 4, "y_train": 4}, r"Keras split layout.*missing \['x_test', 'y_test'\]"),
])
def test_a_half_filled_layout_names_what_is_missing(tmp_path, arrays, missing):
    p = tmp_path / "h.npz"
    np.savez(p, **{k: _images(n) if "image" in k or k.startswith("x") else np.arange(n) % 2 for k, n in arrays.items()})
    with pytest.raises(DataError, match=missing + r".*Fix: save"):
        load_splits(p)


def test_classes_are_refused_where_the_source_names_its_own(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="--classes names the integer labels of a .npz file.*Fix: drop --classes"):
        load_splits(tmp_path, classes="x,y")
    p = tmp_path / "m.npz"
    np.savez(p, train_images=_images(8), train_labels=np.arange(8) % 2, test_images=_images(4), test_labels=np.arange(4) % 2)
    with pytest.raises(DataError, match="integer labels must index classes"):
        load_splits(p, classes="only_one")


def test_a_fit_on_a_split_npz_uses_its_test_split_and_class_names(tmp_path):
    p = tmp_path / "m.npz"
    y = np.arange(60) % 2
    x = np.where(y[:, None, None] == 1, 200, 30).astype(np.uint8) + _images(60) // 8
    np.savez(p, train_images=x[:40], train_labels=y[:40], val_images=x[40:50], val_labels=y[40:50], test_images=x[50:], test_labels=y[50:])
    m = headstart.fit(p, backbone="tiny_cnn", strategy="linear", classes="dark,bright", out=tmp_path / "run")
    assert m.classes == ["dark", "bright"]
    assert (tmp_path / "run" / "config.yaml").read_text().count("test: 10") == 1  # split_sizes: the file's own test split
    assert m.metrics["test"]["accuracy"] == 1.0


@pytest.mark.skipif(not BREAST.is_file(), reason=f"{BREAST} is not here (shared/data is laid beside the checkout)")
def test_breastmnist_loads_with_its_official_splits():
    sp = load_splits(BREAST, classes="malignant,benign")
    assert (len(sp.train), len(sp.val), len(sp.test)) == (546, 78, 156)
    assert sp.test.counts() == {"malignant": 42, "benign": 114}


def _scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, 1 / (1 + np.exp(-(1.5 * y + rng.normal(-0.7, 1.0, n))))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_target_is_reproduced_on_validation(target):
    y, p = _scores()
    op = choose_threshold(f"sensitivity={target}", y, p)
    assert op["sensitivity"] >= target and op["chosen_on"] == "val"
    assert at_threshold(y, p, op["threshold"])["sensitivity"] == op["sensitivity"]
    # the most specific such point: any higher threshold misses the target
    higher = np.unique(p[p > op["threshold"]])
    assert not len(higher) or at_threshold(y, p, higher[0])["sensitivity"] < target


def test_specificity_youden_f1():
    y, p = _scores()
    op = choose_threshold("specificity=0.9", y, p)
    assert op["specificity"] >= 0.9
    lower = np.unique(p[p < op["threshold"]])
    assert not len(lower) or at_threshold(y, p, lower[-1])["specificity"] < 0.9
    j = choose_threshold("youden", y, p)
    best = max(at_threshold(y, p, t)["sensitivity"] + at_threshold(y, p, t)["specificity"] for t in np.unique(p))
    assert j["sensitivity"] + j["specificity"] == pytest.approx(best)
    assert 0.2 < j["threshold"] < 0.8 and j["sensitivity"] > 0.5 and j["specificity"] > 0.5  # a sensible middle point
    f = choose_threshold("f1", y, p)
    f1 = lambda m: 2 * m["ppv"] * m["sensitivity"] / (m["ppv"] + m["sensitivity"]) if m["ppv"] else 0.0  # noqa: E731
    assert f1(f) == pytest.approx(max(f1(at_threshold(y, p, t)) for t in np.unique(p)))
    assert 0 < f["threshold"] < 1


def test_at_threshold_figures():
    m = at_threshold(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.4, 0.6, 0.2, 0.1]), 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["ppv"] == 0.5 and m["npv"] == pytest.approx(2 / 3) and m["sensitivity"] == 0.5


def test_bad_rules_name_the_fix():
    assert parse_threshold_rule("Sensitivity=0.95") == ("sensitivity", 0.95)
    for bad in ("sens=0.9", "sensitivity", "sensitivity=95", "youden=1"):
        with pytest.raises(HeadstartError, match="Fix: --threshold"):
            Settings.from_flat(threshold=bad)
    with pytest.raises(HeadstartError, match="both classes"):
        choose_threshold("youden", np.zeros(5, int), np.linspace(0, 1, 5))


def test_fit_stores_the_threshold_and_predict_uses_it(tmp_path):
    import headstart
    from headstart.data import from_arrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (120, 32, 32, 3), dtype=np.uint8)
    y = (rng.random(120) < 0.3).astype(int)
    x[y == 1, :16] = 255  # learnable
    ds = from_arrays(x, y, ["benign", "malignant"])
    model = headstart.fit(ds, backbone="tiny_cnn", val=0.3, test=0.2, runtime="torch", threshold="sensitivity=0.9", out=str(tmp_path / "run"))
    op = model.operating_point
    assert op["chosen_on"] == "val" and op["sensitivity"] >= 0.9 and op["positive_class"] == "malignant"
    loaded = headstart.load(tmp_path / "run")
    assert loaded.operating_point["threshold"] == op["threshold"]
    proba = loaded.predict_proba(x[:20])
    assert loaded.predict(x[:20]) == [loaded.classes[int(v >= op["threshold"])] for v in proba[:, 1]]
    m = loaded.evaluate(ds)
    assert m["operating_point"]["threshold"] == op["threshold"]
    with pytest.raises(HeadstartError, match="binary"):
        headstart.fit(from_arrays(x, rng.integers(0, 3, 120), list("abc")), backbone="tiny_cnn", runtime="torch", threshold="youden", save=False)


def test_cli_fit_threshold_predict_and_evaluate_print_it(cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8)
    y = (rng.random(100) < 0.35).astype(int)
    x[y == 1, :16] = 255
    np.savez(tmp_path / "d.npz", train_images=x[:60], train_labels=y[:60, None], val_images=x[60:80], val_labels=y[60:80, None],
             test_images=x[80:], test_labels=y[80:, None])
    r = cli("fit", tmp_path / "d.npz", "--backbone", "tiny_cnn", "--runtime", "torch", "--classes", "benign,malignant",
            "--threshold", "youden", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    r = cli("predict", tmp_path / "run", tmp_path / "a.png")
    assert r.returncode == 0 and "threshold" in r.stderr and "youden" in r.stderr and "->" in r.stdout
    r = cli("evaluate", tmp_path / "run", tmp_path / "d.npz")
    assert r.returncode == 0 and "at threshold" in r.stdout and "npv" in r.stdout
    r = cli("fit", tmp_path / "d.npz", "--backbone", "tiny_cnn", "--threshold", "sensitivity=2", "--out", tmp_path / "bad")
    assert r.returncode != 0 and "Fix: --threshold" in r.stderr + r.stdout


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.25, n), 0, 1), 2)  # rounded: many ties
    return y, np.stack([1 - s, s], 1)


def test_rank_auc_equals_scikit_learns_with_ties():
    y, p = _binary(400)
    idx = np.random.default_rng(1).integers(0, 400, (6, 400))
    assert np.allclose(_rank_auc(p[:, 1][idx], y[idx] == 1), [roc_auc_score(y[i], p[i, 1]) for i in idx], atol=1e-12)
    assert np.isnan(_rank_auc(np.array([[0.1, 0.2]]), np.array([[True, True]])))[0]  # one class only: undefined


def test_intervals_contain_the_estimate_and_are_seeded():
    y, p = _binary(300)
    m = classification_metrics(y, p, ["neg", "pos"])
    for k in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        lo, hi = m["ci"][k]
        assert lo <= m[k] <= hi and hi - lo > 0, k
    assert m["ci"]["resamples"] == 1000 and m["ci"]["level"] == 0.95
    assert bootstrap_intervals(y, p, seed=0) == m["ci"]
    assert bootstrap_intervals(y, p, seed=1)["accuracy"] != m["ci"]["accuracy"]
    assert m["sensitivity"] == pytest.approx(((p.argmax(1) == 1) & (y == 1)).sum() / (y == 1).sum())
    assert m["positive_class"] == "pos"


def test_intervals_narrow_with_more_data():
    width = lambda n: np.diff(bootstrap_intervals(*_binary(n), resamples=500)["roc_auc"])[0]  # noqa: E731
    assert width(2000) < 0.6 * width(200)


def test_multiclass_gets_accuracy_intervals_and_zero_resamples_none():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200)
    p[np.arange(200), y] += 0.5
    m = classification_metrics(y, p / p.sum(1, keepdims=True), list("abcd"))
    assert set(m["ci"]) >= {"accuracy", "balanced_accuracy"} and "roc_auc" not in m["ci"] and "sensitivity" not in m
    assert "ci" not in classification_metrics(y, p / p.sum(1, keepdims=True), list("abcd"), resamples=0)


def test_compare_warns_when_the_difference_is_inside_the_interval():
    from headstart.evaluate.compare import interval_warnings

    y, p = _binary(200)
    m = classification_metrics(y, p, ["neg", "pos"])
    row = lambda name, acc: {"run": name, "n": 200, "accuracy": acc, "roc_auc": None, "ci": m["ci"]}  # noqa: E731
    width = m["ci"]["accuracy"][1] - m["ci"]["accuracy"][0]
    assert len(interval_warnings([row("a", 0.80), row("b", 0.80 + width / 2)])) == 1
    assert "may be noise" in interval_warnings([row("a", 0.80), row("b", 0.80 + width / 2)])[0]
    assert interval_warnings([row("a", 0.50), row("b", 0.50 + 2 * width)]) == []


def test_bootstrap_runs_1000_resamples_of_5000_items():
    # its speed (well under a second, vectorised) is not asserted here: speed targets live in benchmarks
    y, p = _binary(5000)
    ci = bootstrap_intervals(y, p, resamples=1000)
    assert ci["resamples"] == 1000 and 0 < ci["roc_auc"][1] - ci["roc_auc"][0] < 0.1


# --- calibration (temperature scaling) ----------------------------------------------------------


def _overconfident(n, seed=0):
    """Logits 4x too large for how often they are right: a model that says 0.99 and is right 80% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), y] += 1.5
    return 4.0 * z, y


def test_temperature_scaling_lowers_validation_nll_of_an_overconfident_model():
    from headstart.evaluate.calibration import calibration_figures, fit_temperature, nll, scaled_proba, unscaled_proba

    z_val, y_val = _overconfident(600)
    t = fit_temperature(z_val, y_val)
    assert 2.5 < t < 6.0  # about the factor the logits were inflated by
    assert nll(z_val, y_val, t) < 0.8 * nll(z_val, y_val)
    z_test, y_test = _overconfident(600, seed=1)  # and on fresh data from the same model
    f = calibration_figures(y_test, z_test, t)
    assert f["nll_after"] < f["nll_before"] and f["ece_after"] < 0.5 * f["ece_before"]
    p = scaled_proba(z_test, t)
    assert (p.argmax(1) == z_test.argmax(1)).all()  # the decisions do not change
    assert np.allclose(unscaled_proba(p, t), scaled_proba(z_test), atol=1e-9)
    assert fit_temperature(z_val / t, y_val) == pytest.approx(1.0, abs=0.02)  # already calibrated: left alone


def test_fit_calibrates_on_validation_and_predict_applies_it(tmp_path):
    import json

    from headstart.data import from_arrays
    from headstart.evaluate.calibration import scaled_proba

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (120, 32, 32, 3), dtype=np.uint8)
    y = (rng.random(120) < 0.3).astype(int)
    x[y == 1, :16] = 255
    ds = from_arrays(x, y, ["benign", "malignant"])
    model = headstart.fit(ds, backbone="tiny_cnn", val=0.3, test=0.2, runtime="torch", calibrate="temperature", threshold="youden",
                          out=str(tmp_path / "run"))
    cal = model.info["calibration"]
    assert cal["fit_on"] == "val" and cal["val"]["nll_after"] <= cal["val"]["nll_before"]
    loaded = headstart.load(tmp_path / "run")
    assert loaded.temperature == pytest.approx(cal["temperature"])
    z = loaded.logits_from_features(loaded.features(x[:10])).numpy()
    assert np.allclose(loaded.predict_proba(x[:10]), scaled_proba(z, cal["temperature"]), atol=1e-5)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]["calibration"]) >= {"ece_before", "ece_after", "nll_before", "nll_after", "temperature"}
    assert "operating_point" in metrics["test"]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Operating point" in report and "Calibration" in report and "NPV" in report
    assert (tmp_path / "run" / "plots" / "roc_operating_point.png").is_file() and (tmp_path / "run" / "plots" / "reliability.png").is_file()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Operating point" in md and "## Calibration" in md and "validation (chosen on)" in md
    plain = headstart.fit(ds, backbone="tiny_cnn", val=0.3, test=0.2, runtime="torch", calibrate="none", save=False)
    assert "calibration" not in plain.info and plain.temperature == 1.0
    with pytest.raises(HeadstartError, match="'calibrate' parameter must be one of"):
        headstart.fit(ds, backbone="tiny_cnn", calibrate="platt", save=False)


# --- class-balanced sampling --------------------------------------------------------------------


def test_balanced_sampler_draws_classes_equally_and_is_seeded():
    from headstart.train.checkpoint import EpochBalanced

    y = np.array([0] * 90 + [1] * 10)
    s = EpochBalanced(range(100), y, seed=3)
    draws = np.concatenate([list(s) for s in [s] * 1] + [list(EpochBalanced(range(100), y, seed=e)) for e in range(20)])
    share = (y[draws] == 1).mean()
    assert 0.4 < share < 0.6 and len(list(s)) == 100
    assert list(EpochBalanced(range(100), y, seed=3)) == list(s)
    s.set_epoch(1)
    assert list(s) != list(EpochBalanced(range(100), y, seed=3))
    with pytest.raises(HeadstartError, match="--class-weights balanced"):
        Settings.from_flat(sampler="balanced", strategy="linear")


def test_finetune_with_balanced_sampler_records_it(tmp_path):
    from headstart.data import from_arrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (80, 32, 32, 3), dtype=np.uint8)
    y = (rng.random(80) < 0.25).astype(int)
    x[y == 1, :16] = 255
    model = headstart.fit(from_arrays(x, y, ["a", "b"]), backbone="tiny_cnn", strategy="finetune", sampler="balanced", epochs=2,
                          runtime="torch", save=False)
    assert model.evaluate(from_arrays(x, y, ["a", "b"]))["accuracy"] > 0.5
