"""The Flax backbones (shapes, parameter counts, block lists) and layer freezing
(the core's frozen patterns from a selection, BatchNorm statistics of frozen layers
during training).

Numerical parity with Keras is in tests/test_pretrained.py."""

import re

import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.distill.objectives import get_objective, make_hyperparams
from kdjax.models import backbones, freezing
from kdjax.models.backbones import keras_preprocess
from kdjax.models.freezing import LayerSelection
from kdjax.training import create_state, make_optimizer, make_train_step, trainable_mask

NAMES = sorted(backbones.BACKBONES)
FEATURES = {"resnet50v2": 2048, "mobilenetv2": 1280}
NOTOP_PARAMS = {"resnet50v2": 23_564_800, "mobilenetv2": 2_257_984}


def _shapes(name, size=32, **kwargs):
    model = backbones.backbone(name, **kwargs)
    images = jnp.zeros((2, *size, 3) if isinstance(size, tuple) else (2, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    return variables, jax.eval_shape(model.apply, variables, images)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_keras_counts_plus_the_head(name):
    variables, _ = _shapes(name, num_classes=3)
    total = sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables))
    assert total == NOTOP_PARAMS[name] + FEATURES[name] * 3 + 3
    assert f"{NOTOP_PARAMS[name]:,}" in backbones.BACKBONES[name].__doc__


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("size", "map_size"), [(32, (1, 1)), ((33, 64), (2, 2)), (224, (7, 7))])
def test_outputs_for_any_input_size_from_32(name, size, map_size):
    _, outputs = _shapes(name, size)
    assert outputs["logits"].shape == (2, 2)
    assert outputs["features"].shape == (2, FEATURES[name])
    assert outputs["feature_map"].shape == (2, *map_size, FEATURES[name])


def test_keras_preprocess_maps_0_255_to_minus_1_1():
    pixels = jnp.array([0, 51, 127.5, 255])
    np.testing.assert_allclose(backbones.keras_preprocess(pixels), pixels / 127.5 - 1)
    assert backbones.keras_preprocess(jnp.array([255], jnp.uint8)).dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_but_the_head_is_in_exactly_one_block(name):
    variables, _ = _shapes(name)
    layers = set(variables["params"]) - {"head"}
    for layer in layers:
        owners = [
            index
            for index, block in enumerate(backbones.BLOCKS[name])
            if LayerSelection(block).contains(layer)
        ]
        assert len(owners) == 1, (layer, owners)
    expected = {"resnet50v2": 1 + 16 + 1, "mobilenetv2": 1 + 17 + 1}[name]
    assert len(backbones.BLOCKS[name]) == expected


def test_trainable_last_blocks():
    selection = backbones.trainable_last_blocks("resnet50v2", 2)
    for layer in ("head", "post_bn", "conv5_block3_2_conv", "conv5_block3_preact_bn"):
        assert selection.contains(layer)
    for layer in ("conv5_block2_3_conv", "conv1_conv", "conv2_block3_1_bn"):
        assert not selection.contains(layer)
    mobile = backbones.trainable_last_blocks("mobilenetv2", 2)
    assert mobile.contains("block_16_project_BN") and mobile.contains("Conv_1_bn")
    assert not mobile.contains("block_15_expand") and not mobile.contains("block_1_expand")
    head_only = backbones.trainable_last_blocks("mobilenetv2", 0)
    assert head_only.contains("head") and not head_only.contains("Conv_1")
    with pytest.raises(ValueError, match=r"count must be in \[0, 19\]"):
        backbones.trainable_last_blocks("mobilenetv2", 20)


def test_frozen_patterns_freeze_exactly_the_layers_outside_the_selection():
    params = {
        "conv1_conv": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.ones(4)},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
        "post_bnx": {"scale": jnp.ones(3)},  # "post_bn" must not match a longer name
        "outer": {"post_bn": {"scale": jnp.ones(4)}},  # nested: the key above the leaf counts
        "head_extra": {"post_bn_ish": {"kernel": jnp.ones(5)}},  # a selected name above it
    }
    selection = LayerSelection(("head", "post_bn"))
    mask = trainable_mask(params, freezing.frozen_patterns(selection))
    # The reference: the selection's own fnmatch test of the key above each leaf.
    expected = jax.tree_util.tree_map_with_path(
        lambda path, _: selection.contains(path[-2].key), params
    )
    assert mask == expected
    assert mask["outer"]["post_bn"]["scale"] and not mask["post_bnx"]["scale"]
    assert freezing.count_trainable(params, selection) == 4 * 2 + 2 + 4
    assert freezing.count_trainable(params, selection.patterns) == 4 * 2 + 2 + 4
    assert freezing.frozen_patterns(freezing.ALL_LAYERS) == ()
    with pytest.raises(TypeError, match="tuple of strings"):
        LayerSelection("head")


def test_wildcards_in_a_pattern_stay_inside_the_layer_name():
    selection = LayerSelection(("conv5_*", "block_1?_*"))
    (pattern,) = freezing.frozen_patterns(selection)
    for path, trainable in [
        ("conv5_block3_1_conv/kernel", True),
        ("conv5_/kernel", True),
        ("conv4_block6_1_conv/kernel", False),
        ("conv5_block1_1_conv", False),  # a leaf without a layer above it
        ("backbone/conv5_block1_1_conv/kernel", True),
        ("conv5_x/inner/kernel", False),  # the layer is "inner"
        ("block_16_expand/kernel", True),
        ("block_1_expand/kernel", False),
    ]:
        assert (re.match(pattern, path) is None) == trainable, path


def test_the_core_optimizer_leaves_frozen_parameters_bit_identical_without_state():
    params = {"body": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(3)}}
    optimizer = make_optimizer("adam", frozen=freezing.frozen_patterns(("head",)))
    state = optimizer.init(params)
    moments = [leaf.shape for leaf in jax.tree_util.tree_leaves(state) if leaf.ndim]
    assert moments == [(3,), (3,)]  # Adam's mu and nu for the head only
    grads = {"body": {"kernel": jnp.full(3, 2.0)}, "head": {"kernel": jnp.full(3, 2.0)}}
    for _ in range(3):
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -0.1 * u, updates))
    np.testing.assert_array_equal(params["body"]["kernel"], jnp.ones(3))
    assert float(params["head"]["kernel"][0]) < 0.8


@pytest.mark.slow
def test_a_training_step_leaves_frozen_layers_and_their_batch_statistics_alone():
    """MobileNetV2 with only its last two blocks and head trainable, trained by the
    core's step (frozen patterns from the same selection): one Adam step with
    train=True moves the trainable layers' parameters and BatchNorm statistics and
    leaves every frozen layer's parameters and statistics exactly as they were; the
    frozen layers get no optimizer state."""
    selection = backbones.trainable_last_blocks("mobilenetv2", 2)
    model = backbones.MobileNetV2(num_classes=2, trainable=selection.patterns)
    frozen = freezing.frozen_patterns(selection)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), maxval=255.0)
    batch = {"images": images, "labels": jnp.array([0, 1]), "ids": jnp.arange(2)}
    optimizer = make_optimizer("adam", frozen=frozen)
    state = create_state(model, optimizer, keras_preprocess(images), seed=0)
    step = make_train_step(model, get_objective("ce"), optimizer, keras_preprocess)
    new, _ = jax.jit(step)(state, batch, make_hyperparams(learning_rate=1e-2), {})
    old_stats, new_stats = state.model_state["batch_stats"], new.model_state["batch_stats"]
    for layer, stats in old_stats.items():
        same = bool(jnp.array_equal(stats["mean"], new_stats[layer]["mean"]))
        assert same != selection.contains(layer), layer
    for layer, weights in state.params.items():
        leaf = "kernel" if "kernel" in weights else "scale"
        same = bool(jnp.array_equal(weights[leaf], new.params[layer][leaf]))
        assert same != selection.contains(layer), layer
    trainable_size = freezing.count_trainable(state.params, selection)
    moment_sizes = sum(leaf.size for leaf in jax.tree_util.tree_leaves(new.opt_state))
    assert moment_sizes == 2 * trainable_size + 1  # mu, nu and Adam's step count


@pytest.mark.parametrize(
    "size, stride, padding", [(8, 1, "SAME"), (9, 2, "VALID"), (10, 2, "VALID")]
)
def test_depthwise_conv_is_the_grouped_convolution_with_the_same_kernel(size, stride, padding):
    """The shifted multiply-adds equal XLA's grouped convolution: same initial kernel,
    outputs and gradients (odd and even sizes, strides 1 and 2)."""
    images = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    layer = backbones.DepthwiseConv3x3(stride, padding)
    reference = flax.linen.Conv(
        5, (3, 3), strides=stride, padding=1 if padding == "SAME" else "VALID",
        use_bias=False, feature_group_count=5,
        kernel_init=flax.linen.initializers.glorot_uniform(),
    )  # fmt: skip
    variables = layer.init(jax.random.key(1), images)
    np.testing.assert_array_equal(
        variables["params"]["kernel"], reference.init(jax.random.key(1), images)["params"]["kernel"]
    )

    def loss(module, variables, images):
        return jnp.sum(jnp.sin(module.apply(variables, images)))

    for argnums in (1, 2):
        mine = jax.grad(loss, argnums)(layer, variables, images)
        theirs = jax.grad(loss, argnums)(reference, variables, images)
        chex.assert_trees_all_close(mine, theirs, atol=1e-5)
    np.testing.assert_allclose(
        layer.apply(variables, images), reference.apply(variables, images), atol=1e-5
    )


@pytest.mark.parametrize(
    ("name", "convolutions"),
    # ResNet50V2: the stem, 3 per bottleneck block (16), a projection shortcut per stage
    # (4). MobileNetV2: Conv1, 16 expansions, 17 projections, Conv_1.
    [("resnet50v2", 1 + 3 * 16 + 4), ("mobilenetv2", 1 + 16 + 17 + 1)],
)
def test_the_convolution_benchmark_finds_every_convolution_layer(name, convolutions):
    from benchmarks.backbone_convs import MODELS, layer_shapes

    shapes = layer_shapes(MODELS[name](), jnp.zeros((2, 32, 32, 3)))
    assert sum(shapes.values()) == convolutions
    # At 32×32 the last maps are 1×1: ResNet50V2's conv5 3×3 layers see one pixel.
    if name == "resnet50v2":
        assert shapes[((2, 1, 1, 512), 512, 3, 1, ((1, 1), (1, 1)))] == 3


def test_the_speed_benchmark_keeps_each_cases_fastest_repeat():
    from benchmarks.backbone_speed import _fastest

    def run(matmul, **steps):
        cases = {
            case: {"step_seconds": seconds, "parameters": 7} for case, seconds in steps.items()
        }
        return {"matmul_gflops": matmul, "cases": cases}

    first, second = run(100.0, a=2.0, b=1.0), run(120.0, a=1.5, b=3.0)
    fastest = _fastest([first, second])
    assert fastest["matmul_gflops"] == 120.0
    assert fastest["cases"]["a"] == {"step_seconds": 1.5, "step_seconds_each": [2.0, 1.5],
                                     "parameters": 7}  # fmt: skip
    assert fastest["cases"]["b"]["step_seconds"] == 1.0
    assert first["cases"]["a"]["step_seconds"] == 2.0  # the repeats themselves unchanged
