"""Classification metrics on host arrays (numpy): accuracy, confusion matrix, precision,
recall, F1, balanced accuracy and ROC AUC, plus a report of all of them.

Labels and predictions are 1-D integer class ids. ROC AUC takes *scores* (the
probability or logit of the positive class), never argmax predictions: the AUC of
hard predictions is the balanced accuracy of one threshold, not the ranking quality
the metric is meant to measure (the TensorFlow notebook computed it from argmax labels).

Conventions follow scikit-learn where it has a choice: a ratio with a zero
denominator is 0; ``average="macro"`` and balanced accuracy average over the classes
present (in labels or predictions for F1, in labels for balanced accuracy).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _class_ids(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold integer class ids, got {array.dtype} values.")
        array = array.astype(np.int64)
    return array


def _pair(labels: ArrayLike, predictions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels, predictions = _class_ids(labels, "labels"), _class_ids(predictions, "predictions")
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels {labels.shape} and predictions {predictions.shape} differ in length."
        )
    if not labels.size:
        raise ValueError("labels are empty.")
    return labels, predictions


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """The fraction of ``predictions`` equal to ``labels``: ``mean(ŷ_i = y_i)``.

    Example:
      >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
      0.75
    """
    labels, predictions = _pair(labels, predictions)
    return float(np.mean(labels == predictions))


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts: entry ``[t, p]`` = examples of true class
    ``t`` predicted as ``p`` (rows are true classes, as in scikit-learn).

    Example:
      >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
      [[1, 0], [1, 1]]
    """
    labels, predictions = _pair(labels, predictions)
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(
                f"{name} must be in [0, {num_classes}), got {values.min()}…{values.max()}."
            )
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def precision_recall(
    labels: ArrayLike, predictions: ArrayLike, *, positive: int = 1
) -> tuple[float, float]:
    """Precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)`` of class ``positive``.

    Example:
      >>> precision_recall([1, 1, 0, 0], [1, 0, 1, 0])
      (0.5, 0.5)
    """
    labels, predictions = _pair(labels, predictions)
    true_positive = np.sum((predictions == positive) & (labels == positive))
    precision = _ratio(true_positive, np.sum(predictions == positive))
    recall = _ratio(true_positive, np.sum(labels == positive))
    return precision, recall


def _f1(labels: np.ndarray, predictions: np.ndarray, positive: int) -> float:
    # 2·TP / (2·TP + FP + FN): the harmonic mean of precision and recall, 0 when undefined.
    true_positive = np.sum((predictions == positive) & (labels == positive))
    denominator = np.sum(predictions == positive) + np.sum(labels == positive)
    return _ratio(2 * true_positive, denominator)


def f1_score(
    labels: ArrayLike, predictions: ArrayLike, *, average: str = "binary", positive: int = 1
) -> float:
    """F1 = ``2·P·R / (P + R)`` = ``2·TP / (2·TP + FP + FN)``.

    ``average="binary"``: the F1 of class ``positive``; ``"macro"``: the unweighted mean
    of the per-class F1 over the classes present in ``labels`` or ``predictions``.

    Example:
      >>> f1_score([1, 1, 0, 0], [1, 1, 1, 0])
      0.8
    """
    labels, predictions = _pair(labels, predictions)
    if average == "binary":
        return _f1(labels, predictions, positive)
    if average == "macro":
        classes = np.union1d(labels, predictions)
        return float(np.mean([_f1(labels, predictions, c) for c in classes]))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}.")


def balanced_accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """The mean over the classes present in ``labels`` of their recall.

    Example:
      >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0])
      0.5
    """
    labels, predictions = _pair(labels, predictions)
    return float(np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)]))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    ranks = np.empty(len(values), np.float64)
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def roc_auc(labels: ArrayLike, positive_scores: ArrayLike) -> float:
    """Area under the ROC curve of binary ``labels`` (1 = positive) ranked by scores.

    Computed as the Mann–Whitney U statistic: with midranks ``r`` of all scores,
    ``AUC = (Σ_{y=1} r − n₁(n₁+1)/2) / (n₁·n₀)`` — the probability that a random
    positive scores above a random negative, ties counting one half.

    Example:
      >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
      0.75
    """
    labels = _class_ids(labels, "labels")
    scores = np.asarray(positive_scores, np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"positive_scores {scores.shape} must match labels {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("roc_auc needs binary labels (0 and 1).")
    if not np.isfinite(scores).all():
        raise ValueError("positive_scores must be finite.")
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("roc_auc is undefined when labels hold only one class.")
    rank_sum = _midranks(scores)[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def classification_report(labels: ArrayLike, probabilities: ArrayLike) -> dict:
    """Every metric above for a ``[N, C]`` matrix of class probabilities (or logits).

    Predictions are the argmax. Returns ``accuracy``, ``balanced_accuracy``,
    ``macro_f1``, ``confusion_matrix`` (nested lists, rows true), ``num_examples``;
    for two classes also ``f1``, ``precision``, ``recall`` of class 1 and ``roc_auc``
    from ``probabilities[:, 1]``.

    Example:
      >>> report = classification_report([0, 1], [[0.9, 0.1], [0.3, 0.7]])
      >>> report["accuracy"], report["roc_auc"]
      (1.0, 1.0)
    """
    labels = _class_ids(labels, "labels")
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probabilities must be [N, C] with N = {labels.shape[0]}, got {probabilities.shape}."
        )
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    report = {
        "num_examples": int(labels.shape[0]),
        "accuracy": accuracy(labels, predictions),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
        "macro_f1": f1_score(labels, predictions, average="macro"),
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
    }
    if num_classes == 2:
        precision, recall = precision_recall(labels, predictions)
        report.update(
            f1=f1_score(labels, predictions),
            precision=precision,
            recall=recall,
            roc_auc=roc_auc(labels, probabilities[:, 1]),
        )
    return report
