"""The training core: the step (compile once, traced hyperparameters), evaluation,
the loop (resume, divergence, populations) and the two feeds."""

import re
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax.data import Split, normalize
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import MLP, SmallConvNet
from kdjax.training import (
    Execution,
    NonFiniteLossError,
    Plan,
    Run,
    Training,
    TrainingData,
    create_state,
    epoch_permutation,
    evaluate,
    fit,
    make_correct_counter,
    make_optimizer,
    make_train_step,
    max_norm_constraint,
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


@pytest.fixture(scope="module")
def conv_state():
    """SmallConvNet's initial Adam state (seed 0), shared by the step tests: creating it
    compiles a random draw per initializer, seconds on the CPU each time."""
    return create_state(SmallConvNet(), make_optimizer("adam"), UNIT(_split(1).images), seed=0)


def test_kd_step_compiles_once_across_hyperparameter_values(conv_state):
    model, optimizer = SmallConvNet(), make_optimizer("adam")
    split = _split(64)
    teacher_logits = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    state = conv_state
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
        state, metrics = step(state, _batch(split, 32, teacher_logits), hyperparams, {})
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
    _, metrics = step(state, _batch(split, 8, teacher_logits), hyperparams, {})
    logits = model.apply({"params": state.params}, UNIT(split.images[:8]))["logits"]
    expected = losses.kd_loss(logits, teacher_logits, split.labels[:8], temperature=3.0, alpha=0.7)
    np.testing.assert_allclose(float(metrics["loss"]), float(jnp.mean(expected)), rtol=1e-5)


def test_learning_rate_is_applied_in_the_step():
    model, optimizer = MLP(hidden_sizes=(8,)), make_optimizer("sgd", momentum=0.0)
    split = _split(4)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    step = jax.jit(make_train_step(model, OBJECTIVES["ce"], optimizer, UNIT))
    batch = _batch(split, 4)
    zero, _ = step(state, batch, make_hyperparams(learning_rate=0.0), {})
    small, _ = step(state, batch, make_hyperparams(learning_rate=0.1), {})
    large, _ = step(state, batch, make_hyperparams(learning_rate=0.2), {})
    chex.assert_trees_all_close(zero.params, state.params)
    delta_small = jax.tree.map(lambda a, b: a - b, small.params, state.params)
    delta_large = jax.tree.map(lambda a, b: a - b, large.params, state.params)
    chex.assert_trees_all_close(
        jax.tree.map(lambda d: 2 * d, delta_small), delta_large, rtol=1e-5, atol=1e-7
    )


def test_evaluate_and_population_counts_agree_with_predict():
    model = MLP(hidden_sizes=(8,))
    split = _split(25)  # not a multiple of the batch size: exercises the padding mask
    members = [model.init(jax.random.PRNGKey(k), UNIT(split.images[:1])) for k in range(3)]
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
    for strategy in ("vmap", "map", "unroll"):
        counter = make_correct_counter(model, UNIT, strategy)
        assert split_accuracy(counter, stacked, split, batch_size=10) == pytest.approx(expected)


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 1, 100))
    assert not np.array_equal(epoch_permutation(3, 1, 100), epoch_permutation(3, 2, 100))
    assert sorted(epoch_permutation(3, 1, 100)) == list(range(100))


def test_predict_pads_the_last_batch_and_keeps_order():
    model = MLP(hidden_sizes=(8,))
    split = _split(10)
    variables = model.init(jax.random.PRNGKey(0), UNIT(split.images[:1]))
    whole = predict(model, variables, split.images, preprocess=UNIT, batch_size=10)["logits"]
    chunked = predict(model, variables, split.images, preprocess=UNIT, batch_size=4)["logits"]
    assert chunked.shape == (10, 10)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


TRAINING_FIELDS = {field for field in Training.__dataclass_fields__}
EXECUTION_FIELDS = {field for field in Execution.__dataclass_fields__}
PLAN_FIELDS = {field for field in Plan.__dataclass_fields__}
# The helper's names for the fields of the data and run records.
RECORD_FIELDS = {
    "train_split": ("data", "train"),
    "test_split": ("data", "test"),
    "train_extras": ("data", "extras"),
    "run_config": ("run", "config"),
}


def _fit(tmp_path, name, epochs, **overrides):
    """``fit`` on learnable synthetic data; keyword arguments replace the defaults
    (fields of Training, Plan and Execution included)."""
    records = {
        "training": dict(
            model=SmallConvNet(),
            objective=OBJECTIVES["ce"],
            optimizer=make_optimizer("adam"),
            preprocess=UNIT,
        ),
        "data": dict(train=_split(256, seed=0), test=_split(64, seed=1)),
        "plan": dict(
            epochs=epochs,
            batch_size=32,
            seed=7,
            hyperparams=make_hyperparams(learning_rate=1e-3),
        ),
        "run": dict(
            name=name, directory=tmp_path / name, config={"test": name, "model": "small_conv_net"}
        ),
        "execution": {},
    }
    keywords = {"log": lambda message: None}
    for key, value in overrides.items():
        if key in TRAINING_FIELDS:
            records["training"][key] = value
        elif key in EXECUTION_FIELDS:
            records["execution"][key] = value
        elif key in PLAN_FIELDS:
            records["plan"][key] = value
        elif key in RECORD_FIELDS:
            record, field = RECORD_FIELDS[key]
            records[record][field] = value
        else:
            keywords[key] = value
    return fit(
        Training(**records["training"]),
        TrainingData(**records["data"]),
        Plan(**records["plan"]),
        Run(**records["run"]),
        Execution(**records["execution"]),
        **keywords,
    )


class SimulatedCrash(Exception):
    pass


def test_resume_after_crash_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    """On the device feed, the one "auto" picks when the data fit (test_feed_choice)."""
    uninterrupted = _fit(tmp_path, "straight", epochs=3, feed="device")

    def crash_after_first_epoch(epoch):
        if epoch == 1:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        _fit(tmp_path, "crashed", epochs=3, feed="device", on_epoch_end=crash_after_first_epoch)
    resumed = _fit(tmp_path, "crashed", epochs=3, feed="device")

    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_trained_now == 2
    # Exact on the CPU; XLA's GPU reductions are not bitwise reproducible run to run.
    chex.assert_trees_all_close(resumed.params, uninterrupted.params, **same_training(1e-6, 1e-6))
    same_accuracy(resumed.test_accuracy[0], uninterrupted.test_accuracy[0], 64)
    np.testing.assert_allclose(
        [e["train_loss"] for e in resumed.history],
        [e["train_loss"] for e in uninterrupted.history],
        rtol=1e-5,
    )
    # A finished run is reused, not retrained, and the model restores from disk.
    again = _fit(tmp_path, "crashed", epochs=3, feed="device")
    assert again.epochs_trained_now == 0
    assert again.test_accuracy == resumed.test_accuracy
    assert uninterrupted.test_accuracy[0] > 0.5  # the stripes are learnable


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """``(folder, result)`` of a finished one-epoch run named "finished"."""
    folder = tmp_path_factory.mktemp("finished")
    return folder, _fit(folder, "finished", epochs=1)


def test_checkpoints_restore_with_plain_orbax(finished_run):
    import orbax.checkpoint as ocp

    folder, result = finished_run
    manager = ocp.CheckpointManager((folder / "finished" / "checkpoints").absolute())
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    manager.close()
    chex.assert_trees_all_close(restored["state"]["params"], jax.device_get(result.params))


def test_a_run_directory_refuses_other_settings(finished_run):
    folder, _ = finished_run
    with pytest.raises(ValueError, match="different settings"):
        _fit(folder, "finished", epochs=1, run_config={"test": "something else"})


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


def test_test_images_of_another_size_are_refused_before_any_step(tmp_path):
    small = Split(np.zeros((8, 14, 14, 1), np.uint8), np.zeros(8, np.int32), np.arange(8))
    with pytest.raises(ValueError, match=r"test inputs of shape \(14, 14, 1\) differ"):
        _fit(tmp_path, "sizes", epochs=1, test_split=small)
    assert not (tmp_path / "sizes" / "checkpoints").exists()


POPULATION_SEEDS, POPULATION_TEMPERATURES = [0, 1, 2], [1.0, 3.0, 8.0]


def _distil(tmp_path, name, seed, temperature, **kwargs):
    """A KD run on 64 training images (teacher logits stored), tested on 32."""
    teacher_logits = np.random.default_rng(5).normal(size=(64, 10)).astype(np.float32) * 3
    return _fit(
        tmp_path,
        name,
        objective=OBJECTIVES["kd"],
        hyperparams=make_hyperparams(
            learning_rate=1e-3, temperature=temperature, hard_weight=0.5, soft_weight=0.5
        ),
        train_split=_split(64, seed=0),
        test_split=_split(32, seed=1),
        epochs=2,
        seed=seed,
        data_seed=11,
        train_extras={"teacher_logits": teacher_logits},
        **kwargs,
    )


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory):
    """Each student of the population trained alone: the reference of every strategy."""
    directory = tmp_path_factory.mktemp("separate")
    pairs = zip(POPULATION_SEEDS, POPULATION_TEMPERATURES, strict=True)
    return [
        _distil(directory, f"single{index}", seed, temperature)
        for index, (seed, temperature) in enumerate(pairs)
    ]


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_a_population_equals_separate_runs(tmp_path, separate_runs, strategy):
    """Three students (different seeds and temperatures) trained together end where
    three single runs with the same seeds, data order and hyperparameters end."""
    together = _distil(tmp_path, "population", POPULATION_SEEDS, POPULATION_TEMPERATURES,
                       population_strategy=strategy)  # fmt: skip
    assert len(together.test_accuracy) == 3
    assert len(together.history[-1]["train_loss"]) == 3
    for index, alone in enumerate(separate_runs):
        member = jax.tree.map(lambda leaf, i=index: leaf[i], together.params)
        # Summation order differs between batched and single matmuls; Adam rescales
        # near-zero gradients, so allow float32 noise well below one update (lr 1e-3).
        chex.assert_trees_all_close(member, alone.params, **same_training(1e-4, 1e-5))
        same_accuracy(together.test_accuracy[index], alone.test_accuracy[0], 32)
        np.testing.assert_allclose(
            together.history[-1]["train_loss"][index],
            alone.history[-1]["train_loss"][0],
            rtol=same_training(1e-4, 0)["rtol"],
        )


def test_max_norm_constraint_clips_only_units_above_the_limit():
    kernel = np.zeros((3, 2), np.float32)
    kernel[:, 0] = [3.0, 4.0, 0.0]  # norm 5 → scaled to 2
    kernel[:, 1] = [0.6, 0.8, 0.0]  # norm 1 → kept
    params = {"dense": {"kernel": kernel, "bias": np.full(2, 10.0, np.float32)}}
    clipped = max_norm_constraint(params, 2.0)
    np.testing.assert_allclose(clipped["dense"]["kernel"][:, 0], [1.2, 1.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["dense"]["kernel"][:, 1], kernel[:, 1])
    np.testing.assert_array_equal(clipped["dense"]["bias"], params["dense"]["bias"])


def test_a_step_with_augmentation_and_constraint_keeps_norms_and_compiles_once():
    from kdjax.data.augment import translate_batch

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
        state, _ = step(state, _batch(split, 16), make_hyperparams(learning_rate=5.0), {})
    for layer in state.params.values():
        norms = np.linalg.norm(np.asarray(layer["kernel"]), axis=0)
        assert norms.max() <= 0.5 + 1e-5


def test_cosine_decay_runs_from_one_to_zero_and_scales_the_step():
    from kdjax.training import cosine_decay

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
    full, _ = plain(state, _batch(split, 4), hyper, {})
    half, _ = halved(state, _batch(split, 4), hyper, {})
    chex.assert_trees_all_close(
        jax.tree.map(lambda a, b: 2 * (a - b), half.params, state.params),
        jax.tree.map(lambda a, b: a - b, full.params, state.params),
        rtol=1e-5,
        atol=1e-7,
    )


# --- Feeds: per-step host batches against a device-resident, scanned epoch ------------------


def _jittered_kd(seed) -> dict:
    """``_fit`` arguments of a KD run on a jittered transfer set: teacher logits stored
    per shift and picked per example."""
    from kdjax.data.augment import shift_count, translate_batch

    shape = (256, shift_count(2), 10)
    teacher_logits = np.random.default_rng(5).normal(size=shape).astype(np.float32) * 3
    return dict(
        seed=seed,
        epochs=2,
        objective=OBJECTIVES["kd"],
        hyperparams=make_hyperparams(
            learning_rate=1e-3, temperature=3.0, hard_weight=0.5, soft_weight=0.5
        ),
        train_split=_split(256, seed=0),
        train_extras={"teacher_logits": teacher_logits},
        augment=partial(translate_batch, max_shift=2, per_shift=("teacher_logits",)),
    )


def _scan_spy(monkeypatch) -> list:
    """The steps the device feed scans from now on (none on the host feed)."""
    import kdjax.training.feeds as feeds

    scanned = []
    real_scan_steps = feeds.scan_steps

    def spy(step):
        scanned.append(step)
        return real_scan_steps(step)

    monkeypatch.setattr(feeds, "scan_steps", spy)
    return scanned


@pytest.fixture(scope="module")
def host_fed(tmp_path_factory):
    """``run(seed)``: the jittered KD run fed from the host, trained once per seed."""
    folder, runs = tmp_path_factory.mktemp("host_fed"), {}

    def run(seed):
        if repr(seed) not in runs:
            with pytest.MonkeyPatch.context() as monkeypatch:
                scanned = _scan_spy(monkeypatch)
                result = _fit(folder, f"host{len(runs)}", feed="host", **_jittered_kd(seed))
            assert not scanned
            runs[repr(seed)] = result
        return runs[repr(seed)]

    return run


@pytest.mark.parametrize(
    ("seed", "steps_per_call"), [(7, None), (7, 3), ([0, 1], None)], ids=["epoch", "3", "pop"]
)
def test_the_device_feed_trains_exactly_like_the_host_feed(
    tmp_path, monkeypatch, host_fed, seed, steps_per_call
):
    """Same batches, same order, same dropout and jitter keys: the scanned,
    device-resident epoch ends where per-step host feeding ends, for single runs,
    blocks shorter than the epoch and populations, with KD extras and augmentation
    (a jittered transfer set: teacher logits stored per shift and picked per example)."""
    host = host_fed(seed)
    scanned = _scan_spy(monkeypatch)
    device = _fit(tmp_path, "device", feed="device", steps_per_call=steps_per_call,
                  **_jittered_kd(seed))  # fmt: skip
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


def test_every_feed_stops_on_a_non_finite_loss_at_the_same_step(tmp_path):
    """(The device feed's resume after a crash: test_resume_after_crash_gives_...)"""
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
    from kdjax.training import resolve_feed

    # Data-parallel runs too: every device then holds the training set (tests/test_parallel.py).
    assert resolve_feed("auto") == "device"
    assert resolve_feed("device") == "device" and resolve_feed("host") == "host"
    with pytest.raises(ValueError, match="feed must be one of"):
        resolve_feed("disk")
    with pytest.raises(ValueError, match="steps_per_call"):
        _fit(tmp_path, "zero", epochs=1, feed="device", steps_per_call=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        _fit(tmp_path, "never", epochs=1, checkpoint_every=0)


def test_checkpoint_every_saves_every_nth_and_the_last_epoch(tmp_path):
    small = _split(64)
    straight = _fit(tmp_path, "straight", epochs=4, checkpoint_every=3, train_split=small)
    assert len(straight.history) == 4
    # Epoch 3 and the last epoch were saved, epochs 1 and 2 were not.
    assert sorted(int(p.name) for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [3, 4]

    def crash_after_third_epoch(epoch):
        if epoch == 3:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        _fit(tmp_path, "crashed", epochs=4, checkpoint_every=2, train_split=small,
             on_epoch_end=crash_after_third_epoch)  # fmt: skip
    resumed = _fit(tmp_path, "crashed", epochs=4, checkpoint_every=2, train_split=small)
    assert resumed.resumed_from_epoch == 2  # epoch 3 was never saved: it is trained again
    assert len(resumed.history) == 4
    chex.assert_trees_all_close(resumed.params, straight.params, **same_training(1e-6, 1e-6))


def test_auto_feeds_from_the_host_when_the_data_would_crowd_the_device(tmp_path, monkeypatch):
    import kdjax.training.feeds as feeds

    monkeypatch.setattr(feeds, "device_memory_bytes", lambda device=None: 100_000)
    messages = []
    result = _fit(tmp_path, "crowded", epochs=1, feed="auto", log=messages.append)
    assert any("feeding from the host" in m for m in messages)
    assert len(result.history) == 1
    with pytest.raises(ValueError, match="use feed='host'"):
        _fit(tmp_path, "forced", epochs=1, feed="device")
    monkeypatch.setattr(feeds, "device_memory_bytes", lambda device=None: 10**12)
    messages.clear()
    _fit(tmp_path, "roomy", epochs=1, feed="auto", log=messages.append)
    assert not any("feeding from the host" in m for m in messages)


def test_device_memory_is_unknown_on_the_cpu():
    from kdjax.training import device_memory_bytes

    assert device_memory_bytes(jax.devices("cpu")[0]) is None


@pytest.fixture(scope="module")
def stored_conv_outputs(conv_state):
    """The initial SmallConvNet's outputs on 16 images, for every method below."""
    return predict(SmallConvNet(), {"params": conv_state.params}, _split(16).images,
                   preprocess=UNIT, output_names=("logits", "features", "feature_map"))  # fmt: skip


@pytest.mark.parametrize(
    "name", ["kd_standardized", "dkd", "dist", "at", "nst", "sp", "pkt", "rkd"]
)
def test_every_registered_method_trains_a_step_from_stored_teacher_outputs(
    name, conv_state, stored_conv_outputs
):
    """Each objective reads the teacher outputs it declares, adds its loss to the
    weighted CE, and gives a finite loss and a gradient in one compiled step."""
    from kdjax.distill.objectives import get_objective

    # SmallConvNet sows no stages: the multi-stage methods read its one map here.
    objective = get_objective(
        name, {name: {"layer": "feature_map"}} if name in ("at", "nst") else None
    )
    model, optimizer = SmallConvNet(), make_optimizer("adam")
    split = _split(16)
    state = conv_state
    # A teacher whose outputs differ from the student's: the student's own, perturbed.
    stored = stored_conv_outputs
    rng = np.random.default_rng(0)
    batch = _batch(split, 16)
    for output in objective.teacher_outputs:
        values = stored[output]
        batch[f"teacher_{output}"] = values + rng.normal(size=values.shape).astype(np.float32)
    hyper = make_hyperparams(learning_rate=1e-3, temperature=4.0, hard_weight=1.0,
                             soft_weight=1.0)  # fmt: skip
    step = jax.jit(make_train_step(model, objective, optimizer, UNIT))
    new_state, metrics = step(state, batch, hyper, {})
    assert np.isfinite(float(metrics["loss"])) and float(metrics["soft_loss"]) > 0
    assert not np.allclose(new_state.params["fc2"]["kernel"], state.params["fc2"]["kernel"])


def test_population_strategies_are_named_in_the_error():
    from kdjax.training.step import resolve_strategy

    assert resolve_strategy("unroll") == "unroll"
    with pytest.raises(ValueError, match="'auto', 'vmap', 'map' or 'unroll', got 'pmap'"):
        resolve_strategy("pmap")


def test_auto_population_strategy_follows_the_network_on_the_cpu():
    from kdjax.training.members import Members

    def stacked_params(model, shape):
        members = Members.of([0, 1])
        return members.init(model, optax.adam(1e-3), jnp.zeros((1, *shape))).params

    mlp = stacked_params(MLP(hidden_sizes=(8,)), (4, 4, 1))
    conv = stacked_params(SmallConvNet(), (28, 28, 1))
    on_cpu = jax.default_backend() == "cpu"
    assert Members.of([0, 1]).for_network(mlp).strategy == "vmap"
    assert Members.of([0, 1]).for_network(conv).strategy == ("map" if on_cpu else "vmap")
    # A chosen strategy, and a single student, are left as they are.
    assert Members.of([0, 1], "unroll").for_network(mlp).strategy == "unroll"
    assert Members.of(0).for_network(mlp).strategy == "auto"
