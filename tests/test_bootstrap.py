"""Bootstrap intervals: they contain the point estimate, are seeded, narrow with more data, and the vectorised AUC is scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from headstart.evaluate.bootstrap import _rank_auc, bootstrap_intervals
from headstart.evaluate.metrics import classification_metrics


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
