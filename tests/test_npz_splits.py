"""A .npz file's own splits (MedMNIST's and Keras' layouts), class names, and the errors for a half-filled layout."""

from pathlib import Path

import numpy as np
import pytest

import headstart
from headstart.data import load_splits
from headstart.errors import DataError

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
