"""The Keras knowledge-distillation example: its networks against Keras itself (same
weights, same logits), its Distiller loss against kdjax's ``kd`` objective, and the
command end to end on tiny data."""

import os

import jax
import numpy as np
import pytest

from experiments import keras_mnist_kd
from kdjax.distill.objectives import OBJECTIVES, alpha_weights, make_hyperparams
from kdjax.models import count_params, get_model
from kdjax.runs.statistics import SPREAD_RULE

IMAGES = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def keras():
    os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported earlier with another backend")
    return keras


def _keras_model(keras, channels):
    """The example's Sequential network, as the example writes it."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(channels[0], (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(channels[1], (3, 3), strides=(2, 2), padding="same"),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )


@pytest.mark.parametrize(("channels", "parameters"), [((256, 512), 1_433_610), ((16, 32), 20_490)])
def test_the_networks_compute_what_keras_computes(keras, channels, parameters):
    reference = _keras_model(keras, channels)
    assert reference.count_params() == parameters
    model = get_model("strided_conv_net", channels=channels)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), IMAGES[:1])
    assert count_params(variables["params"]) == parameters
    conv1, conv2, dense = (reference.layers[i] for i in (0, 3, 5))
    params = variables["params"]
    conv1.set_weights([np.asarray(params["conv1"]["kernel"]), np.asarray(params["conv1"]["bias"])])
    conv2.set_weights([np.asarray(params["conv2"]["kernel"]), np.asarray(params["conv2"]["bias"])])
    dense.set_weights([np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])])
    expected = np.asarray(reference(IMAGES))
    outputs = jax.jit(model.apply)(variables, IMAGES)
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-4, atol=1e-4)
    assert outputs["feature_map"].shape == (3, 7, 7, channels[1])


def test_the_distiller_loss_is_kd_with_hard_weight_alpha(keras):
    """The example's ``compute_loss``, in Keras ops, against kdjax's ``kd`` objective."""
    ops = keras.ops
    rng = np.random.default_rng(1)
    student = rng.normal(0, 3, (8, 10)).astype(np.float32)
    teacher = rng.normal(0, 3, (8, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    alpha, temperature = 0.1, 10.0
    student_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, student)
    distillation_loss = keras.losses.KLDivergence()(
        ops.softmax(teacher / temperature, axis=1), ops.softmax(student / temperature, axis=1)
    ) * (temperature**2)
    expected = alpha * student_loss + (1 - alpha) * distillation_loss
    hyperparams = make_hyperparams(
        learning_rate=1e-3, temperature=temperature, **alpha_weights(alpha)
    )
    batch = {"labels": labels, "teacher_logits": teacher}
    per_example, _ = OBJECTIVES["kd"]({"logits": student}, batch, hyperparams)
    np.testing.assert_allclose(float(np.mean(per_example)), float(expected), rtol=1e-5)


def test_the_command_trains_both_arms_over_seeds_with_an_online_teacher(tmp_path):
    from test_experiments import check_schema, write_tiny_mnist

    data_dir = write_tiny_mnist(tmp_path / "mnist")
    config = keras_mnist_kd.Config(
        data_dir=str(data_dir), workdir=str(tmp_path / "work"), epochs=1, teacher_epochs=1,
        seeds=2, tensorboard=False,
    )  # fmt: skip
    results = keras_mnist_kd.run(config)
    check_schema(results, "keras_mnist_kd", ["teacher", "student_scratch", "student_kd"])
    runs, study = results["runs"], results["study"]
    assert (
        runs["teacher"]["parameters"] == 1_433_610
        and runs["student_scratch"]["parameters"] == 20_490
    )
    kd = runs["student_kd"]["spec"]
    assert kd["teacher_mode"] == "online" and kd["objective"] == "kd"
    assert (kd["temperature"], kd["hard_weight"], kd["soft_weight"]) == (10.0, 0.1, 0.9)
    assert kd["batch_size"] == 32
    assert not {"input_mean", "input_std", "input_scale"} & set(kd)  # defaults: x / 255
    assert runs["student_kd"]["seeds"] == runs["student_scratch"]["seeds"] == [0, 1]
    assert [row["published"] for row in study["comparison"]] == [97.6, 97.6, 98.1]
    assert set(study["gains_over_scratch"]) == {"student_kd"}
    assert study["spread_rule"] == SPREAD_RULE
    for name in ("comparison.png", "learning_curves.png"):
        assert (tmp_path / "work" / name).stat().st_size > 0
