"""Classification metrics against hand-computed cases and, where installed, scikit-learn."""

import itertools

import numpy as np
import pytest

from kdjax.training import metrics

LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
PREDICTIONS = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0])
# TP = 3 (0, 3, 6), FN = 2 (2, 9), FP = 1 (4), TN = 4.


def test_hand_computed_binary_case():
    assert metrics.accuracy(LABELS, PREDICTIONS) == pytest.approx(0.7)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(LABELS, PREDICTIONS, 2), [[4, 1], [2, 3]]
    )
    precision, recall = metrics.precision_recall(LABELS, PREDICTIONS)
    assert (precision, recall) == pytest.approx((3 / 4, 3 / 5))
    assert metrics.f1_score(LABELS, PREDICTIONS) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    negative_f1 = 2 * 4 / (2 * 4 + 2 + 1)
    assert metrics.f1_score(LABELS, PREDICTIONS, positive=0) == pytest.approx(negative_f1)
    assert metrics.f1_score(LABELS, PREDICTIONS, average="macro") == pytest.approx(
        (6 / 9 + negative_f1) / 2
    )
    assert metrics.balanced_accuracy(LABELS, PREDICTIONS) == pytest.approx((4 / 5 + 3 / 5) / 2)


def _pairwise_auc(labels, scores):
    """The definition: P(score of a positive > score of a negative), ties ½."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    negatives = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)
    )
    return wins / (len(positives) * len(negatives))


def test_roc_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        labels[:2] = (0, 1)
        scores = rng.integers(0, 6, 30) / 5  # many ties
        assert metrics.roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


def test_roc_auc_known_values_and_errors():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert metrics.roc_auc([0, 1], [0.9, 0.2]) == 0.0
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="only one class"):
        metrics.roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        metrics.roc_auc([0, 2], [0.2, 0.3])


def test_zero_denominators_give_zero():
    assert metrics.precision_recall([0, 0], [0, 0]) == (0.0, 0.0)
    assert metrics.f1_score([0, 0], [0, 0]) == 0.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="predictions must be in"):
        metrics.confusion_matrix([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="labels must be a 1-D"):
        metrics.accuracy([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="average"):
        metrics.f1_score([0, 1], [0, 1], average="micro")
    with pytest.raises(ValueError, match="probabilities must be"):
        metrics.classification_report([0, 1], [0.2, 0.8])


def test_report_uses_probabilities_for_auc_not_argmax():
    labels = np.array([0, 0, 1, 1])
    # Every argmax is class 0, but the class-1 probabilities rank the positives first.
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    report = metrics.classification_report(labels, probabilities)
    assert report["roc_auc"] == 1.0
    assert report["accuracy"] == 0.5 and report["f1"] == 0.0
    assert report["confusion_matrix"] == [[2, 0], [2, 0]]
    assert report["num_examples"] == 4
    three = metrics.classification_report([0, 1, 2], np.eye(3))
    assert three["accuracy"] == 1.0 and "roc_auc" not in three


def test_agrees_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for num_classes in (2, 3, 5):
        labels = rng.integers(0, num_classes, 200)
        predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, 200))
        np.testing.assert_array_equal(
            metrics.confusion_matrix(labels, predictions, num_classes),
            sklearn_metrics.confusion_matrix(labels, predictions, labels=range(num_classes)),
        )
        assert metrics.f1_score(labels, predictions, average="macro") == pytest.approx(
            sklearn_metrics.f1_score(labels, predictions, average="macro")
        )
        assert metrics.balanced_accuracy(labels, predictions) == pytest.approx(
            sklearn_metrics.balanced_accuracy_score(labels, predictions)
        )
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounded: ties
    predictions = (scores > 0.6).astype(int)
    assert metrics.roc_auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores)
    )
    assert metrics.f1_score(labels, predictions) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions)
    )
    precision, recall = metrics.precision_recall(labels, predictions)
    assert precision == pytest.approx(sklearn_metrics.precision_score(labels, predictions))
    assert recall == pytest.approx(sklearn_metrics.recall_score(labels, predictions))
