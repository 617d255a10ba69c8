"""What the core carries beyond parameters: BatchNorm statistics (trained, used in
evaluation, checkpointed, in populations and on a mesh) and frozen parameters."""

from functools import partial

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.data import Split, normalize
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import MLP
from kdjax.training import (
    Execution,
    Plan,
    Run,
    Training,
    TrainingData,
    create_state,
    fit,
    make_optimizer,
    make_train_step,
    max_norm_constraint,
    recompute_batch_stats,
    trainable_mask,
)
from kdjax.training.parallel import data_mesh

UNIT = partial(normalize, mean=0.0, std=1.0)


class BatchNormMLP(nn.Module):
    """Dense → BatchNorm → ReLU → dense: the smallest model with running statistics.

    No bias before the BatchNorm (as in real networks): its gradient is zero up to
    float noise, which Adam would blow up into full-size steps that differ between
    two programs of the same training.
    """

    @nn.compact
    def __call__(self, images, *, train=False):
        x = images.reshape(images.shape[0], -1)
        x = nn.Dense(16, use_bias=False, name="hidden")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        features = nn.relu(x)
        return {"logits": nn.Dense(10, name="head")(features), "features": features}


def _split(count, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 8, 8, 1)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, label % 8, :, 0] = 200 + label
    return Split(images, labels, np.arange(count, dtype=np.int64))


def _fit(tmp_path, name, *, model=None, seed=0, epochs=2, optimizer=None, execution=None,
         data_seed=0, **training):  # fmt: skip
    return fit(
        Training(
            model or BatchNormMLP(),
            OBJECTIVES["ce"],
            optimizer or make_optimizer("adam"),
            UNIT,
            **training,
        ),  # fmt: skip
        TrainingData(_split(128), _split(64, seed=1)),
        Plan(epochs, 32, seed, make_hyperparams(learning_rate=1e-2), data_seed=data_seed),
        Run(name, tmp_path / name, {"name": name}),
        execution or Execution(),
        log=lambda message: None,
    )


def test_batch_statistics_are_trained_and_used_in_evaluation(tmp_path):
    model = BatchNormMLP()
    images = UNIT(_split(4).images)
    fresh = create_state(model, make_optimizer("adam"), images[:1], seed=0)
    assert set(fresh.model_state) == {"batch_stats"}
    result = _fit(tmp_path, "bn")
    stats = result.variables["batch_stats"]["norm"]
    assert not np.allclose(stats["mean"], 0.0)  # moved from their initial values
    assert not np.allclose(stats["var"], 1.0)
    # Evaluation used the trained statistics: recomputing with them gives the
    # reported accuracy, and swapping in the initial ones changes the logits.
    test = _split(64, seed=1)
    logits = model.apply(result.variables, UNIT(test.images))["logits"]
    accuracy = float(np.mean(np.argmax(logits, -1) == test.labels))
    assert accuracy == pytest.approx(result.test_accuracy[0], abs=1e-9)
    initial = {**result.variables, "batch_stats": fresh.model_state["batch_stats"]}
    assert not np.allclose(model.apply(initial, UNIT(test.images))["logits"], logits)


class TwoNorms(nn.Module):
    """Two BatchNorm layers in a row, the second fed by the first; ``frozen_second``
    keeps the second on its running averages even in training mode."""

    frozen_second: bool = False

    @nn.compact
    def __call__(self, images, *, train=False):
        x = images.reshape(images.shape[0], -1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.999, name="first")(x)
        x = nn.Dense(5, name="hidden")(jnp.tanh(x))
        second = nn.BatchNorm(
            use_running_average=not train or self.frozen_second, momentum=0.999, name="second"
        )
        return {"logits": second(x)}


@pytest.mark.parametrize("frozen_second", [False, True])
def test_recomputed_batch_statistics_are_the_exact_moments_of_every_layer_input(frozen_second):
    model = TwoNorms(frozen_second)
    images = np.random.default_rng(0).normal(3.0, 2.0, (50, 2, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), images[:2])
    # Batches of 16: three full ones and a shorter last one, all counted.
    new = recompute_batch_stats(model, variables, images, preprocess=lambda x: x, batch_size=16)
    flat = images.reshape(50, -1).astype(np.float64)
    first = new["batch_stats"]["first"]
    np.testing.assert_allclose(first["mean"], flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(first["var"], flat.var(0), rtol=1e-4)
    # The second layer's input: the first normalised with the statistics of each
    # training batch (training mode), not with the recomputed ones.
    normalised = np.concatenate([
        (chunk - chunk.mean(0)) / np.sqrt(chunk.var(0) + 1e-5)
        for chunk in np.split(flat, [16, 32, 48])
    ])  # fmt: skip
    hidden = variables["params"]["hidden"]
    inputs = np.tanh(normalised) @ np.asarray(hidden["kernel"], np.float64) + hidden["bias"]
    second = new["batch_stats"]["second"]
    if frozen_second:
        chex.assert_trees_all_equal(second, variables["batch_stats"]["second"])
    else:
        np.testing.assert_allclose(second["mean"], inputs.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(second["var"], inputs.var(0), rtol=1e-4)
    chex.assert_trees_all_equal(new["params"], variables["params"])


def test_batch_statistics_are_checkpointed_and_a_resumed_run_matches(tmp_path):
    straight = _fit(tmp_path, "straight", epochs=3)

    class Crash(Exception):
        pass

    def crash(epoch):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):  # the same run, stopped after its first epoch
        fit(
            Training(BatchNormMLP(), OBJECTIVES["ce"], make_optimizer("adam"), UNIT),
            TrainingData(_split(128), _split(64, seed=1)),
            Plan(3, 32, 0, make_hyperparams(learning_rate=1e-2), data_seed=0),
            Run("crashed", tmp_path / "crashed", {"name": "crashed"}),
            log=lambda message: None, on_epoch_end=crash,
        )  # fmt: skip
    resumed = _fit(tmp_path, "crashed", epochs=3)
    assert resumed.resumed_from_epoch == 1
    chex.assert_trees_all_close(resumed.variables, straight.variables, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def alone_seed_1(tmp_path_factory):
    """Student 1 trained alone: the reference of every population strategy."""
    return _fit(tmp_path_factory.mktemp("alone"), "alone", seed=1)


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_a_population_keeps_one_set_of_batch_statistics_per_student(
    tmp_path, alone_seed_1, strategy
):
    together = _fit(tmp_path, f"pop-{strategy}", seed=[0, 1],
                    execution=Execution(population_strategy=strategy))  # fmt: skip
    assert together.variables["batch_stats"]["norm"]["mean"].shape == (2, 16)
    alone = alone_seed_1
    chex.assert_trees_all_close(together.member_variables(1), alone.variables, rtol=1e-4, atol=1e-5)
    assert together.test_accuracy[1] == pytest.approx(alone.test_accuracy[0], abs=1 / 64)


def test_batch_statistics_train_on_a_mesh_like_on_one_device(tmp_path):
    single = _fit(tmp_path, "single", execution=Execution(feed="host"))
    meshed = _fit(tmp_path, "meshed", execution=Execution(mesh=data_mesh()))
    chex.assert_trees_all_close(meshed.variables, single.variables, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_do_not_change_and_get_no_optimizer_state(tmp_path):
    model = MLP(hidden_sizes=(16, 16))
    frozen = ("hidden0/",)
    optimizer = make_optimizer("adam", frozen=frozen)
    sample = UNIT(_split(2).images[:1])
    state = create_state(model, optimizer, sample, seed=0)
    mask = trainable_mask(state.params, frozen)
    assert mask["hidden0"] == {"kernel": False, "bias": False}
    assert all(jax.tree.leaves(mask["hidden1"])) and all(jax.tree.leaves(mask["head"]))
    # Adam keeps two moments per trainable parameter and nothing for frozen ones.
    count = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))  # noqa: E731
    trainable = count(state.params["hidden1"]) + count(state.params["head"])
    moments = count(state.opt_state) - 1  # Adam's step counter
    assert moments == 2 * trainable

    result = _fit(tmp_path, "frozen", model=model, optimizer=optimizer, frozen=frozen,
                  constraint=partial(max_norm_constraint, max_norm=0.05))  # fmt: skip
    chex.assert_trees_all_equal(result.params["hidden0"], state.params["hidden0"])
    assert not np.allclose(result.params["head"]["kernel"], state.params["head"]["kernel"])
    # The constraint clipped the trained kernels but left the frozen one as it was.
    assert np.linalg.norm(result.params["head"]["kernel"], axis=0).max() <= 0.05 + 1e-6
    assert np.linalg.norm(state.params["hidden0"]["kernel"], axis=0).max() > 0.05


def test_online_teacher_in_the_step_equals_stored_outputs_without_augmentation():
    from kdjax.training import OnlineTeacher, predict

    teacher_model, student = BatchNormMLP(), MLP(hidden_sizes=(8,))
    split = _split(16)
    teacher_variables = teacher_model.init(jax.random.PRNGKey(1), UNIT(split.images[:1]))
    stored = predict(teacher_model, teacher_variables, split.images, preprocess=UNIT)["logits"]
    optimizer = make_optimizer("adam")
    state = create_state(student, optimizer, UNIT(split.images[:1]), seed=0)
    hyper = make_hyperparams(learning_rate=1e-3, temperature=2.0, hard_weight=0.5,
                             soft_weight=0.5)  # fmt: skip
    batch = {"images": split.images, "labels": split.labels, "ids": split.ids}
    stored_step = jax.jit(make_train_step(student, OBJECTIVES["kd"], optimizer, UNIT))
    teacher = OnlineTeacher(teacher_model, teacher_variables, UNIT)
    online_step = jax.jit(make_train_step(student, OBJECTIVES["kd"], optimizer, UNIT,
                                          teacher=teacher))  # fmt: skip
    by_store, stored_metrics = stored_step(state, {**batch, "teacher_logits": stored}, hyper, {})
    by_teacher, online_metrics = online_step(state, batch, hyper, teacher.context())
    np.testing.assert_allclose(online_metrics["loss"], stored_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(online_metrics["soft_loss"], stored_metrics["soft_loss"], rtol=1e-6)
    chex.assert_trees_all_close(by_teacher.params, by_store.params, rtol=1e-6, atol=1e-7)
    # The teacher gets no gradient: its variables are an input, never an output.
    assert set(by_teacher.params) == set(state.params)


TEACHER_PASSES = []


class CountingTeacher(nn.Module):
    """An MLP teacher that counts its forward passes as they run (not as traced)."""

    @nn.compact
    def __call__(self, images, *, train=False):
        jax.debug.callback(lambda: TEACHER_PASSES.append(1))
        return MLP(hidden_sizes=(8,))(images, train=train)


def _counting_teacher():
    """A :class:`CountingTeacher` to run in the step (initialising it counts a pass)."""
    from kdjax.training import OnlineTeacher

    teacher_model = CountingTeacher()
    teacher_variables = teacher_model.init(jax.random.PRNGKey(1), UNIT(_split(1).images))
    return OnlineTeacher(teacher_model, teacher_variables, UNIT)


def _distil_online(directory, name, teacher, seed, strategy="auto"):
    """A student distilled for one epoch from ``teacher`` in its step."""
    return fit(
        Training(MLP(hidden_sizes=(8,)), OBJECTIVES["kd"], make_optimizer("adam"), UNIT,
                 teacher=teacher),
        TrainingData(_split(128), _split(64, seed=1)),
        Plan(1, 32, seed, make_hyperparams(learning_rate=1e-2, temperature=2.0,
                                           hard_weight=0.5, soft_weight=0.5), data_seed=0),
        Run(name, directory / name, {"name": name}),
        Execution(feed="host", population_strategy=strategy),
        log=lambda message: None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def online_singles(tmp_path_factory):
    """Students 0, 1 and 2 distilled alone: the reference of every population strategy
    (a single student has no strategy)."""
    directory = tmp_path_factory.mktemp("online_singles")
    teacher = _counting_teacher()
    return [_distil_online(directory, f"single{seed}", teacher, seed) for seed in (0, 1, 2)]


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_a_population_shares_one_online_teacher_pass_per_step_and_matches_single_runs(
    tmp_path, online_singles, strategy
):
    teacher = _counting_teacher()
    TEACHER_PASSES.clear()
    population = _distil_online(tmp_path, "population", teacher, [0, 1, 2], strategy)
    assert len(TEACHER_PASSES) == 128 // 32  # one pass per step, not one per student
    for index, single in enumerate(online_singles):
        chex.assert_trees_all_close(
            population.member_variables(index)["params"], single.params, rtol=1e-5, atol=1e-6
        )


def test_an_optimizer_for_frozen_paths_is_an_optax_transformation():
    assert isinstance(make_optimizer("sgd", frozen=("x/",)), optax.GradientTransformation)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lamb")


def _events(folder):
    """Every (tag, step, value) scalar of the TensorBoard event files in ``folder``."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.append((value.tag, event.step, value.simple_value))
    return scalars


def test_tensorboard_records_every_step_loss_and_each_epoch(tmp_path):
    result = _fit(tmp_path, "board", seed=[0, 1], execution=Execution(tensorboard=True))
    scalars = _events(result.run_dir / "tensorboard")
    steps = sorted(step for tag, step, _ in scalars if tag == "train/loss")
    assert steps == list(range(1, 2 * 4 + 1))  # 2 epochs × 4 steps of 32 out of 128
    epochs = {(tag, step): value for tag, step, value in scalars if tag.startswith("epoch/")}
    assert epochs[("epoch/test_accuracy/student_1", 2)] == pytest.approx(
        result.test_accuracy[1], abs=1e-6
    )
    assert epochs[("epoch/learning_rate", 1)] == pytest.approx(1e-2)
    # The HPARAMS tab: the run's config beside its final accuracy (mean of students).
    hparams = _events(result.run_dir / "tensorboard" / "hparams")
    final = [value for tag, _, value in hparams if tag == "hparam/test_accuracy"]
    assert final == [pytest.approx(float(np.mean(result.test_accuracy)), abs=1e-6)]
    quiet = _fit(tmp_path, "quiet")
    assert not (quiet.run_dir / "tensorboard").exists()
