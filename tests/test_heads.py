"""Heads: rebuild from config + state_dict, logistic regression vs scikit-learn (the optimum, the choice of C
on validation log-loss or by cross-validation, real data), calibration, MLP on XOR, class weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split

from headstart.evaluate.metrics import expected_calibration_error
from headstart.heads import create_head, fit_head, head_kinds, resolve_class_weight

BREASTMNIST = Path(os.environ.get("BREASTMNIST", Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist.npz"))


def _blobs(n=600, k=3, d=20, std=2.0, seed=0):
    X, y = make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=std, random_state=seed)
    X = (X * 3.0 + 5.0).astype(np.float32)  # off-centre, off-scale: the standardisation matters
    return X[: n // 2], y[: n // 2], X[n // 2 :], y[n // 2 :]


def _xor(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    return X, y


def _predict(head, X):
    with torch.no_grad():
        return head.eval()(torch.as_tensor(X)).argmax(1).numpy()


def test_kinds_registered():
    assert {"linear", "mlp"} <= set(head_kinds())


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_rebuild_from_config_and_safetensors(kind, tmp_path):
    Xtr, ytr, Xv, yv = _blobs()
    head, _ = fit_head(kind, Xtr, ytr, Xv, yv, num_classes=3, **({"epochs": 3} if kind == "mlp" else {}))
    assert not torch.allclose(head.norm.mean, torch.zeros_like(head.norm.mean))  # fitted standardisation
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    cfg = head.config()
    assert cfg == {"kind": kind, "in_features": 20, "num_classes": 3, "hidden": 256, "dropout": 0.3}
    fresh = create_head(**cfg)
    fresh.load_state_dict(load_file(str(tmp_path / "head.safetensors")))
    x = torch.as_tensor(Xv)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), head.eval()(x), rtol=0, atol=0)


def test_create_head_shapes_and_errors():
    for kind in ("linear", "logreg", "mlp"):
        out = create_head(kind, 7, 4)(torch.randn(5, 7))
        assert out.shape == (5, 4)
    assert create_head("logreg", 7, 4).config()["kind"] == "linear"
    with pytest.raises(ValueError, match="must be one of .*'mlp'.*got 'mpl'.*Did you mean 'mlp'"):
        create_head("mpl", 7, 4)


def _proba(head, X):
    with torch.no_grad():
        return torch.softmax(head.eval()(torch.as_tensor(X)).double(), 1).numpy()


def test_logreg_blobs_accurate_and_matches_sklearn():
    Xtr, ytr, Xv, yv = _blobs(std=4.0)
    head, hist = fit_head("logreg", Xtr, ytr, num_classes=3, C=1.0)
    assert len(hist) == 1 and hist[0]["C"] == 1.0 and hist[0]["selected"] and hist[0]["selection"] == "fixed"
    ours = _predict(head, Xv)
    assert (ours == yv).mean() > 0.95
    mu, s = Xtr.mean(0), np.sqrt(Xtr.var(0).mean())  # centred, one common scale
    sk = LogisticRegression(C=1.0, max_iter=1000).fit((Xtr - mu) / s, ytr)
    assert (sk.predict((Xv - mu) / s) == ours).mean() >= 0.99
    np.testing.assert_allclose(_proba(head, Xv), sk.predict_proba((Xv - mu) / s), atol=0.02)


def test_logreg_chooses_C_on_validation_logloss():
    # 100 validation items per class: C is chosen on validation, by log-loss, not accuracy
    Xtr, ytr, Xv, yv = _blobs(std=6.0)
    head, hist = fit_head("linear", Xtr, ytr, Xv, yv, num_classes=3, Cs=(0.001, 0.1, 10.0))
    assert [r["C"] for r in hist] == [0.001, 0.1, 10.0]
    assert {r["selection"] for r in hist} == {"val_logloss"} and sum(r["selected"] for r in hist) == 1
    chosen = next(r for r in hist if r["selected"])
    assert chosen["val_loss"] <= min(r["val_loss"] for r in hist) + 1e-4
    assert (_predict(head, Xv) == yv).mean() == pytest.approx(chosen["val_acc"], abs=1e-6)


@pytest.mark.parametrize("seed, accuracy_prefers", [(0, 0.1), (11, None)])
def test_validation_accuracy_does_not_decide(seed, accuracy_prefers):
    # seed 0: validation accuracy is highest at C=0.1, log-loss lowest at C=10; seed 11: accuracy ties (all 1.0)
    X, y = make_blobs(n_samples=360, centers=3, n_features=30, cluster_std=7.0, random_state=seed)
    X = X.astype(np.float32)
    _, hist = fit_head("linear", X[:60], y[:60], X[60:], y[60:], num_classes=3, Cs=(0.001, 0.1, 10.0))
    acc = [r["val_acc"] for r in hist]
    if accuracy_prefers is None:
        assert acc[1] == acc[2]
    else:
        assert hist[int(np.argmax(acc))]["C"] == accuracy_prefers
    chosen = next(r for r in hist if r["selected"])
    assert chosen["C"] == 10.0 and chosen["selection"] == "val_logloss"
    assert chosen["val_loss"] < min(r["val_loss"] for r in hist if not r["selected"])


def test_cross_validation_when_validation_is_small_or_absent():
    Xtr, ytr, Xv, yv = _blobs(std=6.0)
    for val in (None, (Xv[:30], yv[:30])):  # none, then 10 per class (< 50)
        head, hist = fit_head("linear", Xtr, ytr, *(val or (None, None)), num_classes=3, seed=1)
        assert len(hist) == 13 and {r["selection"] for r in hist} == {"cv5_logloss"}
        assert all(r["cv_loss"] is not None and 0 <= r["cv_acc"] <= 1 for r in hist)
        chosen = next(r for r in hist if r["selected"])
        assert chosen["cv_loss"] == min(r["cv_loss"] for r in hist)
        assert (chosen["val_loss"] is not None) == (val is not None)
    # the out-of-fold loss is that of five separate fits (each with its own scaling, run to convergence)
    oof = np.empty((len(ytr), 3))
    for tr, held in StratifiedKFold(5, shuffle=True, random_state=1).split(Xtr, ytr):
        oof[held] = _proba(fit_head("linear", Xtr[tr], ytr[tr], num_classes=3, C=chosen["C"])[0], Xtr[held])
    assert log_loss(ytr, oof) == pytest.approx(chosen["cv_loss"], abs=0.01)
    # same seed, same folds, same choice
    assert [r["cv_loss"] for r in fit_head("linear", Xtr, ytr, num_classes=3, seed=1)[1]] == pytest.approx([r["cv_loss"] for r in hist], abs=1e-6)
    # fewer folds when the smallest class is smaller; no cross-validation with one item
    keep = np.r_[np.flatnonzero(ytr == 0)[:3], np.flatnonzero(ytr != 0)]
    _, hist = fit_head("linear", Xtr[keep], ytr[keep], num_classes=3)
    assert hist[0]["selection"] == "cv3_logloss"
    keep = np.r_[np.flatnonzero(ytr == 0)[:1], np.flatnonzero(ytr != 0)]
    _, hist = fit_head("linear", Xtr[keep], ytr[keep], num_classes=3)
    assert [(r["C"], r["selection"]) for r in hist] == [(1.0, "default")]


def test_calibration_error_reported():
    Xtr, ytr, Xv, yv = _blobs(std=6.0)
    head, hist = fit_head("linear", Xtr, ytr, Xv, yv, num_classes=3)
    chosen = next(r for r in hist if r["selected"])
    assert 0.0 <= chosen["val_ece"] <= 1.0
    assert chosen["val_ece"] == pytest.approx(expected_calibration_error(yv, _proba(head, Xv)), abs=1e-4)
    assert all(r["val_ece"] is None for r in hist if not r["selected"])
    _, hist = fit_head("linear", Xtr, ytr, num_classes=3)  # out-of-fold
    assert 0.0 <= next(r for r in hist if r["selected"])["val_ece"] <= 1.0


def _real_set(name):
    """(X_train, y_train, X_val, y_val, X_test, y_test), raw pixels in [0, 1] as features."""
    if name == "digits":  # seeded stratified 60/20/20
        d = load_digits()
        X, y = (d.data / 16.0).astype(np.float32), d.target
        Xtr, Xrest, ytr, yrest = train_test_split(X, y, train_size=0.6, stratify=y, random_state=0)
        Xv, Xte, yv, yte = train_test_split(Xrest, yrest, train_size=0.5, stratify=yrest, random_state=0)
        return Xtr, ytr, Xv, yv, Xte, yte
    if not BREASTMNIST.is_file():
        pytest.skip(f"BreastMNIST not found at {BREASTMNIST}; set BREASTMNIST=/path/to/breastmnist.npz")
    b, out = np.load(BREASTMNIST), []  # official splits
    for split in ("train", "val", "test"):
        images = b[f"{split}_images"]
        out += [images.reshape(len(images), -1) / np.float32(255), b[f"{split}_labels"].ravel()]
    return tuple(out)


@pytest.mark.parametrize("name", ["digits", "breastmnist"])
def test_probe_not_worse_than_sklearn_default_on_real_data(name):
    Xtr, ytr, Xv, yv, Xte, yte = _real_set(name)
    head, _ = fit_head("linear", Xtr, ytr, Xv, yv, num_classes=int(ytr.max()) + 1)
    ours = (_predict(head, Xte) == yte).mean()
    theirs = (LogisticRegression().fit(Xtr, ytr).predict(Xte) == yte).mean()
    assert ours >= theirs - 0.005, f"{name}: probe {ours:.4f} vs LogisticRegression() {theirs:.4f}"


def test_mlp_learns_xor_where_linear_cannot():
    Xtr, ytr = _xor(1000, 0)
    Xv, yv = _xor(400, 1)
    lin, _ = fit_head("linear", Xtr, ytr, num_classes=2)
    assert (_predict(lin, Xv) == yv).mean() < 0.7
    mlp, hist = fit_head("mlp", Xtr, ytr, Xv, yv, num_classes=2, hidden=32, dropout=0.0, lr=2e-2, epochs=40, patience=10, batch_size=256)
    assert (_predict(mlp, Xv) == yv).mean() > 0.9
    assert [r["epoch"] for r in hist] == list(range(len(hist)))
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(hist[0])


def test_class_weight_shifts_predictions():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(1, 1, (300, 2))]).astype(np.float32)
    y = np.repeat([0, 1], 300)
    plain, _ = fit_head("linear", X, y, num_classes=2)
    heavy, _ = fit_head("linear", X, y, num_classes=2, class_weight=[1.0, 10.0])
    assert (_predict(heavy, X) == 1).mean() > (_predict(plain, X) == 1).mean() + 0.1


def test_resolve_class_weight_forms():
    y = np.array([0, 0, 0, 1])
    torch.testing.assert_close(resolve_class_weight("balanced", y, 3), torch.tensor([4 / 9, 4 / 3, 1.0]))
    torch.testing.assert_close(resolve_class_weight({1: 2.0}, y, 2), torch.tensor([1.0, 2.0]))
    assert resolve_class_weight(None, y, 2) is None
    with pytest.raises(ValueError, match="2 non-negative weights"):
        resolve_class_weight([1.0, 2.0, 3.0], y, 2)


def test_constant_features_and_bad_inputs():
    X = np.zeros((40, 3), dtype=np.float32)
    X[:, 0] = np.r_[np.zeros(20), np.ones(20)]
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    head, _ = fit_head("linear", X, y, num_classes=2)
    assert (_predict(head, X) == y).all()
    with pytest.raises(ValueError, match="class indices in \\[0, 2\\)"):
        fit_head("linear", X, y + 1, num_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        fit_head("linear", np.full((4, 2), np.nan), [0, 1, 0, 1], num_classes=2)
