"""Heads: rebuild from config + state_dict, logistic regression vs scikit-learn, MLP on XOR, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression

from headstart.heads import create_head, fit_head, head_kinds, resolve_class_weight


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


def test_logreg_blobs_accurate_and_matches_sklearn():
    Xtr, ytr, Xv, yv = _blobs(std=4.0)
    head, hist = fit_head("logreg", Xtr, ytr, num_classes=3)
    assert len(hist) == 1 and hist[0]["C"] == 1.0 and hist[0]["selected"]
    ours = _predict(head, Xv)
    assert (ours == yv).mean() > 0.95
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sk = LogisticRegression(C=1.0, max_iter=1000).fit((Xtr - mu) / sd, ytr)
    assert (sk.predict((Xv - mu) / sd) == ours).mean() >= 0.99
    with torch.no_grad():
        p = torch.softmax(head(torch.as_tensor(Xv)), 1).numpy()
    np.testing.assert_allclose(p, sk.predict_proba((Xv - mu) / sd), atol=0.02)


def test_logreg_chooses_C_on_validation():
    Xtr, ytr, Xv, yv = _blobs(std=6.0)
    head, hist = fit_head("linear", Xtr, ytr, Xv, yv, num_classes=3, Cs=(0.001, 0.1, 10.0))
    assert [r["C"] for r in hist] == [0.001, 0.1, 10.0]
    assert sum(r["selected"] for r in hist) == 1
    chosen = next(r for r in hist if r["selected"])
    assert chosen["val_acc"] == max(r["val_acc"] for r in hist)
    assert (_predict(head, Xv) == yv).mean() == pytest.approx(chosen["val_acc"], abs=1e-6)


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
