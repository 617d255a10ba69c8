"""Cross-validation splits as lists of ``(train_indices, test_indices)``.

The BioVid pipeline evaluates on random splits (an 80/20 hold-out and sklearn's
``KFold(shuffle=True)``, not stratified), which put windows of the same person
in training and test. The pain-recognition literature reports
subject-independent results instead; :func:`subject_k_fold` and
:func:`leave_one_subject_out` keep every subject on one side.

Every function is deterministic for a given ``seed``; indices in each part are
sorted ascending.

Example:
  >>> from kdjax import folds
  >>> for train, test in folds.subject_k_fold(subjects, 5, seed=0):  # doctest: +SKIP
  ...     fit(dataset.take(train)); evaluate(dataset.take(test))
"""

from __future__ import annotations

import numpy as np

Folds = list[tuple[np.ndarray, np.ndarray]]


def _check_folds(num_folds: int, available: int, what: str) -> None:
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}.")
    if num_folds > available:
        raise ValueError(f"num_folds={num_folds} is more than the {available} {what}.")


def _complement(test: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    in_test = np.zeros(count, bool)
    in_test[test] = True
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def holdout_split(
    num_examples: int, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One random split, ``round(test_fraction · N)`` examples in test (the pipeline's
    ``train_test_split(test_size=0.2)``; 8,700 → 6,960 / 1,740).

    Example:
      >>> train, test = holdout_split(10, test_fraction=0.2, seed=0)
      >>> len(train), len(test)
      (8, 2)
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    test_count = int(round(test_fraction * num_examples))
    if not 0 < test_count < num_examples:
        raise ValueError(f"{num_examples} examples cannot be split {test_fraction:g} for test.")
    order = np.random.default_rng(seed).permutation(num_examples)
    return _complement(order[:test_count], num_examples)


def k_fold(num_examples: int, num_folds: int, *, seed: int = 0) -> Folds:
    """Random k-fold, not stratified (the pipeline's ``KFold(shuffle=True)``): the
    examples are shuffled and cut into ``num_folds`` parts whose sizes differ by at
    most one; each part is the test set once.

    Example:
      >>> [len(test) for _, test in k_fold(11, 5, seed=0)]
      [3, 2, 2, 2, 2]
    """
    _check_folds(num_folds, num_examples, "examples")
    order = np.random.default_rng(seed).permutation(num_examples)
    return [_complement(part, num_examples) for part in np.array_split(order, num_folds)]


def stratified_k_fold(labels: np.ndarray, num_folds: int, *, seed: int = 0) -> Folds:
    """Random k-fold with every class spread evenly over the folds: each class's
    examples are shuffled and dealt round-robin, continuing where the previous
    class stopped, so fold sizes differ by at most one and class counts per fold
    by at most one.

    Example:
      >>> [np.bincount(labels[test]).tolist() for _, test in  # doctest: +SKIP
      ...  stratified_k_fold(labels, 5)]
    """
    labels = np.asarray(labels)
    _check_folds(num_folds, len(labels), "examples")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = (dealt + np.arange(len(members))) % num_folds
        dealt += len(members)
    return [_complement(np.flatnonzero(fold_of == fold), len(labels)) for fold in range(num_folds)]


def _check_subjects(subjects: np.ndarray) -> np.ndarray:
    subjects = np.asarray(subjects)
    if subjects.ndim != 1:
        raise ValueError(f"subjects must be 1-D, got shape {subjects.shape}.")
    if np.issubdtype(subjects.dtype, np.integer) and (subjects < 0).any():
        raise ValueError(
            "subjects holds unknown subjects (-1); subject-wise folds need every sample's "
            "subject (name the files SUBJECT-CLASS-INDEX_bio.csv)."
        )
    return subjects


def subject_k_fold(subjects: np.ndarray, num_folds: int, *, seed: int = 0) -> Folds:
    """Subject-grouped k-fold: the distinct subjects are shuffled and cut into
    ``num_folds`` groups whose subject counts differ by at most one; a fold's test
    set is all samples of its group, so no subject is on both sides.

    Example:
      >>> subjects = np.array([0, 0, 1, 1, 2, 2])
      >>> [subjects[test].tolist() for _, test in subject_k_fold(subjects, 3, seed=0)]
      [[2, 2], [0, 0], [1, 1]]
    """
    subjects = _check_subjects(subjects)
    distinct = np.unique(subjects)
    _check_folds(num_folds, len(distinct), "subjects")
    shuffled = np.random.default_rng(seed).permutation(distinct)
    return [
        _complement(np.flatnonzero(np.isin(subjects, group)), len(subjects))
        for group in np.array_split(shuffled, num_folds)
    ]


def leave_one_subject_out(subjects: np.ndarray) -> Folds:
    """One fold per subject (in sorted subject order): test on that subject's
    samples, train on everyone else's — the field's standard protocol (LOSO).

    Example:
      >>> [test.tolist() for _, test in leave_one_subject_out(np.array([1, 0, 1]))]
      [[1], [0, 2]]
    """
    subjects = _check_subjects(subjects)
    distinct = np.unique(subjects)
    _check_folds(len(distinct), len(distinct), "subjects")
    return [_complement(np.flatnonzero(subjects == subject), len(subjects)) for subject in distinct]
