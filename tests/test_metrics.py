"""classification_metrics against scikit-learn on fixed predictions, and ECE against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from headstart.evaluate.metrics import calibration_bins, classification_metrics, expected_calibration_error


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fixed_predictions(n: int, k: int, seed: int, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels cycling over all ``k`` classes and noisy probabilities leaning towards the truth."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += skill
    return y, softmax(logits)


def assert_matches_sklearn(m: dict, y: np.ndarray, proba: np.ndarray, k: int) -> None:
    pred = proba.argmax(1)
    labels = np.arange(k)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-9)
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx((p, r, f))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per = list(m["per_class"].values())
    assert [c["precision"] for c in per] == pytest.approx(p)
    assert [c["recall"] for c in per] == pytest.approx(r)
    assert [c["f1"] for c in per] == pytest.approx(f)
    assert [c["support"] for c in per] == list(s)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()


def test_two_classes_match_sklearn():
    y, proba = fixed_predictions(40, 2, seed=0, skill=1.0)
    m = classification_metrics(y, proba, ["cat", "dog"])
    assert_matches_sklearn(m, y, proba, 2)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert "top_3_accuracy" not in m  # not defined with 2 classes
    assert 0.5 < m["accuracy"] < 1.0  # the fixture is neither trivial nor hopeless
    assert m["notes"] == []


def test_one_hundred_classes_match_sklearn():
    k = 100
    y, proba = fixed_predictions(1000, k, seed=1, skill=3.0)
    m = classification_metrics(y, proba, [f"c{i}" for i in range(k)])
    assert_matches_sklearn(m, y, proba, k)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["pr_auc"] == pytest.approx(np.mean([skm.average_precision_score(y == i, proba[:, i]) for i in range(k)]))
    for kk in (3, 5):
        assert m[f"top_{kk}_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=kk, labels=np.arange(k)))
    assert m["accuracy"] < m["top_3_accuracy"] < m["top_5_accuracy"]
    assert len(m["per_class"]) == k and np.asarray(m["confusion_matrix"]).shape == (k, k)


def test_class_never_predicted():
    y, proba = fixed_predictions(60, 3, seed=2)
    proba[:, 2] = 0.0  # nobody is ever predicted class 2
    proba /= proba.sum(1, keepdims=True)
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert_matches_sklearn(m, y, np.clip(proba, 1e-15, 1) / np.clip(proba, 1e-15, 1).sum(1, keepdims=True), 3)
    assert m["per_class"]["c"]["precision"] == 0.0 and m["per_class"]["c"]["recall"] == 0.0
    assert m["per_class"]["c"]["support"] == 20
    assert any("never predicted: c" in n for n in m["notes"])
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_class_absent_from_test_set_is_skipped_and_said():
    y, proba = fixed_predictions(60, 4, seed=3)
    keep = y != 1  # class "b" is not among the evaluated items
    y, proba = y[keep], proba[keep]
    m = classification_metrics(y, proba, ["a", "b", "c", "d"])
    assert_matches_sklearn(m, y, proba, 4)
    present = [0, 2, 3]
    assert m["roc_auc"] == pytest.approx(np.mean([skm.roc_auc_score(y == i, proba[:, i]) for i in present]))
    assert m["pr_auc"] == pytest.approx(np.mean([skm.average_precision_score(y == i, proba[:, i]) for i in present]))
    assert m["per_class"]["b"]["support"] == 0
    assert m["per_class"]["b"]["roc_auc"] is None and m["per_class"]["a"]["roc_auc"] is not None
    assert any("absent from the evaluated items: b" in n for n in m["notes"])
    # What the skip avoids: sklearn's one-vs-rest AUC of the absent class is undefined (NaN, with a warning).
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(skm.roc_auc_score(y == 1, proba[:, 1]))


def test_single_class_evaluated_has_no_auc():
    y = np.zeros(5, dtype=int)
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.55, 0.45]])
    m = classification_metrics(y, proba, ["x", "y"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert any("single class" in n for n in m["notes"])


def test_no_items():
    m = classification_metrics(np.zeros(0, int), np.zeros((0, 3)), ["a", "b", "c"])
    assert m["n"] == 0 and math.isnan(m["accuracy"])
    assert m["confusion_matrix"] == [[0] * 3] * 3


def test_ece_by_hand():
    # 10 bins. Confidences 0.95, 0.92 (bin (0.9, 1.0]: one right, one wrong), 0.65 (bin (0.6, 0.7]: right),
    # 0.55 (bin (0.5, 0.6]: wrong).
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.95, 0.05], [0.08, 0.92], [0.35, 0.65], [0.55, 0.45]])
    # bin (0.9,1]: acc 1/2, conf (0.95+0.92)/2 = 0.935, gap 0.435, weight 2/4
    # bin (0.6,0.7]: acc 1, conf 0.65, gap 0.35, weight 1/4
    # bin (0.5,0.6]: acc 0, conf 0.55, gap 0.55, weight 1/4
    hand = 0.5 * 0.435 + 0.25 * 0.35 + 0.25 * 0.55
    assert expected_calibration_error(y, proba, n_bins=10) == pytest.approx(hand)
    assert classification_metrics(y, proba, ["a", "b"])["ece"] == pytest.approx(expected_calibration_error(y, proba))


def test_ece_perfect_and_worst():
    y = np.array([0, 1, 0, 1])
    onehot = np.eye(2)[y]
    assert expected_calibration_error(y, onehot) == 0.0  # certain and right
    assert expected_calibration_error(y, onehot[:, ::-1]) == pytest.approx(1.0)  # certain and wrong


def test_calibration_bins_edges_and_agreement_with_sklearn():
    # A confidence on an edge (0.5, 0.7) belongs to the bin it closes: (0.4, 0.5], (0.6, 0.7].
    b = calibration_bins(np.array([0, 0]), np.array([[0.5, 0.5], [0.7, 0.3]]), n_bins=10)
    assert b["count"].tolist() == [0, 0, 0, 0, 1, 0, 1, 0, 0, 0]
    # Binary case: the per-bin accuracy and confidence of the top class agree with sklearn's calibration_curve.
    from sklearn.calibration import calibration_curve

    y, proba = fixed_predictions(400, 2, seed=4, skill=1.5)
    conf = proba.max(1)
    correct = (proba.argmax(1) == y).astype(int)
    frac_pos, mean_pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    bins = calibration_bins(y, proba, n_bins=10)
    used = bins["count"] > 0
    assert bins["accuracy"][used] == pytest.approx(frac_pos)
    assert bins["confidence"][used] == pytest.approx(mean_pred)
