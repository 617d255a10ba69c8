"""Translations in the step and the jittered transfer set: the per-shift order that the
teacher's store writes and translate_batch reads."""

from functools import partial

import jax
import numpy as np
import pytest

from kdjax.data import Split, normalize
from kdjax.data.augment import (
    every_shift,
    random_translate,
    shift_count,
    translate,
    translate_batch,
)
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import MLP
from kdjax.training import create_state, make_optimizer, make_train_step

UNIT = partial(normalize, mean=0.0, std=1.0)


def test_random_translate_shifts_each_image_within_the_limit():
    images = np.zeros((64, 12, 12, 1), np.uint8)
    images[:, 5, 6, 0] = 255  # one bright pixel at (5, 6)
    shifted = np.asarray(random_translate(jax.random.PRNGKey(0), images, max_shift=2))
    assert shifted.shape == images.shape and shifted.dtype == np.float32
    positions = [np.argwhere(image[..., 0] == 255) for image in shifted]
    offsets = {(int(p[0][0]) - 5, int(p[0][1]) - 6) for p in positions}
    assert all(len(p) == 1 for p in positions)  # the pixel survives, moved, not duplicated
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in offsets)
    assert len(offsets) > 10  # per-example shifts, not one shift for the batch
    # Pixels shifted in from outside are zero: the total brightness cannot grow.
    assert shifted.sum() == images.sum()
    again = np.asarray(random_translate(jax.random.PRNGKey(0), images, max_shift=2))
    np.testing.assert_array_equal(shifted, again)


def test_translate_batch_keeps_per_shift_rows_with_the_image_they_belong_to():
    """A jittered transfer set: rows stored for every shift of an image are picked so
    that each example's kept row is the one for the shifted image it now shows."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 10, 10, 1)).astype(np.uint8)
    weights = rng.normal(size=(100, 3)).astype(np.float32) / 100

    def teacher(raw):  # any fixed function of the pixels
        return np.asarray(raw, np.float32).reshape(len(raw), -1) @ weights

    offsets = every_shift(2)
    assert offsets.shape == (shift_count(2), 2) == (25, 2)
    per_shift = np.stack([teacher(translate(images, np.tile(o, (48, 1)), 2)) for o in offsets], 1)
    np.testing.assert_allclose(per_shift[:, 12], teacher(images), rtol=1e-5)  # middle: no shift
    batch = {"images": images, "labels": np.arange(48), "teacher_logits": per_shift}
    key = jax.random.PRNGKey(3)
    out = translate_batch(key, batch, max_shift=2, per_shift=("teacher_logits",))
    # The same draws as random_translate, so plain jitter runs are unchanged by the API.
    np.testing.assert_array_equal(out["images"], random_translate(key, images, max_shift=2))
    assert out["teacher_logits"].shape == (48, 3)
    np.testing.assert_allclose(out["teacher_logits"], teacher(out["images"]), rtol=1e-4, atol=1e-4)
    assert len({tuple(row) for row in np.asarray(out["teacher_logits"]).round(3)}) == 48
    np.testing.assert_array_equal(out["labels"], batch["labels"])
    plain = translate_batch(key, batch, max_shift=2)  # no per-shift entries: rows untouched
    np.testing.assert_array_equal(plain["teacher_logits"], per_shift)
    with pytest.raises(TypeError, match="use translate_batch"):
        random_translate(key, batch)  # an image function is not a batch augment
    model = MLP(hidden_sizes=(4,))
    state = create_state(model, make_optimizer("adam"), UNIT(images[:1]), seed=0)
    step = make_train_step(model, OBJECTIVES["ce"], make_optimizer("adam"), UNIT,
                           augment=lambda key, b: b["images"])  # fmt: skip
    with pytest.raises(TypeError, match="must return the batch"):
        step(state, {"images": images, "labels": np.zeros(48, np.int32)},
             make_hyperparams(learning_rate=1e-3), {})  # fmt: skip
    with pytest.raises(ValueError, match="25 shifts"):
        translate_batch(
            key, {**batch, "teacher_logits": per_shift[:, 0]}, max_shift=2,
            per_shift=("teacher_logits",),
        )  # fmt: skip


def _split(count: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 28, 28, 1)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4, 4:24, 0] = 255
    return Split(images, labels, np.arange(count, dtype=np.int64) + 1000)


def test_a_student_distils_from_the_teacher_outputs_for_every_shift(tmp_path):
    from kdjax.data import Dataset
    from kdjax.distill.teachers import Teacher, check_stored_outputs
    from kdjax.runs import train_run
    from kdjax.runs.spec import RunSpec
    from kdjax.training import predict
    from kdjax.training.recipe import check_settings, preprocess_of

    mlp = {"model": "mlp", "model_settings": {"hidden_sizes": (200, 200)}}
    dataset = Dataset("synthetic", "test", "memory", _split(96), _split(32, seed=1), 10)
    teacher_spec = RunSpec(role="teacher", epochs=1, batch_size=32, **mlp)
    result = train_run(teacher_spec, dataset, tmp_path, log=lambda message: None)
    teacher = Teacher(teacher_spec, result.variables, result.run_dir)
    plain = teacher.outputs(dataset)["logits"]
    messages = []
    shifted = teacher.outputs(dataset, train_shifts=1, log=messages.append)["logits"]
    assert any("× 9 shifts" in m for m in messages)
    assert shifted["train"].shape == (96, shift_count(1), 10) == (96, 9, 10)
    np.testing.assert_allclose(shifted["train"][:, 4], plain["train"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(shifted["test"], plain["test"])  # tests are never shifted
    assert not np.allclose(shifted["train"][:, 0], plain["train"], atol=1e-3)
    # The stored order is the order translate_batch indexes: every kept row is the
    # teacher's output for the image the student is shown (off-diagonal shifts too).
    shown = translate_batch(
        jax.random.PRNGKey(0),
        {"images": dataset.train.images, "teacher_logits": shifted["train"]},
        max_shift=1,
        per_shift=("teacher_logits",),
    )
    direct = predict(teacher.model, teacher.variables, np.asarray(shown["images"]),
                     preprocess=preprocess_of(teacher_spec))["logits"]  # fmt: skip
    np.testing.assert_allclose(shown["teacher_logits"], direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(every_shift(1)[[1, 3]], [[0, 1], [1, 0]])
    messages.clear()
    fresh = Teacher(teacher_spec, result.variables, result.run_dir)  # no in-memory copy
    again = fresh.outputs(dataset, train_shifts=1, log=messages.append)["logits"]
    assert not any("Computing" in m for m in messages)  # read from the store
    np.testing.assert_array_equal(again["train"], shifted["train"])

    settings = dict(role="student", objective="kd", epochs=1, batch_size=32, temperature=4.0,
                    hard_weight=0.5, soft_weight=0.5, translate_pixels=1, **mlp)  # fmt: skip
    spec = RunSpec(consistent_jitter=True, **settings)
    assert spec.identity()["consistent_jitter"] is True
    assert "consistent_jitter" not in RunSpec(**settings).identity()
    student = train_run(spec, dataset, tmp_path, teacher=teacher, log=lambda message: None)
    assert np.isfinite(student.history[-1]["train_loss"][0])
    with pytest.raises(ValueError, match=r"every one of the 9 shifts"):
        check_stored_outputs(spec, {"teacher_logits": plain["train"]})
    with pytest.raises(ValueError, match="per-shift"):  # per-shift rows, plain jitter
        check_stored_outputs(RunSpec(**settings), {"teacher_logits": shifted["train"]})
    with pytest.raises(ValueError, match="consistent_jitter needs translate_pixels"):
        RunSpec(consistent_jitter=True, **{**settings, "translate_pixels": 0})
    with pytest.raises(ValueError, match="consistent_jitter needs"):
        check_settings(RunSpec(role="s", translate_pixels=1, consistent_jitter=True, **mlp))
