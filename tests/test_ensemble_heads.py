"""Ensemble heads on cached features (``--head bagging|boosting|stacking``): exported exactly, saved without pickles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headstart
from headstart.errors import HeadstartError
from headstart.heads import create_head, fit_head
from headstart.heads.ensembles import BaggingHead, BoostingHead, export_bagging, export_trees


def blobs(n=240, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(0, 1, (n, d)) + rng.normal(0, 1.2, (k, d))[y]
    return x.astype(np.float32), y


@pytest.mark.parametrize("k", [2, 3])
def test_exported_trees_and_bags_give_scikit_learns_probabilities(k):
    from sklearn.ensemble import BaggingClassifier, HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(k=k)
    clf = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    head = export_trees(clf, BoostingHead(x.shape[1], k))
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(head(torch.as_tensor(x)), 1).numpy(), clf.predict_proba(x), atol=1e-5)
        np.testing.assert_allclose(head.raw(torch.as_tensor(x)).numpy().reshape(len(x), -1), clf.decision_function(x).reshape(len(x), -1), atol=1e-6)
    bag = BaggingClassifier(LogisticRegression(max_iter=500), n_estimators=5, max_features=0.5, random_state=0).fit(x[:30], y[:30])
    head = export_bagging(bag, BaggingHead(x.shape[1], k))
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(head(torch.as_tensor(x)), 1).numpy(), bag.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["bagging", "boosting", "stacking"])
def test_each_head_fits_and_reloads_from_its_state_dict(kind):
    x, y = blobs()
    tr, va, te = slice(0, 150), slice(150, 200), slice(200, 240)
    head, history = fit_head(kind, x[tr], y[tr], x[va], y[va], num_classes=3)
    again = create_head(**head.config())  # buffers sized by the state dict they load
    again.load_state_dict(head.state_dict())
    with torch.no_grad():
        p, q = (torch.softmax(h(torch.as_tensor(x[te])), 1).numpy() for h in (head, again))
    np.testing.assert_array_equal(p, q)
    assert np.allclose(p.sum(1), 1) and (p.argmax(1) == y[te]).mean() >= 0.8 and history[-1]["head"] == kind


def test_fit_with_an_ensemble_head_round_trips_the_run_folder(tmp_path):
    out = tmp_path / "run"
    data = "shapes:circle,square,triangle"
    model = headstart.fit(data, backbone="tiny_cnn", strategy="linear", head="boosting", out=out)
    loaded = headstart.load(out)
    assert loaded.head.config()["kind"] == "boosting" and not list(out.glob("*.pkl"))
    items = headstart.data.load_splits(data, seed=0).test
    np.testing.assert_allclose(loaded.predict_proba(items), model.predict_proba(items), atol=1e-6)
    with pytest.raises(HeadstartError, match="'bagging' head is fit by scikit-learn on cached features.*Fix: --strategy linear"):
        headstart.fit(data, backbone="tiny_cnn", strategy="finetune", head="bagging", save=False)
