"""Tests for kdjax.data.folds: every split is disjoint and covering, groups stay whole,
classes are spread evenly where promised, and a seed fixes the result."""

from __future__ import annotations

import numpy as np
import pytest

from kdjax.data import folds

SUBJECTS = np.repeat(np.arange(7), 10)  # 7 subjects × 10 samples
LABELS = np.tile(np.repeat(np.arange(5), 2), 7)  # 2 per class per subject


def check_partition(split: list[tuple[np.ndarray, np.ndarray]], count: int) -> None:
    """Train and test disjoint, together everything; test sets partition everything."""
    tests = np.concatenate([test for _, test in split])
    np.testing.assert_array_equal(np.sort(tests), np.arange(count))
    for train, test in split:
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.union1d(train, test), np.arange(count))
        assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()


def same(first, second) -> bool:
    return all(
        np.array_equal(a, c) and np.array_equal(b, d)
        for (a, b), (c, d) in zip(first, second, strict=True)
    )


def test_holdout_split_sizes_and_seed():
    train, test = folds.holdout_split(8700, test_fraction=0.2, seed=42)
    assert (len(train), len(test)) == (6960, 1740)  # the BioVid pipeline's 80/20
    assert np.intersect1d(train, test).size == 0
    again = folds.holdout_split(8700, test_fraction=0.2, seed=42)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(folds.holdout_split(8700, seed=1)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        folds.holdout_split(10, test_fraction=1.5)


def test_k_fold_partitions_with_sizes_differing_by_at_most_one():
    split = folds.k_fold(23, 5, seed=0)
    check_partition(split, 23)
    assert sorted(len(test) for _, test in split) == [4, 4, 5, 5, 5]
    assert same(split, folds.k_fold(23, 5, seed=0))
    assert not same(split, folds.k_fold(23, 5, seed=1))


def test_stratified_k_fold_spreads_every_class_evenly():
    labels = np.r_[np.zeros(13, int), np.ones(7, int), np.full(5, 2)]
    split = folds.stratified_k_fold(labels, 5, seed=3)
    check_partition(split, len(labels))
    counts = np.array([np.bincount(labels[test], minlength=3) for _, test in split])
    assert (counts.max(0) - counts.min(0) <= 1).all()
    np.testing.assert_array_equal(counts.sum(0), [13, 7, 5])
    sizes = [len(test) for _, test in split]
    assert max(sizes) - min(sizes) <= 1
    assert same(split, folds.stratified_k_fold(labels, 5, seed=3))


@pytest.mark.parametrize("num_folds", [2, 3, 5, 7])
def test_subject_k_fold_never_puts_a_subject_on_both_sides(num_folds):
    split = folds.subject_k_fold(SUBJECTS, num_folds, seed=0)
    check_partition(split, len(SUBJECTS))
    for train, test in split:
        assert np.intersect1d(SUBJECTS[train], SUBJECTS[test]).size == 0
    per_fold = sorted(len(np.unique(SUBJECTS[test])) for _, test in split)
    assert per_fold[-1] - per_fold[0] <= 1 and sum(per_fold) == 7
    assert same(split, folds.subject_k_fold(SUBJECTS, num_folds, seed=0))


def test_subject_k_fold_works_with_subject_names_and_depends_on_the_seed():
    names = np.array(["b", "a", "c", "a", "d", "b"])
    split = folds.subject_k_fold(names, 2, seed=0)
    check_partition(split, 6)
    for train, test in split:
        assert not set(names[train]) & set(names[test])
    orders = {tuple(names[folds.subject_k_fold(names, 4, seed=seed)[0][1]]) for seed in range(8)}
    assert len(orders) > 1


def test_leave_one_subject_out_tests_each_subject_once():
    split = folds.leave_one_subject_out(SUBJECTS)
    assert len(split) == 7
    check_partition(split, len(SUBJECTS))
    for subject, (train, test) in enumerate(split):
        np.testing.assert_array_equal(test, np.flatnonzero(SUBJECTS == subject))
        assert subject not in SUBJECTS[train]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        folds.k_fold(10, 1)
    with pytest.raises(ValueError, match="more than the 3 subjects"):
        folds.subject_k_fold(np.array([0, 1, 2]), 4)
    with pytest.raises(ValueError, match="unknown subjects"):
        folds.leave_one_subject_out(np.array([0, -1, 1]))
