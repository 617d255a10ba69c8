"""A teacher ensemble: its combined logits, stored and online alike, and what it refuses."""

import chex
import jax
import numpy as np
import pytest

from kdjax.data import Dataset, Split
from kdjax.distill.ensemble import combine_logits
from kdjax.distill.teachers import Teacher, TeacherEnsemble
from kdjax.runs import train_run
from kdjax.runs.spec import RunSpec
from kdjax.training import predict
from kdjax.training.recipe import model_of, preprocess_of

QUIET = {"log": lambda message: None}


def _dataset(train=128, test=64) -> Dataset:
    def split(count, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, count).astype(np.int32)
        images = rng.integers(0, 40, (count, 12, 12, 1)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, label + 1, 2:10, 0] = 255
        return Split(images, labels, np.arange(count, dtype=np.int64))

    return Dataset("stripes", "test", "memory", split(train, 0), split(test, 1), 10)


def _teacher(tmp_path, role, hidden, seed, **settings) -> Teacher:
    """An untrained MLP teacher (initialised variables), with its own store folder."""
    spec = RunSpec(role=role, model="mlp", model_settings={"hidden_sizes": hidden}, **settings)
    sample = preprocess_of(spec)(np.zeros((1, 12, 12, 1), np.uint8))
    variables = model_of(spec).init(jax.random.PRNGKey(seed), sample)
    return Teacher(spec, variables, tmp_path / f"{role}-{seed}")


def _members(tmp_path) -> list[Teacher]:
    """Two teachers of different widths, depths and input normalisations."""
    return [
        _teacher(tmp_path, "wide", (48,), 0, input_mean=20.0, input_std=70.0),
        _teacher(tmp_path, "deep", (16, 16), 1),
    ]


def _softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_the_logits_combine_as_the_mean_of_logits_or_of_probabilities():
    logits = np.random.default_rng(0).normal(0, 4, (3, 5, 2, 7)).astype(np.float32)
    np.testing.assert_allclose(combine_logits(logits, "logits"), logits.mean(0), rtol=1e-6)
    mean_probability = _softmax(logits.astype(np.float64)).mean(0)
    combined = np.asarray(combine_logits(list(logits), "probabilities"))
    np.testing.assert_allclose(combined, np.log(mean_probability), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_softmax(combined), mean_probability, rtol=1e-5, atol=1e-7)
    # At temperature T the soft target is the mean probability to the power 1/T.
    sharpened = mean_probability**0.5 / (mean_probability**0.5).sum(-1, keepdims=True)
    np.testing.assert_allclose(_softmax(combined / 2.0), sharpened, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="different shapes"):
        combine_logits([logits[0], logits[0, :, :, :5]])
    with pytest.raises(ValueError, match="combine must be one of"):
        combine_logits(logits, "median")


@pytest.mark.parametrize("combine", ["logits", "probabilities"])
def test_stored_and_online_logits_are_the_members_combined(tmp_path, combine):
    dataset = _dataset()
    members = _members(tmp_path)
    ensemble = TeacherEnsemble(members, combine=combine)
    own = [
        predict(m.model, m.variables, dataset.test.images, preprocess=preprocess_of(m.spec))
        for m in members
    ]
    expected = np.asarray(combine_logits([rows["logits"] for rows in own], combine))
    stored = ensemble.outputs(dataset, splits=("test",), **QUIET)["logits"]["test"]
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    assert all((m.run_dir / "soft_targets" / "test.npz").exists() for m in members)
    online = ensemble.online()
    assert set(online.variables["params"]) == {"member0_wide", "member1_deep"}
    computed = online.outputs(online.variables, dataset.test.images, ("logits",))
    np.testing.assert_allclose(computed["teacher_logits"], expected, rtol=1e-5, atol=1e-5)


def test_the_shifted_training_logits_combine_shift_by_shift(tmp_path):
    dataset = _dataset(train=32, test=16)
    members = _members(tmp_path)
    shifted = TeacherEnsemble(members).outputs(dataset, train_shifts=1, **QUIET)["logits"]
    own = [m.outputs(dataset, train_shifts=1, **QUIET)["logits"] for m in members]
    assert shifted["train"].shape == (32, 9, 10) and shifted["test"].shape == (16, 10)
    for split in ("train", "test"):
        np.testing.assert_allclose(shifted[split], (own[0][split] + own[1][split]) / 2, rtol=1e-6)


def test_stored_and_online_ensembles_train_the_same_student(tmp_path):
    """Without augmentation the online ensemble sees the images its stored logits
    came from, so both students end alike (to float32 noise)."""
    dataset = _dataset()
    ensemble = TeacherEnsemble(_members(tmp_path), combine="probabilities")
    student = dict(objective="kd", temperature=3.0, hard_weight=0.5, soft_weight=0.5,
                   epochs=1, batch_size=32, model="mlp",
                   model_settings={"hidden_sizes": (32,)})  # fmt: skip
    stored = train_run(RunSpec(role="stored", **student), dataset, tmp_path, teacher=ensemble,
                       **QUIET)  # fmt: skip
    online_spec = RunSpec(role="online", teacher_mode="online", **student)
    online = train_run(online_spec, dataset, tmp_path, teacher=ensemble, **QUIET)
    chex.assert_trees_all_close(online.params, stored.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [e["train_loss"] for e in online.history],
        [e["train_loss"] for e in stored.history],
        rtol=1e-5,
    )


def test_an_ensemble_gives_logits_alone(tmp_path):
    dataset = _dataset(train=32, test=16)
    ensemble = TeacherEnsemble(_members(tmp_path))
    with pytest.raises(ValueError, match="only the output 'logits'.*'features'"):
        ensemble.outputs(dataset, ("logits", "features"), **QUIET)
    online = ensemble.online()
    with pytest.raises(ValueError, match="only the output 'logits'"):
        online.outputs(online.variables, dataset.test.images, ("feature_map",))
    cosine = RunSpec(role="cosine", objective="cosine", model="mlp",
                     model_settings={"hidden_sizes": (16,)}, epochs=1, batch_size=32)  # fmt: skip
    with pytest.raises(ValueError, match="only the output 'logits'"):
        train_run(cosine, dataset, tmp_path, teacher=ensemble, **QUIET)


def test_population_members_are_refused(tmp_path):
    population = Teacher(
        RunSpec(role="folds", model="mlp", seed=(0, 1)), {"params": {}}, tmp_path / "folds"
    )
    with pytest.raises(ValueError, match="'folds' trained as a population"):
        TeacherEnsemble([*_members(tmp_path), population])
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])


def test_the_fingerprint_follows_the_members_their_order_and_the_combine_mode(tmp_path):
    first, second = _members(tmp_path)
    third = _teacher(tmp_path, "wide", (48,), 2)
    fingerprints = [
        TeacherEnsemble([first, second]).fingerprint,
        TeacherEnsemble([second, first]).fingerprint,
        TeacherEnsemble([first, second], combine="probabilities").fingerprint,
        TeacherEnsemble([first, third]).fingerprint,
        TeacherEnsemble([first]).fingerprint,
    ]
    assert len(set(fingerprints)) == len(fingerprints)
    assert TeacherEnsemble((first, second)).fingerprint == fingerprints[0]
    assert first.fingerprint not in fingerprints
