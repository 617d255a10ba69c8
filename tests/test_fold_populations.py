"""Students with their own training rows (the folds of a cross-validation) trained
together as one population, and 1-D signal inputs through the same core."""

from functools import partial

import chex
import jax
import numpy as np
import pytest

from kdjax.data import Split, normalize
from kdjax.data.folds import k_fold
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import MLP
from kdjax.training import (
    Execution,
    Folds,
    Plan,
    Run,
    Training,
    TrainingData,
    fit,
    make_optimizer,
)

UNIT = partial(normalize, mean=0.0, std=1.0)


def _split(count, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 8, 8, 1)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, label % 8, :, 0] = 200 + label
    return Split(images, labels, np.arange(count, dtype=np.int64) + 500)


def _take(split, rows):
    return Split(split.images[rows], split.labels[rows], split.ids[rows])


def _folds(member_rows=None, member_test_rows=None):
    """The folds plan of each student's training rows and held-out rows."""
    if member_rows is None:
        return None
    return Folds(tuple(member_rows), None if member_test_rows is None else tuple(member_test_rows))


def _call_fit(training, name, tmp_path, train, test, *, hyperparams, epochs, batch_size, seed,
              data_seed=None, member_rows=None, member_test_rows=None, execution=None):  # fmt: skip
    """``fit`` with this file's arguments as its records."""
    plan = Plan(epochs, batch_size, seed, hyperparams, data_seed,
                _folds(member_rows, member_test_rows))  # fmt: skip
    return fit(training, TrainingData(train, test), plan,
               Run(name, tmp_path / name, {"name": name}), execution,
               log=lambda message: None)  # fmt: skip


def _fit(tmp_path, name, train, test, seed, **kwargs):
    return _call_fit(
        Training(MLP(hidden_sizes=(16,)), OBJECTIVES["ce"], make_optimizer("adam"), UNIT),
        name,
        tmp_path,
        train,
        test,
        hyperparams=make_hyperparams(learning_rate=3e-3),
        epochs=2,
        batch_size=16,
        seed=seed,
        **kwargs,
    )


@pytest.fixture(scope="module")
def folds_alone(tmp_path_factory):
    """The data, its 4 folds of 40 (120 training rows each) and ``alone(feed)``: each
    fold trained alone with that feed, trained once and compared with every strategy."""
    data = _split(160)
    folds = k_fold(len(data.labels), 4, seed=0)
    directory = tmp_path_factory.mktemp("folds_alone")
    runs = {}

    def alone(feed):
        if feed not in runs:
            runs[feed] = [
                _fit(
                    directory,
                    f"alone{index}-{feed}",
                    _take(data, train),
                    _take(data, test),
                    index,
                    data_seed=7 + index,
                    execution=Execution(feed=feed),
                )
                for index, (train, test) in enumerate(folds)
            ]
        return runs[feed]

    return data, folds, alone


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
@pytest.mark.parametrize("feed", ["host", "device"])
def test_folds_trained_together_equal_each_fold_trained_alone(
    tmp_path, folds_alone, strategy, feed
):
    data, folds, alone = folds_alone
    together = _fit(
        tmp_path, f"folds-{strategy}-{feed}", data, data, [0, 1, 2, 3],
        data_seed=7,
        member_rows=[train for train, _ in folds],
        member_test_rows=[test for _, test in folds],
        execution=Execution(population_strategy=strategy, feed=feed),
    )  # fmt: skip
    assert len(together.test_accuracy) == 4
    for index, single in enumerate(alone(feed)):
        chex.assert_trees_all_close(
            together.member_variables(index), single.variables, rtol=1e-5, atol=1e-6
        )
        assert together.test_accuracy[index] == pytest.approx(single.test_accuracy[0], abs=1e-9)


def test_overlapping_training_and_test_rows_are_refused(tmp_path):
    data = _split(64)
    rows = np.arange(40)
    with pytest.raises(ValueError, match="overlap"):
        _fit(tmp_path, "overlap", data, data, [0, 1], member_rows=[rows, rows],
             member_test_rows=[rows[:8], np.arange(40, 64)])  # fmt: skip
    with pytest.raises(ValueError, match="need a list of seeds"):
        _fit(tmp_path, "single", data, data, 0, member_rows=[rows])


def test_float_signals_train_through_the_same_core(tmp_path):
    from kdjax.models.signal_models import get_signal_model

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 96).astype(np.int32)
    time = np.linspace(0, 1, 128, dtype=np.float32)
    signals = np.stack([np.sin(2 * np.pi * (label + 1) * time) for label in labels])[..., None]
    split = Split(signals.astype(np.float32), labels, np.arange(96, dtype=np.int64))
    result = _call_fit(
        Training(get_signal_model("signal_cnn", num_classes=5), OBJECTIVES["ce"],
                 make_optimizer("adam"), partial(normalize, mean=0.0, std=1.0, scale=1.0)),
        "signals", tmp_path, split, split,
        hyperparams=make_hyperparams(learning_rate=3e-3), epochs=3, batch_size=32, seed=0,
    )  # fmt: skip
    assert np.isfinite(result.history[-1]["train_loss"]).all()
    assert jax.tree.leaves(result.variables)[0].dtype == np.float32
    with pytest.raises(ValueError, match="float32 \\[N, L, C\\] signals"):
        Split(signals.astype(np.float64), labels, np.arange(96, dtype=np.int64))


def _distil(directory, name, teacher, train, test, seed, **kwargs):
    """A KD student (MLP(16), T=2, half CE and half KD) of an online ``teacher``."""
    training = Training(MLP(hidden_sizes=(16,)), OBJECTIVES["kd"], make_optimizer("adam"),
                        UNIT, teacher=teacher)  # fmt: skip
    hyper = make_hyperparams(learning_rate=3e-3, temperature=2.0, hard_weight=0.5,
                             soft_weight=0.5)  # fmt: skip
    return _call_fit(training, name, directory, train, test, hyperparams=hyper, epochs=2,
                     batch_size=16, seed=seed, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def fold_teachers(tmp_path_factory):
    """The data, its 3 folds, a teacher per fold (stacked) and each fold's student
    distilled alone from its own teacher: trained once for every strategy."""
    from kdjax.training import OnlineTeacher

    directory = tmp_path_factory.mktemp("fold_teachers")
    data = _split(120)
    folds = k_fold(len(data.labels), 3, seed=0)
    teachers = [
        _fit(directory, f"teacher{index}", _take(data, train), _take(data, test), 10 + index)
        for index, (train, test) in enumerate(folds)
    ]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *(t.variables for t in teachers))
    alone = [
        _distil(
            directory,
            f"alone{index}",
            OnlineTeacher(MLP(hidden_sizes=(16,)), teachers[index].variables, UNIT),
            _take(data, train),
            _take(data, test),
            index,
            data_seed=7 + index,
        )
        for index, (train, test) in enumerate(folds)
    ]
    return data, folds, stacked, alone


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_folds_distilled_online_each_from_its_own_teacher(tmp_path, fold_teachers, strategy):
    """An online teacher per student (per_member=True): fold i's student, trained with
    the others in one program, equals fold i's student distilled alone from teacher i."""
    from kdjax.training import OnlineTeacher

    data, folds, stacked, alone = fold_teachers
    teacher_model = MLP(hidden_sizes=(16,))
    together = _distil(
        tmp_path, f"folds-{strategy}", OnlineTeacher(teacher_model, stacked, UNIT, per_member=True),
        data, data, [0, 1, 2], data_seed=7,
        member_rows=[train for train, _ in folds], member_test_rows=[test for _, test in folds],
        execution=Execution(population_strategy=strategy),
    )  # fmt: skip
    for index, single in enumerate(alone):
        chex.assert_trees_all_close(
            together.member_variables(index), single.variables, rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="one teacher per student"):
        _distil(tmp_path, "single", OnlineTeacher(teacher_model, stacked, UNIT, per_member=True),
                data, data, 0)  # fmt: skip
