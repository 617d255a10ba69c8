"""Tests for kdjax.models.signal_models: the BioVid pipeline's network against PyTorch
with the same weights, hand-computed parameter counts, output shapes, dropout, and a
recipe that learns a toy task."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.models import MODELS, count_params, get_model
from kdjax.models.signal_models import (
    SIGNAL_MODELS,
    Conv1DNet,
    SignalCNN,
    get_signal_model,
    max_pool_1d,
)

LENGTH = 2816


def init(model, length=LENGTH, channels=1):
    # One compiled program: op-by-op initialisation compiles every op on its own.
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, length, channels)))


def shapes(model, length=LENGTH, channels=1):
    """Parameter shapes without computing them."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, length, channels)))


def test_the_pipeline_network_has_the_hand_computed_parameter_count():
    params = shapes(Conv1DNet())["params"]
    # conv 1→32 k5: 5·32 + 32; conv 32→64 k5: 5·32·64 + 64;
    # dense 22,336→512 (64 channels × 349 steps); dense 512→5.
    expected = {"conv1": 192, "conv2": 10_304, "fc1": 11_436_544, "fc2": 2_565}
    assert {name: count_params(params[name]) for name in expected} == expected
    assert count_params(params) == 11_449_605


def test_feature_sizes_follow_the_seeds_arithmetic():
    model = Conv1DNet()
    outputs = jax.eval_shape(model.apply, shapes(model), jnp.zeros((3, LENGTH, 1)))
    # (2816 − 5) // 2 + 1 = 1406 → pool 703 → 703 − 4 = 699 → pool 349.
    assert outputs["feature_map"].shape == (3, 349, 64)
    assert outputs["features"].shape == (3, 22_336)
    assert outputs["logits"].shape == (3, 5)


@pytest.mark.parametrize("dense_relu", [False, True])
def test_conv1d_net_equals_the_seeds_pytorch_model_with_the_same_weights(dense_relu):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    conv1 = nn.Conv1d(1, 32, kernel_size=5, stride=2)
    conv2 = nn.Conv1d(32, 64, kernel_size=5)
    fc1, fc2 = nn.Linear(22336, 512), nn.Linear(512, 5)

    def pipeline_forward(x):  # the pipeline's Conv1D_model.forward; relu3 only if asked
        x = nn.functional.max_pool1d(torch.relu(conv1(x)), 2)
        x = nn.functional.max_pool1d(torch.relu(conv2(x)), 2)
        x = fc1(x.view(x.size(0), -1))
        return fc2(torch.relu(x) if dense_relu else x)

    def conv_kernel(layer):  # torch [out, in, k] → kdjax.models.layers.Conv [k, 1, in, out]
        return jnp.asarray(layer.weight.detach().numpy().transpose(2, 1, 0)[:, None])

    def dense(layer):
        return {
            "kernel": jnp.asarray(layer.weight.detach().numpy().T),
            "bias": jnp.asarray(layer.bias.detach().numpy()),
        }

    params = {
        "conv1": {"conv": {"kernel": conv_kernel(conv1), "bias": jnp.asarray(conv1.bias.detach())}},
        "conv2": {"conv": {"kernel": conv_kernel(conv2), "bias": jnp.asarray(conv2.bias.detach())}},
        "fc1": dense(fc1),
        "fc2": dense(fc2),
    }
    signals = np.random.default_rng(0).uniform(size=(4, LENGTH, 1)).astype(np.float32)
    with torch.no_grad():
        expected = pipeline_forward(torch.from_numpy(signals.transpose(0, 2, 1))).numpy()
    model = Conv1DNet(dense_relu=dense_relu)
    logits = jax.jit(model.apply)({"params": params}, signals)["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_without_the_relu_the_seeds_head_is_one_linear_map():
    model = Conv1DNet(hidden=16)  # the pipeline's layout, a narrower hidden layer
    variables = init(model, length=256)
    params = variables["params"]
    signals = jax.random.uniform(jax.random.key(1), (2, 256, 1))
    outputs = jax.jit(model.apply)(variables, signals)
    kernel = params["fc1"]["kernel"] @ params["fc2"]["kernel"]
    bias = params["fc1"]["bias"] @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    np.testing.assert_allclose(
        outputs["logits"], outputs["features"] @ kernel + bias, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(("padding", "stride"), [("VALID", 2), ("SAME", 4), ("SAME", 1)])
def test_conv1d_layer_keeps_the_2d_layers_parameters_and_outputs(padding, stride):
    """Conv1D holds the parameters of a (k, 1) kdjax.models.layers.Conv (the layout the
    signal models' checkpoints have) and computes that convolution with every
    ``stride``-th output kept."""
    from kdjax.models.layers import Conv
    from kdjax.models.signal_models import Conv1D

    signals = jax.random.normal(jax.random.PRNGKey(0), (2, 30, 3))
    layer = Conv1D(4, 5, stride, padding)
    params = layer.init(jax.random.PRNGKey(1), signals)
    as_2d = Conv(4, (5, 1), padding=padding)
    params_2d = {"params": params["params"]["conv"]}
    chex.assert_trees_all_equal_shapes(
        params_2d, as_2d.init(jax.random.PRNGKey(1), signals[:, :, None])
    )
    expected = as_2d.apply(params_2d, signals[:, :, None])[:, ::stride, 0]
    np.testing.assert_allclose(layer.apply(params, signals), expected, rtol=1e-5, atol=1e-5)


def test_max_pool_1d_drops_the_remainder_like_pytorch():
    x = jnp.arange(7.0).reshape(1, 7, 1)
    np.testing.assert_array_equal(max_pool_1d(x)[0, :, 0], [1.0, 3.0, 5.0])


def test_signal_cnn_outputs_and_dropout():
    model = SignalCNN(num_classes=2)
    assert count_params(shapes(model, channels=3)) == 47_301 + 2 * 16 * 9 - 3 * 65
    length = 256
    variables = init(model, length=length, channels=3)
    signals = jax.random.uniform(jax.random.key(2), (5, length, 3))
    apply = jax.jit(model.apply, static_argnames="train")
    outputs = apply(variables, signals)
    assert outputs["logits"].shape == (5, 2) and outputs["features"].shape == (5, 128)
    assert outputs["feature_map"].shape == (5, length // 4 // 8, 64)
    trained = apply(variables, signals, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(trained["logits"], outputs["logits"])


def test_the_registry_builds_every_model_with_the_asked_classes():
    for name in SIGNAL_MODELS:
        model = get_signal_model(name, num_classes=2)
        outputs = jax.eval_shape(model.apply, shapes(model), jnp.zeros((1, LENGTH, 1)))
        assert outputs["logits"].shape == (1, 2)
    with pytest.raises(ValueError, match="unknown signal model"):
        get_signal_model("resnet")


def test_the_signal_models_are_entries_of_the_one_model_registry():
    assert set(SIGNAL_MODELS) <= set(MODELS)
    relu = get_model("conv1d_net_relu", num_classes=3)
    assert isinstance(relu, Conv1DNet) and relu.dense_relu and relu.num_classes == 3
    assert get_model("signal_cnn", dropout=0.0) == SignalCNN(dropout=0.0)
    assert get_signal_model("conv1d_net") == get_model("conv1d_net", num_classes=5)
    with pytest.raises(ValueError, match="does not take the settings"):
        get_model("signal_cnn", width=3)


def test_signal_cnn_learns_rising_against_flat_windows():
    """A rising ramp (a response) against noise around a level, random onsets."""
    rng = np.random.default_rng(0)
    length, count = 256, 64
    times = np.arange(length)
    onsets = rng.integers(20, 150, count)
    labels = np.arange(count) % 2
    rising = np.clip((times[None] - onsets[:, None]) / 80.0, 0.0, 1.0)
    noise = rng.uniform(size=(count, length))
    signals = np.where(labels[:, None] == 1, 0.8 * rising + 0.2 * noise, noise)[..., None]
    signals = jnp.asarray(signals, jnp.float32)
    model = SignalCNN(num_classes=2, dropout=0.0)
    params = init(model, length=length)
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(params):
            logits = model.apply(params, signals)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(40):
        params, state, loss = step(params, state)
    predictions = model.apply(params, signals)["logits"].argmax(-1)
    assert float(loss) < 0.1 and (np.asarray(predictions) == labels).mean() == 1.0
