"""Properties of the relational, feature-map and later logit losses that need no torch.

Gradients against finite differences (``jax.test_util.check_grads``, float64),
``jit``/``vmap`` compatibility, bfloat16 inputs, identities with independent NumPy
references, argument validation and the docstring examples.
"""

from __future__ import annotations

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from losses_cases import CASES, rng_for

from kdjax.losses import (
    attention_transfer_loss,
    correlation_congruence_loss,
    dist_loss,
    distillation_kl,
    dkd_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
    vid_loss,
)


@pytest.fixture
def x64():
    """Enables float64 in JAX for one test and restores the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# --------------------------------------------------------------------------- #
# Gradients, jit, vmap, low precision.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences_in_float64(x64, name):
    case = CASES[name]
    floats, ints = case.split(case.inputs("b"))
    floats = tuple(jnp.asarray(x, jnp.float64) for x in floats)
    fn = jax.jit(lambda *xs: case.flat_loss(*xs, *ints))
    # Central differences with a 1e-6 step: the default 1e-4 leaves a truncation error
    # of ~1e-5 relative on the larger multi-stage inputs.
    check_grads(fn, floats, order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_a_stack_equals_separate_calls(name):
    case = CASES[name]
    first = case.inputs("b")
    second = case.inputs("b", "zero_rows")
    stacked = [np.stack([a, b]) for a, b in zip(first, second, strict=True)]
    got = np.asarray(jax.jit(jax.vmap(case.flat_loss))(*stacked))
    single = jax.jit(case.flat_loss)
    want = np.stack([np.asarray(single(*first)), np.asarray(single(*second))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_are_computed_in_float32(name):
    case = CASES[name]
    floats, ints = case.split(case.inputs("a"))
    low = [jnp.asarray(x, jnp.bfloat16) for x in floats]
    loss = jax.jit(case.flat_loss)  # one compile per dtype instead of one per eager op
    got = loss(*low, *ints)
    want = loss(*[x.astype(jnp.float32) for x in low], *ints)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- #
# Identities against independent NumPy references.
# --------------------------------------------------------------------------- #


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dkd_parts_recompose_the_kl():
    # Zhao et al., Eq. (5): KD = TCKD + (1 − p_t) · NCKD, p_t the teacher's target prob.
    rng = rng_for("dkd_identity")
    s, t = rng.standard_normal((2, 6, 7)) * 3.0
    y = rng.integers(0, 7, size=6)
    dkd = jax.jit(lambda a, b: dkd_loss(s, t, y, alpha=a, beta=b, temperature=2.0))
    tckd, nckd = dkd(1.0, 0.0), dkd(0.0, 1.0)
    p_target = _np_softmax(t / 2.0)[np.arange(6), y]
    kl = jax.jit(distillation_kl, static_argnames="standardize")(s, t, temperature=2.0)
    np.testing.assert_allclose(tckd + (1 - p_target) * nckd, kl, rtol=1e-5, atol=1e-6)


def test_dkd_out_of_range_labels_give_nan_value_and_gradient():
    s = t = np.zeros((3, 4), np.float32)
    y = np.array([-1, 4, 2])

    def total(x):
        values = dkd_loss(x, t, y)
        return jnp.sum(values), values

    (_, values), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(s)
    assert np.isnan(values[:2]).all() and np.isfinite(values[2])
    assert np.isnan(grad[:2]).all() and np.isfinite(grad[2]).all()


def test_dist_equals_numpy_pearson_correlations():
    rng = rng_for("dist_numpy")
    s, t = rng.standard_normal((2, 5, 4)) * 2.0
    y_s, y_t = _np_softmax(s / 3.0), _np_softmax(t / 3.0)
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s, y_t, strict=True)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(y_s.T, y_t.T, strict=True)])
    dist = jax.jit(dist_loss)
    got = dist(s, t, beta=0.5, gamma=2.0, temperature=3.0)
    np.testing.assert_allclose(got, 9.0 * (0.5 * inter + 2.0 * intra), rtol=1e-5)
    np.testing.assert_allclose(dist(s, s + 4.0), 0.0, atol=1e-6)


def test_cc_taylor_series_approaches_the_gaussian_kernel():
    rng = rng_for("cc_gaussian")
    s, t = rng.standard_normal((2, 5, 3))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)

    def rbf(x, gamma):
        return np.exp(-gamma * np.sum((x[:, None] - x[None]) ** 2, -1))

    want = np.sum((rbf(t, 0.4) - rbf(s, 0.4)) ** 2) / 25
    cc = jax.jit(lambda a, b: correlation_congruence_loss(a, b, gamma=0.4, order=12))
    np.testing.assert_allclose(cc(s, t), want, rtol=1e-5)
    np.testing.assert_allclose(cc(s, s), 0.0, atol=1e-12)


def test_vid_matches_numpy_and_its_variance_gradient_vanishes_at_the_mle():
    rng = rng_for("vid_numpy")
    mean, target = rng.standard_normal((2, 4, 3, 3, 5))
    log_scale = rng.standard_normal(5)
    variance = np.log1p(np.exp(log_scale)) + 1e-5
    want = np.mean(0.5 * ((mean - target) ** 2 / variance + np.log(variance)), axis=(1, 2, 3))
    np.testing.assert_allclose(jax.jit(vid_loss)(mean, target, log_scale), want, rtol=1e-5)
    # The per-channel mean squared error is the maximum-likelihood variance.
    mle = np.mean((mean - target) ** 2, axis=(0, 1, 2)) - 1e-5
    at_mle = np.log(np.expm1(mle))
    grad = jax.jit(jax.grad(lambda v: jnp.mean(vid_loss(mean, target, v))))(at_mle)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_feature_losses_ignore_what_their_normalisations_remove():
    rng = rng_for("invariances")
    maps = np.abs(rng.standard_normal((3, 4, 4, 5))).astype(np.float32)
    feats = rng.standard_normal((6, 4)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    moved = (3.0 * feats @ rotation + 2.0).astype(np.float32)  # scaled, rotated, shifted
    cases = [
        jax.jit(attention_transfer_loss)(maps, 7.0 * maps[..., ::-1]),  # scale, channels
        jax.jit(nst_loss)(maps, 0.5 * maps[..., ::-1]),
        jax.jit(similarity_preserving_loss)(feats, 3.0 * feats @ rotation),  # rotation-free
        jax.jit(pkt_loss)(feats, 3.0 * feats @ rotation),
        jax.jit(rkd_loss)(feats, moved),
    ]
    for value in cases:
        np.testing.assert_allclose(np.asarray(value), 0.0, atol=2e-6)


def test_attention_transfer_on_a_hand_computed_map():
    s = np.zeros((1, 2, 2, 1), np.float32)
    s[0, 0, 0, 0] = 2.0  # attention [4, 0, 0, 0] → [1, 0, 0, 0]
    t = np.ones((1, 2, 2, 3), np.float32)  # attention uniform → [½, ½, ½, ½]
    want = ((1 - 0.5) ** 2 + 3 * 0.5**2) / 4
    np.testing.assert_allclose(attention_transfer_loss(s, t), [want], rtol=1e-6)


# --------------------------------------------------------------------------- #
# Argument validation.
# --------------------------------------------------------------------------- #

_MAP = np.zeros((2, 4, 4, 3), np.float32)
_FEAT = np.zeros((4, 3), np.float32)
_LOGITS = np.zeros((4, 5), np.float32)
_LABELS = np.zeros((4,), np.int32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: attention_transfer_loss(_MAP[0], _MAP), ValueError, "s_map must be NHWC"),
        (lambda: nst_loss(_MAP, np.zeros((2, 3, 3, 3))), ValueError, "s_map has spatial"),
        (lambda: attention_transfer_loss(_MAP, _MAP[:1]), ValueError, "t_map .* batch"),
        (lambda: attention_transfer_loss(_MAP, _MAP, p=0), ValueError, "p must be"),
        (lambda: similarity_preserving_loss(_FEAT, _FEAT[:3]), ValueError, "t_feat"),
        (lambda: pkt_loss(_FEAT.astype(int), _FEAT), TypeError, "s_feat"),
        (lambda: rkd_loss(_FEAT, _FEAT, angle_weight=np.inf), ValueError, "angle_weight"),
        (lambda: rkd_loss(_FEAT, _FEAT, distance_weight=-1), ValueError, "distance_weight"),
        (lambda: correlation_congruence_loss(_FEAT, _FEAT, order=1.5), ValueError, "order"),
        (lambda: correlation_congruence_loss(_FEAT, _FEAT, gamma=np.nan), ValueError, "gamma"),
        (lambda: dkd_loss(_LOGITS[:, :1], _LOGITS[:, :1], _LABELS), ValueError, "at least 2"),
        (lambda: dkd_loss(_LOGITS, _LOGITS, _LABELS, temperature=np.inf), ValueError, "temp"),
        (lambda: dkd_loss(_LOGITS, _LOGITS, _LABELS[:3]), ValueError, "labels"),
        (lambda: dist_loss(_LOGITS, _LOGITS, gamma=np.inf), ValueError, "gamma"),
        (lambda: dist_loss(_LOGITS[None], _LOGITS[None]), ValueError, "batch, num_classes"),
        (lambda: vid_loss(_FEAT, _FEAT, np.zeros(4)), ValueError, "log_scale"),
        (lambda: vid_loss(_FEAT, _FEAT[:, :2], np.zeros(3)), ValueError, "t_feat"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_hyperparameters_are_not_checked_and_serve_a_sweep():
    rng = rng_for("sweep")
    s, t = rng.standard_normal((2, 6, 5)).astype(np.float32)
    sweep = jax.jit(jax.vmap(lambda w: rkd_loss(s, t, distance_weight=w, angle_weight=0.0)))
    weights = jnp.asarray([0.0, 1.0, 2.0])
    got = np.asarray(sweep(weights))
    np.testing.assert_allclose(got, np.asarray(weights) * got[1], rtol=1e-6)


# --------------------------------------------------------------------------- #
# Docstring examples.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "module",
    [
        "_classification",
        "_features",
        "_relational",
        "_logit_variants",
        "_contrastive",
        "_initialization",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"kdjax.losses.{module}"))
    assert result.attempted > 0
    assert result.failed == 0
