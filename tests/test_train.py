"""The shared training loop: compile once, traced hyperparameters, resume, divergence."""

import re
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax.checkpoints import load_model
from kdjax.data import Split, normalize
from kdjax.models import MLP, StudentNet
from kdjax.train import (
    OBJECTIVES,
    NonFiniteLossError,
    create_state,
    epoch_permutation,
    evaluate,
    fit,
    make_correct_counter,
    make_hyperparams,
    make_optimizer,
    make_train_step,
    predict,
    split_accuracy,
)

UNIT = partial(normalize, mean=0.0, std=1.0)

# Two programs that compute the same training (a vmapped population and single runs,
# a scanned epoch and single steps) are fused differently. On the CPU they agree to
# float32 rounding; on a GPU reductions are also reordered (split across thread
# blocks), which was measured at up to 3e-6 absolute after a few steps on an H200.
ON_CPU = jax.default_backend() == "cpu"


def same_training(rtol: float, atol: float) -> dict:
    """Tolerances for two programs of the same training, widened off the CPU."""
    return {"rtol": rtol, "atol": atol} if ON_CPU else {"rtol": max(rtol, 1e-3), "atol": 1e-4}


def same_accuracy(ours: float, theirs: float, test_size: int) -> None:
    """Equal on the CPU; off it, a parameter wobble may flip one test example."""
    assert abs(ours - theirs) <= (0 if ON_CPU else 1.0 / test_size + 1e-9)


def _split(count: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 28, 28, 1)).astype(np.uint8)
    # Make the task learnable: a bright stripe whose row encodes the label.
    for index, label in enumerate(labels):
        images[index, 2 * label + 4, 4:24, 0] = 255
    return Split(images, labels, np.arange(count, dtype=np.int64) + 1000)


def _batch(split: Split, size: int, teacher_logits=None) -> dict:
    batch = {
        "images": split.images[:size],
        "labels": split.labels[:size],
        "ids": split.ids[:size],
    }
    if teacher_logits is not None:
        batch["teacher_logits"] = teacher_logits[:size]
    return batch


def test_kd_step_compiles_once_across_hyperparameter_values():
    model, optimizer = StudentNet(), make_optimizer("adam")
    split = _split(64)
    teacher_logits = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    step = make_train_step(model, OBJECTIVES["kd"], optimizer, UNIT)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(step, n=1))
    for temperature, alpha, learning_rate in [
        (1.0, 0.1, 1e-3),
        (3.0, 0.7, 5e-4),
        (20.0, 0.5, 1e-2),
    ]:
        hyperparams = make_hyperparams(
            learning_rate=learning_rate,
            temperature=temperature,
            hard_weight=alpha,
            soft_weight=1 - alpha,
        )
        state, metrics = step(state, _batch(split, 32, teacher_logits), hyperparams)
    assert int(state.step) == 3
    assert np.isfinite(float(metrics["loss"]))


def test_kd_step_loss_equals_kd_loss_of_the_model_outputs():
    model, optimizer = MLP(hidden_sizes=(16,)), make_optimizer("adam")
    split = _split(8)
    teacher_logits = np.random.default_rng(2).normal(size=(8, 10)).astype(np.float32) * 4
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=3)
    step = jax.jit(make_train_step(model, OBJECTIVES["kd"], optimizer, UNIT))
    hyperparams = make_hyperparams(
        learning_rate=1e-3, temperature=3.0, hard_weight=0.7, soft_weight=0.3
    )
    _, metrics = step(state, _batch(split, 8, teacher_logits), hyperparams)
    logits = model.apply({"params": state.params}, UNIT(split.images[:8]))["logits"]
    expected = losses.kd_loss(logits, teacher_logits, split.labels[:8], temperature=3.0, alpha=0.7)
    np.testing.assert_allclose(float(metrics["loss"]), float(jnp.mean(expected)), rtol=1e-5)


def test_learning_rate_is_applied_in_the_step():
    model, optimizer = MLP(hidden_sizes=(8,)), make_optimizer("sgd", momentum=0.0)
    split = _split(4)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    step = jax.jit(make_train_step(model, OBJECTIVES["ce"], optimizer, UNIT))
    batch = _batch(split, 4)
    zero, _ = step(state, batch, make_hyperparams(learning_rate=0.0))
    small, _ = step(state, batch, make_hyperparams(learning_rate=0.1))
    large, _ = step(state, batch, make_hyperparams(learning_rate=0.2))
    chex.assert_trees_all_close(zero.params, state.params)
    delta_small = jax.tree.map(lambda a, b: a - b, small.params, state.params)
    delta_large = jax.tree.map(lambda a, b: a - b, large.params, state.params)
    chex.assert_trees_all_close(
        jax.tree.map(lambda d: 2 * d, delta_small), delta_large, rtol=1e-5, atol=1e-7
    )


def test_evaluate_and_population_counts_agree_with_predict():
    model = MLP(hidden_sizes=(8,))
    split = _split(25)  # not a multiple of the batch size: exercises the padding mask
    members = [
        model.init(jax.random.PRNGKey(k), UNIT(split.images[:1]))["params"] for k in range(3)
    ]
    expected = [
        float(
            np.mean(
                np.argmax(predict(model, p, split.images, preprocess=UNIT)["logits"], -1)
                == split.labels
            )
        )
        for p in members
    ]
    assert [evaluate(model, p, split, preprocess=UNIT, batch_size=10) for p in members] == (
        pytest.approx(expected)
    )
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    for strategy in ("vmap", "map"):
        counter = make_correct_counter(model, UNIT, strategy)
        assert split_accuracy(counter, stacked, split, batch_size=10) == pytest.approx(expected)


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 1, 100))
    assert not np.array_equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 2, 100))
    assert sorted(epoch_permutation(3, 1, 100)) == list(range(100))


def test_predict_pads_the_last_batch_and_keeps_order():
    model = MLP(hidden_sizes=(8,))
    split = _split(10)
    params = model.init(jax.random.PRNGKey(0), UNIT(split.images[:1]))["params"]
    whole = predict(model, params, split.images, preprocess=UNIT, batch_size=10)["logits"]
    chunked = predict(model, params, split.images, preprocess=UNIT, batch_size=4)["logits"]
    assert chunked.shape == (10, 10)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def _fit(tmp_path, name, epochs, **overrides):
    """``fit`` on learnable synthetic data; keyword arguments replace the defaults."""
    arguments = dict(
        name=name,
        run_dir=tmp_path / name,
        run_config={"test": name, "model": "student_net"},
        model=StudentNet(),
        objective=OBJECTIVES["ce"],
        optimizer=make_optimizer("adam"),
        hyperparams=make_hyperparams(learning_rate=1e-3),
        train_split=_split(256, seed=0),
        test_split=_split(64, seed=1),
        preprocess=UNIT,
        epochs=epochs,
        batch_size=32,
        seed=7,
        log=lambda message: None,
    )
    return fit(**{**arguments, **overrides})


class SimulatedCrash(Exception):
    pass


def test_resume_after_crash_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    uninterrupted = _fit(tmp_path, "straight", epochs=3)

    def crash_after_first_epoch(epoch):
        if epoch == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        _fit(tmp_path, "crashed", epochs=3, on_epoch_end=crash_after_first_epoch)
    resumed = _fit(tmp_path, "crashed", epochs=3)

    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_trained_now == 2
    chex.assert_trees_all_close(resumed.params, uninterrupted.params, rtol=1e-6, atol=1e-6)
    assert resumed.test_accuracy == uninterrupted.test_accuracy
    assert [e["train_loss"] for e in resumed.history] == pytest.approx(
        [e["train_loss"] for e in uninterrupted.history], rel=1e-5
    )
    # A finished run is reused, not retrained, and the model restores from disk.
    again = _fit(tmp_path, "crashed", epochs=3)
    assert again.epochs_trained_now == 0
    assert again.test_accuracy == uninterrupted.test_accuracy
    assert uninterrupted.test_accuracy > 0.5  # the stripes are learnable


def test_restore_with_kdjax_and_with_plain_orbax(tmp_path):
    import orbax.checkpoint as ocp

    result = _fit(tmp_path, "restore", epochs=1)
    model, params = load_model(tmp_path / "restore")
    chex.assert_trees_all_close(params, jax.device_get(result.params))
    images = UNIT(_split(8, seed=1).images)
    logits = model.apply({"params": params}, images)["logits"]
    expected = StudentNet().apply({"params": result.params}, images)["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-6)

    manager = ocp.CheckpointManager((tmp_path / "restore" / "checkpoints").absolute())
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    manager.close()
    chex.assert_trees_all_close(restored["state"]["params"], jax.device_get(result.params))


def test_a_run_directory_refuses_other_settings(tmp_path):
    _fit(tmp_path, "settings", epochs=1)
    with pytest.raises(ValueError, match="different settings"):
        _fit(tmp_path, "settings", epochs=1, run_config={"test": "something else"})


def test_non_finite_loss_stops_the_run_and_names_the_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        _fit(
            tmp_path,
            "diverge",
            epochs=1,
            model=MLP(hidden_sizes=(8,)),
            optimizer=make_optimizer("sgd", momentum=0.0),
            hyperparams=make_hyperparams(learning_rate=1e30),
            batch_size=16,
        )


def test_batch_larger_than_the_training_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="larger than the training set"):
        _fit(tmp_path, "big", epochs=1, train_split=_split(16), batch_size=64)


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_a_population_equals_separate_runs(tmp_path, strategy):
    """Three students (different seeds and temperatures) trained together end where
    three single runs with the same seeds, data order and hyperparameters end."""
    split, test = _split(64, seed=0), _split(32, seed=1)
    teacher_logits = np.random.default_rng(5).normal(size=(64, 10)).astype(np.float32) * 3
    seeds, temperatures = [0, 1, 2], [1.0, 3.0, 8.0]

    def run(name, seed, temperature, **kwargs):
        return fit(
            name=name,
            run_dir=tmp_path / name,
            run_config={"name": name},
            model=StudentNet(),
            objective=OBJECTIVES["kd"],
            optimizer=make_optimizer("adam"),
            hyperparams=make_hyperparams(
                learning_rate=1e-3, temperature=temperature, hard_weight=0.5, soft_weight=0.5
            ),
            train_split=split,
            test_split=test,
            preprocess=UNIT,
            epochs=2,
            batch_size=32,
            seed=seed,
            data_seed=11,
            train_extras={"teacher_logits": teacher_logits},
            log=lambda message: None,
            **kwargs,
        )

    together = run("population", seeds, temperatures, population_strategy=strategy)
    assert len(together.test_accuracy) == 3
    assert len(together.history[-1]["train_loss"]) == 3
    for index, (seed, temperature) in enumerate(zip(seeds, temperatures, strict=True)):
        alone = run(f"single{index}", seed, temperature)
        member = jax.tree.map(lambda leaf, i=index: leaf[i], together.params)
        # Summation order differs between batched and single matmuls; Adam rescales
        # near-zero gradients, so allow float32 noise well below one update (lr 1e-3).
        chex.assert_trees_all_close(member, alone.params, **same_training(1e-4, 1e-5))
        same_accuracy(together.test_accuracy[index], alone.test_accuracy, len(test))
        np.testing.assert_allclose(
            together.history[-1]["train_loss"][index],
            alone.history[-1]["train_loss"],
            rtol=same_training(1e-4, 0)["rtol"],
        )


# --- Augmentation and constraints -----------------------------------------------------------


def test_random_translate_shifts_each_image_within_the_limit():
    from kdjax.train import random_translate

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
    from kdjax.train import every_shift, random_translate, shift_count, translate, translate_batch

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
             make_hyperparams(learning_rate=1e-3))  # fmt: skip
    with pytest.raises(ValueError, match="25 shifts"):
        translate_batch(
            key, {**batch, "teacher_logits": per_shift[:, 0]}, max_shift=2,
            per_shift=("teacher_logits",),
        )  # fmt: skip


def test_a_student_distils_from_the_teacher_outputs_for_every_shift(tmp_path):
    from kdjax.data import Dataset
    from kdjax.distill import RunSpec, teacher_outputs, teacher_soft_targets, train_run
    from kdjax.models import get_model
    from kdjax.train import every_shift, predict, shift_count, translate_batch

    dataset = Dataset("synthetic", "test", "memory", _split(96), _split(32, seed=1), 10)
    teacher_spec = RunSpec(role="teacher", model="mlp_200", epochs=1, batch_size=32)
    teacher = train_run(teacher_spec, dataset, tmp_path, log=lambda message: None)
    plain, fingerprint = teacher_soft_targets(teacher_spec, teacher, dataset)
    messages = []
    shifted, same = teacher_soft_targets(
        teacher_spec, teacher, dataset, train_shifts=1, log=messages.append
    )
    assert same == fingerprint and any("× 9 shifts" in m for m in messages)
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
    direct = predict(get_model("mlp_200"), teacher.params, np.asarray(shown["images"]),
                     preprocess=teacher_spec.preprocess())["logits"]  # fmt: skip
    np.testing.assert_allclose(shown["teacher_logits"], direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(every_shift(1)[[1, 3]], [[0, 1], [1, 0]])
    messages.clear()
    again, _ = teacher_outputs(teacher_spec, teacher, dataset, train_shifts=1, log=messages.append)
    assert not any("Computing" in m for m in messages)  # read from the store
    np.testing.assert_array_equal(again["logits"]["train"], shifted["train"])

    settings = dict(role="student", model="mlp_200", objective="kd", epochs=1, batch_size=32,
                    temperature=4.0, hard_weight=0.5, soft_weight=0.5,
                    translate_pixels=1)  # fmt: skip
    spec = RunSpec(consistent_jitter=True, **settings)
    assert spec.identity()["consistent_jitter"] is True
    assert "consistent_jitter" not in RunSpec(**settings).identity()
    student = train_run(
        spec, dataset, tmp_path, teacher_logits=shifted["train"],
        teacher_fingerprint=fingerprint, log=lambda message: None,
    )  # fmt: skip
    assert np.isfinite(student.history[-1]["train_loss"])
    with pytest.raises(ValueError, match=r"every one of the 9 shifts"):
        train_run(spec, dataset, tmp_path, teacher_logits=plain["train"],
                  teacher_fingerprint=fingerprint)  # fmt: skip
    with pytest.raises(ValueError, match="per-shift"):  # per-shift rows, plain jitter
        train_run(RunSpec(**settings), dataset, tmp_path, teacher_logits=shifted["train"],
                  teacher_fingerprint=fingerprint)  # fmt: skip
    with pytest.raises(ValueError, match="consistent_jitter needs translate_pixels"):
        RunSpec(consistent_jitter=True, **{**settings, "translate_pixels": 0})
    with pytest.raises(ValueError, match="consistent_jitter needs"):
        RunSpec(role="s", model="mlp_200", translate_pixels=1, consistent_jitter=True)


def test_max_norm_constraint_clips_only_units_above_the_limit():
    from kdjax.train import max_norm_constraint

    kernel = np.zeros((3, 2), np.float32)
    kernel[:, 0] = [3.0, 4.0, 0.0]  # norm 5 → scaled to 2
    kernel[:, 1] = [0.6, 0.8, 0.0]  # norm 1 → kept
    params = {"dense": {"kernel": kernel, "bias": np.full(2, 10.0, np.float32)}}
    clipped = max_norm_constraint(params, 2.0)
    np.testing.assert_allclose(clipped["dense"]["kernel"][:, 0], [1.2, 1.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["dense"]["kernel"][:, 1], kernel[:, 1])
    np.testing.assert_array_equal(clipped["dense"]["bias"], params["dense"]["bias"])


def test_a_step_with_augmentation_and_constraint_keeps_norms_and_compiles_once():
    from kdjax.train import max_norm_constraint, translate_batch

    model, optimizer = MLP(hidden_sizes=(32,)), make_optimizer("sgd", momentum=0.0)
    split = _split(16)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    step = make_train_step(
        model,
        OBJECTIVES["ce"],
        optimizer,
        UNIT,
        augment=translate_batch,
        constraint=partial(max_norm_constraint, max_norm=0.5),
    )
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(step, n=1))
    for _ in range(3):
        state, _ = step(state, _batch(split, 16), make_hyperparams(learning_rate=5.0))
    for layer in state.params.values():
        norms = np.linalg.norm(np.asarray(layer["kernel"]), axis=0)
        assert norms.max() <= 0.5 + 1e-5


def test_run_names_do_not_change_for_runs_without_the_new_regularisers():
    from kdjax.distill import RunSpec

    plain = RunSpec(role="teacher", model="mnist_cnn")
    assert "translate_pixels" not in plain.identity() and "max_norm" not in plain.identity()
    jittered = RunSpec(role="teacher", model="mnist_cnn", translate_pixels=2, max_norm=3.0)
    assert jittered.identity()["translate_pixels"] == 2
    assert jittered.identity()["max_norm"] == 3.0
    with pytest.raises(ValueError, match="max_norm"):
        RunSpec(role="teacher", model="mnist_cnn", max_norm=0.0)


def test_cosine_decay_runs_from_one_to_zero_and_scales_the_step():
    from kdjax.train import cosine_decay

    factor = cosine_decay(10)
    values = [float(factor(jnp.asarray(step))) for step in (0, 5, 10, 20)]
    np.testing.assert_allclose(values, [1.0, 0.5, 0.0, 0.0], atol=1e-6)

    model, optimizer = MLP(hidden_sizes=(8,)), make_optimizer("sgd", momentum=0.0)
    split = _split(4)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    hyper = make_hyperparams(learning_rate=0.1)
    plain = jax.jit(make_train_step(model, OBJECTIVES["ce"], optimizer, UNIT))
    halved = jax.jit(
        make_train_step(model, OBJECTIVES["ce"], optimizer, UNIT, schedule=lambda step: 0.5)
    )
    full, _ = plain(state, _batch(split, 4), hyper)
    half, _ = halved(state, _batch(split, 4), hyper)
    chex.assert_trees_all_close(
        jax.tree.map(lambda a, b: 2 * (a - b), half.params, state.params),
        jax.tree.map(lambda a, b: a - b, full.params, state.params),
        rtol=1e-5,
        atol=1e-7,
    )


def test_a_decaying_schedule_puts_the_epoch_count_in_the_run_name():
    from kdjax.distill import RunSpec

    constant = RunSpec(role="s", model="mlp_200", epochs=3)
    assert "epochs" not in constant.identity() and "lr_schedule" not in constant.identity()
    assert constant.schedule(1000) is None
    cosine = RunSpec(role="s", model="mlp_200", epochs=3, lr_schedule="cosine")
    assert cosine.identity()["epochs"] == 3
    longer = RunSpec(role="s", model="mlp_200", epochs=4, lr_schedule="cosine")
    assert longer.identity() != cosine.identity()
    factor = cosine.schedule(1280)  # 3 epochs × 10 steps of 128
    assert float(factor(jnp.asarray(30))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        RunSpec(role="s", model="mlp_200", lr_schedule="linear")


def test_a_run_directory_accepts_its_own_settings_with_tuples(tmp_path):
    from kdjax.checkpoints import write_config

    config = {"input_mean": (0.485, 0.456, 0.406), "seed": (1, 2), "name": "x"}
    write_config(tmp_path, config)
    write_config(tmp_path, dict(config))  # tuples are stored as JSON lists: still the same
    with pytest.raises(ValueError, match=r"different settings \(seed\)"):
        write_config(tmp_path, {**config, "seed": (1, 3)})


# --- Feeds: per-step host batches against a device-resident, scanned epoch ------------------


@pytest.mark.parametrize(
    ("seed", "steps_per_call"), [(7, None), (7, 3), ([0, 1], None)], ids=["epoch", "3", "pop"]
)
def test_the_device_feed_trains_exactly_like_the_host_feed(
    tmp_path, monkeypatch, seed, steps_per_call
):
    """Same batches, same order, same dropout and jitter keys: the scanned,
    device-resident epoch ends where per-step host feeding ends, for single runs,
    blocks shorter than the epoch and populations, with KD extras and augmentation
    (a jittered transfer set: teacher logits stored per shift and picked per example)."""
    from kdjax.train import shift_count, translate_batch

    split = _split(256, seed=0)
    shape = (256, shift_count(2), 10)
    teacher_logits = np.random.default_rng(5).normal(size=shape).astype(np.float32) * 3
    common = dict(
        seed=seed,
        epochs=2,
        objective=OBJECTIVES["kd"],
        hyperparams=make_hyperparams(
            learning_rate=1e-3, temperature=3.0, hard_weight=0.5, soft_weight=0.5
        ),
        train_split=split,
        train_extras={"teacher_logits": teacher_logits},
        augment=partial(translate_batch, max_shift=2, per_shift=("teacher_logits",)),
    )
    import kdjax.train as train

    scanned = []
    real_scan_steps = train.scan_steps

    def spy(step):
        scanned.append(step)
        return real_scan_steps(step)

    monkeypatch.setattr(train, "scan_steps", spy)
    host = _fit(tmp_path, "host", feed="host", **common)
    assert not scanned
    device = _fit(tmp_path, "device", feed="device", steps_per_call=steps_per_call, **common)
    assert len(scanned) == 1  # the device path ran
    chex.assert_trees_all_close(device.params, host.params, **same_training(1e-5, 1e-6))
    np.testing.assert_allclose(
        device.test_accuracy, host.test_accuracy, atol=0 if ON_CPU else 1 / 64
    )
    for ours, theirs in zip(device.history, host.history, strict=True):
        np.testing.assert_allclose(
            ours["train_loss"], theirs["train_loss"], **same_training(1e-5, 0)
        )
        np.testing.assert_allclose(
            ours["train_accuracy"], theirs["train_accuracy"], **same_training(1e-6, 0)
        )
    assert device.compile_seconds is not None and device.compile_seconds > 0


def test_the_device_feed_resumes_and_stops_on_a_non_finite_loss(tmp_path):
    straight = _fit(tmp_path, "straight", epochs=2, feed="device")

    def crash_after_first_epoch(epoch):
        if epoch == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        _fit(tmp_path, "crashed", epochs=2, feed="device", on_epoch_end=crash_after_first_epoch)
    resumed = _fit(tmp_path, "crashed", epochs=2, feed="device")
    assert resumed.resumed_from_epoch == 1
    # Exact on the CPU. On an H200 this differed beyond 1e-6 (XLA's GPU reductions
    # are not bitwise reproducible from run to run unless made deterministic).
    chex.assert_trees_all_close(resumed.params, straight.params, **same_training(1e-6, 1e-6))

    diverging = dict(
        epochs=1,
        model=MLP(hidden_sizes=(8,)),
        optimizer=make_optimizer("sgd", momentum=0.0),
        hyperparams=make_hyperparams(learning_rate=1e30),
        batch_size=16,
    )
    steps = []
    for feed, steps_per_call in (("host", None), ("device", 4), ("device", 5)):
        with pytest.raises(NonFiniteLossError, match=r"at step \d+") as error:
            _fit(tmp_path, f"diverge-{feed}-{steps_per_call}", feed=feed,
                 steps_per_call=steps_per_call, **diverging)  # fmt: skip
        steps.append(int(re.search(r"at step (\d+)", str(error.value)).group(1)))
    # Every feed and block length names the same first bad step.
    assert len(set(steps)) == 1 and steps[0] >= 1, steps


def test_feed_choice_and_bad_arguments(tmp_path):
    from kdjax.parallel import data_mesh
    from kdjax.train import resolve_feed

    assert resolve_feed("auto") == "device"
    assert resolve_feed("auto", data_mesh()) == "host"
    assert resolve_feed("device") == "device"
    with pytest.raises(ValueError, match="feed must be one of"):
        resolve_feed("disk")
    with pytest.raises(ValueError, match="use feed='host'"):
        resolve_feed("device", data_mesh())
    with pytest.raises(ValueError, match="steps_per_call"):
        _fit(tmp_path, "zero", epochs=1, feed="device", steps_per_call=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        _fit(tmp_path, "never", epochs=1, checkpoint_every=0)


def test_checkpoint_every_saves_every_nth_and_the_last_epoch(tmp_path):
    small = _split(64)
    result = _fit(tmp_path, "sparse", epochs=3, checkpoint_every=2, train_split=small)
    assert len(result.history) == 3
    # Epoch 2 and the last epoch were saved, epoch 1 was not.
    assert sorted(int(p.name) for p in (tmp_path / "sparse" / "checkpoints").iterdir()) == [2, 3]

    def crash_after_third_epoch(epoch):
        if epoch == 3:
            raise SimulatedCrash

    straight = _fit(tmp_path, "straight", epochs=4, train_split=small)
    with pytest.raises(SimulatedCrash):
        _fit(tmp_path, "crashed", epochs=4, checkpoint_every=2, train_split=small,
             on_epoch_end=crash_after_third_epoch)  # fmt: skip
    resumed = _fit(tmp_path, "crashed", epochs=4, checkpoint_every=2, train_split=small)
    assert resumed.resumed_from_epoch == 2  # epoch 3 was never saved: it is trained again
    assert len(resumed.history) == 4
    chex.assert_trees_all_close(resumed.params, straight.params, **same_training(1e-6, 1e-6))


def test_auto_feeds_from_the_host_when_the_data_would_crowd_the_device(tmp_path, monkeypatch):
    import kdjax.train as train

    monkeypatch.setattr(train, "device_memory_bytes", lambda device=None: 100_000)
    messages = []
    result = _fit(tmp_path, "crowded", epochs=1, feed="auto", log=messages.append)
    assert any("feeding from the host" in m for m in messages)
    assert len(result.history) == 1
    with pytest.raises(ValueError, match="use feed='host'"):
        _fit(tmp_path, "forced", epochs=1, feed="device")
    monkeypatch.setattr(train, "device_memory_bytes", lambda device=None: 10**12)
    messages.clear()
    _fit(tmp_path, "roomy", epochs=1, feed="auto", log=messages.append)
    assert not any("feeding from the host" in m for m in messages)


def test_device_memory_is_unknown_on_the_cpu():
    from kdjax.train import device_memory_bytes

    assert device_memory_bytes(jax.devices("cpu")[0]) is None
