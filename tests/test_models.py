"""Models and the CPU-tuned layers: shapes, parameter counts, equivalence with Flax/XLA."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdjax.models import MLP, ConvNet, SmallConvNet, count_params, get_model
from kdjax.models.layers import Conv, conv1d, conv2d, general_conv2d, max_pool, strided_conv2d


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # conv1 1·9·8+8, conv2 8·9·16+16, fc1 3136·32+32, fc2 32·10+10
        (SmallConvNet(), 80 + 1168 + 100384 + 330),
        (ConvNet(), 320 + 18496 + 401536 + 1290),
        (MLP(hidden_sizes=(800, 800)), 784 * 800 + 800 + 800 * 800 + 800 + 8010),
    ],
)
def test_parameter_counts(model, expected):
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert count_params(params) == expected


def test_student_outputs_logits_and_named_features():
    outputs = SmallConvNet().apply(
        SmallConvNet().init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1))),
        jnp.ones((2, 28, 28, 1)),
    )
    chex.assert_shape(outputs["logits"], (2, 10))
    chex.assert_shape(outputs["feature_map"], (2, 14, 14, 16))
    chex.assert_shape(outputs["features"], (2, 3136))


def test_channel_dropout_drops_whole_channels_only_in_training():
    model = SmallConvNet()
    images = jnp.ones((4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), images)
    params = jax.tree.map(lambda p: jnp.abs(p) + 0.01, variables)  # all activations positive

    def dropped_fraction(train):
        # Dropout acts between feature_map and features (features = dropped, flattened map).
        outputs = model.apply(params, images, train=train, rngs={"dropout": jax.random.PRNGKey(1)})
        features = outputs["features"].reshape(4, 14, 14, 16)
        return features == 0

    zeros = dropped_fraction(train=True)
    per_channel = zeros.reshape(4, -1, 16)
    # Each (example, channel) is either entirely dropped or entirely kept.
    assert bool(jnp.all(per_channel.all(axis=1) | ~per_channel.any(axis=1)))
    assert 0.05 < float(per_channel.all(axis=1).mean()) < 0.6
    assert not bool(dropped_fraction(train=False).any())


def test_get_model_names_unknown_models():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        get_model("resnet")


@pytest.mark.parametrize("channels", [1, 3, 8])
@pytest.mark.parametrize(
    ("padding", "size"),
    [(1, (3, 3)), ("SAME", (3, 3)), ("VALID", (3, 3)), ("SAME", (5, 5)), (0, (1, 1))],
)
def test_conv_matches_flax_conv_values_and_gradients(padding, size, channels):
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, channels))
    ours, reference = Conv(5, size, padding=padding), nn.Conv(5, size, padding=padding)
    params = reference.init(jax.random.PRNGKey(1), images)
    chex.assert_trees_all_equal_shapes(params, ours.init(jax.random.PRNGKey(1), images))

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(
        jax.jit(ours.apply)(params, images), reference.apply(params, images), rtol=1e-5, atol=1e-5
    )
    ours_grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, images)
    reference_grads = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, images)
    chex.assert_trees_all_close(ours_grads, reference_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 4])
def test_conv2d_custom_gradient_against_finite_differences(channels):
    from jax.test_util import check_grads

    images = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 5, channels))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, channels, 2))
    check_grads(
        jax.jit(lambda x, k: conv2d(x, k, ((1, 1), (1, 1)))),
        (images, kernel),
        order=1,
        modes=["rev"],
        atol=2e-2,
        rtol=2e-2,
    )


@pytest.mark.parametrize(
    ("size", "padding", "stride"),
    [
        (3, ((1, 1), (1, 1)), 2),  # PyTorch's padding=1 (the CIFAR ResNets)
        (3, ((0, 1), (0, 1)), 2),  # TensorFlow's "SAME" at stride 2 (the Keras example)
        (1, ((0, 0), (0, 0)), 2),  # a projection shortcut
        (5, ((2, 1), (0, 2)), 3),
    ],
)
@pytest.mark.parametrize("height", [8, 7])
def test_strided_conv2d_matches_xla_values_and_gradients(size, padding, stride, height):
    images = jax.random.normal(jax.random.PRNGKey(0), (2, height, 9, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (size, size, 3, 4))

    _assert_matches_xla_conv(strided_conv2d, images, kernel, padding, stride)


def _assert_matches_xla_conv(conv, images, kernel, padding, stride):
    """``conv(images, kernel, padding, stride)`` equals XLA's convolution, values and
    both gradients."""

    def reference(x, k):
        return lax.conv_general_dilated(
            x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

    # Compiled as training compiles them: one program each, not op by op.
    np.testing.assert_allclose(
        jax.jit(lambda x, k: conv(x, k, padding, stride))(images, kernel),
        reference(images, kernel), rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    ours = jax.jit(jax.grad(loss(lambda x, k: conv(x, k, padding, stride)), argnums=(0, 1)))
    chex.assert_trees_all_close(
        ours(images, kernel), jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(images, kernel),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "spatial", "padding", "stride"),
    [
        (3, (2, 2), ((1, 1), (1, 1)), 1),  # ResNet50V2's conv5 at 32×32: patch matrix
        (3, (1, 1), ((1, 1), (1, 1)), 1),  # only the centre tap reads data
        (3, (4, 4), ((1, 1), (1, 1)), 2),  # a strided small map
        (3, (5, 6), ((0, 1), (1, 1)), 2),  # MobileNetV2's asymmetric "correct_pad"
        (7, (6, 5), ((3, 3), (3, 3)), 2),  # a stem on a small image
        (1, (5, 7), ((0, 0), (0, 0)), 1),  # 1×1: a matrix product
        (1, (5, 7), ((0, 0), (0, 0)), 2),
        (3, (12, 10), ((1, 1), (1, 1)), 1),  # a large map: strided_conv2d
        (3, (12, 10), ((0, 1), (0, 1)), 2),
    ],
)
def test_general_conv2d_matches_xla_values_and_gradients(size, spatial, padding, stride):
    images = jax.random.normal(jax.random.PRNGKey(0), (2, *spatial, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (size, size, 3, 4))
    _assert_matches_xla_conv(general_conv2d, images, kernel, padding, stride)


@pytest.mark.parametrize(
    ("taps", "padding", "stride", "length"),
    [
        (5, (0, 0), 1, 20),  # the BioVid pipeline's second convolution
        (5, (0, 0), 2, 20),  # its first: every position read
        (5, (0, 0), 2, 21),  # a tail the strided convolution never reads
        (9, (4, 4), 4, 23),  # the SignalCNN stem, "SAME" at stride 4
        (4, (1, 2), 3, 17),
        (1, (0, 0), 1, 6),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv1d_matches_xla_values_and_gradients(taps, padding, stride, length, channels):
    signals = jax.random.normal(jax.random.PRNGKey(0), (2, length, channels))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (taps, channels, 4))

    def reference(x, k):
        return lax.conv_general_dilated(
            x, k, (stride,), [padding], dimension_numbers=("NWC", "WIO", "NWC")
        )

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

    ours = jax.jit(lambda x, k: conv1d(x, k, padding, stride))(signals, kernel)
    assert ours.shape == (2, (length + sum(padding) - taps) // stride + 1, 4)
    np.testing.assert_allclose(ours, reference(signals, kernel), rtol=1e-5, atol=1e-5)
    ours_grads = jax.jit(jax.grad(loss(lambda x, k: conv1d(x, k, padding, stride)), argnums=(0, 1)))
    chex.assert_trees_all_close(
        ours_grads(signals, kernel),
        jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(signals, kernel),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


def test_conv1d_gradients_against_finite_differences_and_inside_lax_map():
    from jax.test_util import check_grads

    signals = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 11, 2))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 5))
    check_grads(
        jax.jit(lambda x, k: conv1d(x, k, (1, 1), 2)), (signals[0], kernel[0]), order=1,
        modes=["rev"], atol=2e-2, rtol=2e-2,
    )  # fmt: skip
    # Fold populations train their members under lax.map: the same gradients there.
    grad = jax.grad(lambda k, x: jnp.sum(jnp.sin(conv1d(x, k, (0, 0), 2))))
    mapped = jax.jit(lambda ks, xs: lax.map(lambda pair: grad(*pair), (ks, xs)))(kernel, signals)
    for member in range(3):
        np.testing.assert_allclose(
            mapped[member], grad(kernel[member], signals[member]), rtol=1e-5, atol=1e-5
        )


def test_max_pool_matches_reduce_window_pooling():
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    expected = nn.max_pool(images, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool(images), expected)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x) ** 2))(images)
    expected_grad = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(images)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)
    reference = lax.reduce_window(images, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool(images), reference)
