"""Tests for kdjax.models.connectors: shapes, the maths of each module against direct
computations, and that a loss's gradient reaches the connector's parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import crd_loss, hint_loss, init_crd_bank, vid_loss
from kdjax.models.connectors import ConvConnector, EmbedHead, LinearConnector, VIDRegressor
from kdjax.models.layers import Conv

KEY = jax.random.key(0)
MAP = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_connector_is_the_fitnets_regressor(kernel_size):
    connector = ConvConnector(32, kernel_size=kernel_size)
    params = connector.init(KEY, MAP)
    out = connector.apply(params, MAP)
    assert out.shape == (2, 8, 8, 32)
    inner = params["params"]["conv"]
    assert inner["kernel"].shape == (kernel_size, kernel_size, 16, 32)
    # The same parameters in a plain Conv (the CIFAR hint student's regressor layer).
    want = Conv(32, (kernel_size, kernel_size), padding="SAME").apply({"params": inner}, MAP)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    if kernel_size == 1:  # a 1×1 convolution is a matmul over channels
        manual = MAP @ inner["kernel"][0, 0] + inner["bias"]
        np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-5)


def test_conv_connector_refuses_flat_input():
    with pytest.raises(ValueError, match="NHWC"):
        ConvConnector(4).init(KEY, jnp.zeros((2, 16)))


def test_linear_connector_and_embed_head():
    features = MAP[:, :2, :2, :]  # flattened to 64
    linear = LinearConnector(10)
    params = linear.init(KEY, features)
    out = linear.apply(params, features)
    p = params["params"]["linear"]
    np.testing.assert_allclose(
        out, features.reshape(2, -1) @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-5
    )
    head = EmbedHead(8)
    head_params = head.init(KEY, features)
    embedding = head.apply(head_params, features)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-6)
    zero = head.apply(jax.tree.map(jnp.zeros_like, head_params), features)
    assert np.all(np.isfinite(zero)) and np.all(zero == 0)


def test_vid_regressor_starts_at_the_initial_variance_and_maps_channels():
    regressor = VIDRegressor(12, hidden=6, init_variance=5.0)
    params = regressor.init(KEY, MAP)
    mean, log_scale = regressor.apply(params, MAP)
    assert mean.shape == (2, 8, 8, 12) and log_scale.shape == (12,)
    np.testing.assert_allclose(jax.nn.softplus(log_scale) + 1e-5, 5.0, rtol=1e-6)
    p = params["params"]
    manual = jax.nn.relu(jax.nn.relu(MAP @ p["conv0"]) @ p["conv1"]) @ p["conv2"]
    np.testing.assert_allclose(mean, manual, rtol=1e-5, atol=1e-5)
    flat_mean, _ = regressor.apply(params, MAP[:, 0, 0, :])  # [batch, C] vectors work too
    np.testing.assert_allclose(flat_mean, manual[:, 0, 0, :], rtol=1e-5, atol=1e-5)


def test_losses_train_their_connectors_under_jit():
    student_map = MAP[:, :4, :4, :]
    teacher_map = jax.random.normal(jax.random.key(2), (2, 4, 4, 12))
    hint, vid, embed = ConvConnector(12), VIDRegressor(12), EmbedHead(4)
    # Jitted inits: one compile each instead of one per eager op.
    params = {
        "hint": jax.jit(hint.init)(KEY, student_map),
        "vid": jax.jit(vid.init)(KEY, student_map),
        "student_head": jax.jit(embed.init)(KEY, student_map),
        "teacher_head": jax.jit(embed.init)(jax.random.key(3), teacher_map),
    }
    bank = init_crd_bank(10, 4, KEY)

    def objective(params):
        hint_term = jnp.mean(hint_loss(hint.apply(params["hint"], student_map), teacher_map))
        mean, log_scale = vid.apply(params["vid"], student_map)
        vid_term = jnp.mean(vid_loss(mean, teacher_map, log_scale))
        s_emb = embed.apply(params["student_head"], student_map)
        t_emb = embed.apply(params["teacher_head"], teacher_map)
        crd_term, _ = crd_loss(s_emb, t_emb, jnp.array([1, 2]), bank, KEY, num_negatives=5)
        return hint_term + vid_term + crd_term

    grads = jax.jit(jax.grad(objective))(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(leaf)), path
        assert np.any(leaf != 0), path
