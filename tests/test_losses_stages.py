"""How the multi-stage losses combine stages, and the new losses' own properties, without
torch: AT, NST, VID and AB on one map or a list of maps, FSP's consecutive pairs, VID's
pooling, FT's and RepDistiller CC's ``|·|`` gradient at 0, DKD's warm-up, and the
argument errors. (Values and gradients against PyTorch: ``test_losses_parity.py``.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_cases import rng_for

from kdjax.losses import (
    activation_boundary_loss,
    attention_transfer_loss,
    factor_transfer_loss,
    fsp_loss,
    linear_warmup,
    nst_loss,
    repdistiller_correlation_loss,
    vid_loss,
)


def _maps(name, *shapes):
    rng = rng_for("stages", name)
    return [np.abs(rng.standard_normal(shape)).astype(np.float32) for shape in shapes]


_STUDENT = _maps("student", (2, 8, 8, 3), (2, 4, 4, 5))
_TEACHER = _maps("teacher", (2, 8, 8, 6), (2, 2, 2, 7))


@pytest.mark.parametrize("loss", [attention_transfer_loss, nst_loss])
def test_map_losses_sum_their_stages_and_one_map_is_one_stage(loss):
    loss = jax.jit(loss)
    first = loss(_STUDENT[0], _TEACHER[0])
    second = loss(_STUDENT[1], _TEACHER[1])
    np.testing.assert_allclose(loss(_STUDENT, _TEACHER), first + second, rtol=1e-6)
    np.testing.assert_array_equal(loss(_STUDENT[:1], _TEACHER[:1]), first)
    np.testing.assert_array_equal(loss(tuple(_STUDENT), tuple(_TEACHER)), loss(_STUDENT, _TEACHER))


def test_vid_sums_its_stages_each_with_its_own_variance():
    means = _maps("vid_means", (2, 4, 4, 3), (2, 5))
    targets = _maps("vid_targets", (2, 4, 4, 3), (2, 5))
    scales = [np.zeros(3, np.float32), np.ones(5, np.float32)]
    vid = jax.jit(vid_loss)
    want = vid(means[0], targets[0], scales[0]) + vid(means[1], targets[1], scales[1])
    np.testing.assert_allclose(vid(means, targets, scales), want, rtol=1e-6)


def test_vid_average_pools_the_larger_map_of_a_stage():
    mean, target = _maps("vid_pool", (2, 2, 3, 4), (2, 4, 6, 4))
    log_scale = np.linspace(-1.0, 1.0, 4).astype(np.float32)
    pooled = target.reshape(2, 2, 2, 3, 2, 4).mean(axis=(2, 4))  # 2×2 blocks, by hand
    vid = jax.jit(vid_loss)
    np.testing.assert_allclose(
        vid(mean, target, log_scale), vid(mean, pooled, log_scale), rtol=1e-6
    )
    larger_mean = np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(
        vid(larger_mean, pooled, log_scale), vid(pooled, pooled, log_scale), rtol=1e-6
    )


def test_ab_weighs_stage_k_of_n_by_two_to_the_k_minus_n_plus_one():
    rng = rng_for("ab_weights")
    s = [rng.standard_normal((2, 3, 3, 4)).astype(np.float32) for _ in range(3)]
    t = [rng.standard_normal((2, 3, 3, 4)).astype(np.float32) for _ in range(3)]
    ab = jax.jit(activation_boundary_loss)
    alone = [ab(s_k, t_k) for s_k, t_k in zip(s, t, strict=True)]
    np.testing.assert_allclose(ab(s, t), alone[0] / 4 + alone[1] / 2 + alone[2], rtol=1e-6)
    np.testing.assert_allclose(ab(s[1:], t[1:]), alone[1] / 2 + alone[2], rtol=1e-6)


def test_ab_is_zero_beyond_the_margin_on_the_teachers_side():
    t = np.array([-2.0, -0.5, 0.5, 2.0], np.float32).reshape(1, 1, 4, 1)
    beyond = -1.5 * np.sign(-t)  # off → −1.5, on → +1.5: past the margin 1
    np.testing.assert_array_equal(activation_boundary_loss(beyond, t), [0.0])
    # Half a unit inside the margin everywhere: 4 elements · 0.5² · 3/1000.
    inside = 0.5 * np.sign(t)
    np.testing.assert_allclose(activation_boundary_loss(inside, t), [4 * 0.25 * 0.003])


def test_fsp_sums_the_consecutive_pairs_gram_differences_by_hand():
    rng = rng_for("fsp_hand")
    s = [rng.standard_normal((2, 4, 4, c)) for c in (2, 3, 3)]
    t = [rng.standard_normal((2, 2, 2, c)) for c in (2, 3, 3)]

    def gram(a, b):
        h = min(a.shape[1], b.shape[1])
        a = a.reshape(2, h, a.shape[1] // h, h, a.shape[2] // h, -1).mean(axis=(2, 4))
        b = b.reshape(2, h, b.shape[1] // h, h, b.shape[2] // h, -1).mean(axis=(2, 4))
        return np.einsum("bhwi,bhwj->bij", a, b) / (h * h)

    want = sum(
        np.mean((gram(s[k], s[k + 1]) - gram(t[k], t[k + 1])) ** 2, axis=(1, 2)) for k in range(2)
    )
    np.testing.assert_allclose(jax.jit(fsp_loss)(s, t), want, rtol=1e-5)


def test_ft_and_repdistiller_cc_have_zero_gradient_where_the_difference_is_zero():
    # PyTorch's |x| has gradient 0 at 0, JAX's 1: identical inputs must give 0 here.
    # Both sides from the same array in the same program, so they round alike.
    (factor,) = _maps("ft_zero", (2, 4, 4, 3))

    def ft(x):
        return jnp.sum(factor_transfer_loss(x, jax.lax.stop_gradient(x)))

    np.testing.assert_array_equal(jax.grad(ft)(factor), 0.0)
    emb = rng_for("cc_zero").standard_normal((4, 3)).astype(np.float32)
    cc_grad = jax.grad(lambda x: repdistiller_correlation_loss(x, jax.lax.stop_gradient(x)))(emb)
    np.testing.assert_array_equal(cc_grad, 0.0)


def test_repdistiller_cc_pairs_consecutive_examples_so_the_order_matters():
    s = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    t = np.zeros_like(s)
    cc = jax.jit(repdistiller_correlation_loss)
    assert float(cc(s, t)) == pytest.approx((0.0 + 1.0) / 2)
    assert float(cc(s[[0, 2, 1]], t)) == pytest.approx((1.0 + 1.0) / 2)
    assert float(cc(s[:1], t[:1])) == 0.0


def test_linear_warmup_is_mdistillers_min_epoch_over_warmup():
    epochs = np.arange(1, 241)
    got = jax.jit(linear_warmup)(epochs, 20)
    np.testing.assert_allclose(got, [min(epoch / 20, 1.0) for epoch in epochs], rtol=1e-7)
    assert got.dtype == jnp.float32
    assert float(linear_warmup(-3, 20)) == 0.0
    swept = jax.jit(jax.vmap(lambda w: linear_warmup(5, w)))(jnp.asarray([10.0, 20.0]))
    np.testing.assert_allclose(swept, [0.5, 0.25])


_MAP = np.ones((2, 4, 4, 3), np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: attention_transfer_loss([_MAP], _MAP),
            "must all be single arrays or all sequences",
        ),
        (lambda: nst_loss([_MAP, _MAP], [_MAP]), "same non-zero number of stages"),
        (lambda: attention_transfer_loss([], []), "same non-zero number of stages"),
        (lambda: nst_loss([_MAP, _MAP[0]], [_MAP, _MAP]), r"s_map\[1\] must be NHWC"),
        (lambda: attention_transfer_loss([_MAP, _MAP[:1]], [_MAP, _MAP[:1]]), r"s_map\[1\]"),
        (lambda: vid_loss([_MAP], [_MAP], [np.zeros(4)]), r"log_scale\[0\] must have shape"),
        (lambda: vid_loss(_MAP, np.ones((2, 3, 3, 3)), np.zeros(3)), "not a multiple"),
        (lambda: activation_boundary_loss([_MAP], [_MAP[..., :2]]), r"s_map\[0\] and t_map\[0\]"),
        (lambda: activation_boundary_loss(_MAP, _MAP, margin=-1.0), "margin"),
        (lambda: fsp_loss(_MAP, _MAP), "s_maps must be a list"),
        (lambda: fsp_loss([_MAP, _MAP], [_MAP]), "t_maps must be a list"),
        (lambda: fsp_loss([_MAP] * 3, [_MAP] * 2), "as many maps"),
        (lambda: fsp_loss([_MAP, _MAP], [_MAP, _MAP[..., :2]]), "same channel counts"),
        (lambda: fsp_loss([_MAP, _MAP[:1]], [_MAP, _MAP]), "batch"),
        (lambda: factor_transfer_loss(_MAP, _MAP, p=0), "p must be"),
        (lambda: factor_transfer_loss(_MAP[0], _MAP), "s_factor must be NHWC"),
        (lambda: repdistiller_correlation_loss(_MAP, _MAP[..., :2]), "t_emb"),
        (lambda: linear_warmup(1, 0), "warmup_steps"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
