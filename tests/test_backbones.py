"""The Flax backbones (shapes, parameter counts, block lists) and layer freezing
(optimizer masks, BatchNorm statistics of frozen layers during training).

Numerical parity with Keras is in tests/test_pretrained.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import backbones, freezing
from kdjax.freezing import LayerSelection

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


def test_masks_labels_and_counts_follow_the_selection():
    params = {
        "conv1_conv": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.ones(4)},
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
        "outer": {"post_bn": {"scale": jnp.ones(4)}},  # nested: the key above the leaf counts
    }
    selection = LayerSelection(("head", "post_*"))
    mask = freezing.trainable_mask(params, selection)
    assert mask == {
        "conv1_conv": {"kernel": False, "bias": False},
        "head": {"kernel": True, "bias": True},
        "outer": {"post_bn": {"scale": True}},
    }
    assert freezing.trainable_labels(params, selection)["head"]["bias"] == "trainable"
    assert freezing.count_trainable(params, selection) == 4 * 2 + 2 + 4
    with pytest.raises(TypeError, match="tuple of strings"):
        LayerSelection("head")


def test_freeze_optimizer_leaves_frozen_parameters_bit_identical():
    params = {"body": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(3)}}
    optimizer = freezing.freeze_optimizer(
        optax.adamw(0.1, weight_decay=0.5), LayerSelection(("head",))
    )
    state = optimizer.init(params)
    grads = {"body": {"kernel": jnp.full(3, 2.0)}, "head": {"kernel": jnp.full(3, 2.0)}}
    for _ in range(3):
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["body"]["kernel"], jnp.ones(3))
    assert float(params["head"]["kernel"][0]) < 0.8


@pytest.mark.slow
def test_a_training_step_leaves_frozen_layers_and_their_batch_statistics_alone():
    """MobileNetV2 with only its last two blocks and head trainable: one Adam step with
    train=True moves the trainable layers' parameters and BatchNorm statistics and
    leaves every frozen layer's parameters and statistics exactly as they were."""
    trainable = backbones.trainable_last_blocks("mobilenetv2", 2)
    model = backbones.MobileNetV2(num_classes=2, trainable=trainable)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([0, 1])
    variables = jax.jit(model.init)(jax.random.key(0), images)
    optimizer = freezing.freeze_optimizer(optax.adam(1e-2), trainable)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
                outputs["logits"], labels
            )
            return cross_entropy.mean(), updates["batch_stats"]

        grads, new_stats = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats

    params, batch_stats = step(variables["params"], variables["batch_stats"], opt_state)
    for layer, stats in variables["batch_stats"].items():
        same = bool(jnp.array_equal(stats["mean"], batch_stats[layer]["mean"]))
        assert same != trainable.contains(layer), layer
    for layer, weights in variables["params"].items():
        leaf = "kernel" if "kernel" in weights else "scale"
        same = bool(jnp.array_equal(weights[leaf], params[layer][leaf]))
        assert same != trainable.contains(layer), layer
