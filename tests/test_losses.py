"""Tests for kdjax.losses, in the style of optax's loss tests.

Every loss is checked against an independent float64 NumPy reference, against
PyTorch (when installed), against mathematical identities, with
``jax.test_util.check_grads``, with low-precision inputs and for its argument
validation.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax.losses import (
    cosine_embedding_loss,
    cross_entropy,
    distillation_kl,
    hint_loss,
    kd_loss,
    soft_target_cross_entropy,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

BATCH = 8
NUM_CLASSES = 10
SCALES = [1.0, 100.0, 1e4]
TEMPERATURES = [1.0, 3.0, 20.0]
ALPHAS = [0.0, 0.3, 0.7, 1.0]
# Few distinct shapes: on CPU every new (op, shape, dtype) costs an XLA compile.
FEATURE_SHAPE = (BATCH, 4, 4, 3)
HINT_SHAPE = (BATCH, 8, 8, 32)


# --------------------------------------------------------------------------- #
# Independent float64 NumPy references.
# --------------------------------------------------------------------------- #


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(logits, labels):
    log_probs = np_log_softmax(logits)
    return -np.take_along_axis(log_probs, np.asarray(labels)[..., None], axis=-1)[..., 0]


def np_distillation_kl(student, teacher, temperature):
    log_q = np_log_softmax(np.asarray(student, np.float64) / temperature)
    log_p = np_log_softmax(np.asarray(teacher, np.float64) / temperature)
    p = np.exp(log_p)
    return temperature**2 * np.sum(p * (log_p - log_q), axis=-1)


def np_soft_target_cross_entropy(student, teacher, temperature):
    log_q = np_log_softmax(np.asarray(student, np.float64) / temperature)
    p = np.exp(np_log_softmax(np.asarray(teacher, np.float64) / temperature))
    return -(temperature**2) * np.sum(p * log_q, axis=-1)


def np_entropy(logits, temperature):
    log_p = np_log_softmax(np.asarray(logits, np.float64) / temperature)
    return -np.sum(np.exp(log_p) * log_p, axis=-1)


def np_kd_loss(student, teacher, labels, temperature, alpha):
    return alpha * np_cross_entropy(student, labels) + (1.0 - alpha) * np_distillation_kl(
        student, teacher, temperature
    )


def np_hint_loss(student, teacher):
    diff = np.asarray(student, np.float64) - np.asarray(teacher, np.float64)
    return np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=-1)


def np_cosine_embedding_loss(student, teacher, eps=1e-12):
    s = np.asarray(student, np.float64).reshape(student.shape[0], -1)
    t = np.asarray(teacher, np.float64).reshape(teacher.shape[0], -1)
    dot = np.sum(s * t, axis=-1)
    norms = np.sqrt((np.sum(s * s, axis=-1) + eps) * (np.sum(t * t, axis=-1) + eps))
    return 1.0 - dot / norms


# --------------------------------------------------------------------------- #
# Helpers.
# --------------------------------------------------------------------------- #


def _rng(*key):
    # Deterministic per test case (str hashes are salted per process; crc32 is not).
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _logits(rng, scale, shape=(BATCH, NUM_CLASSES)):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _labels(rng, shape=(BATCH,)):
    return rng.integers(0, NUM_CLASSES, size=shape).astype(np.int32)


def _tolerances(scale, temperature):
    """float32 tolerances for the temperature-scaled losses.

    The ``T²`` factor multiplies the float32 rounding of the log-probabilities
    (each ~log C in size) while the KL itself shrinks like ``1/T²``, so the
    absolute error grows like ``T² · eps32``. With ``|logits / T| ≳ 100`` the
    rounding of ``logits / T`` alone moves softmax by ``|logits / T| · eps32``.
    """
    rtol = 1e-5 if scale / temperature < 100 else 3e-5
    atol = 1e-5 + 1e-6 * temperature**2
    return rtol, atol


_jit_cross_entropy = jax.jit(cross_entropy)
_jit_distillation_kl = jax.jit(lambda s, t, T: distillation_kl(s, t, temperature=T))
_jit_soft_ce = jax.jit(lambda s, t, T: soft_target_cross_entropy(s, t, temperature=T))
_jit_kd_loss = jax.jit(lambda s, t, y, T, a: kd_loss(s, t, y, temperature=T, alpha=a))
_jit_hint_loss = jax.jit(hint_loss)
_jit_cosine = jax.jit(cosine_embedding_loss)


def _call_kl(fn, jit_fn, s, t, temperature, use_jit):
    if use_jit:
        return np.asarray(jit_fn(s, t, jnp.float32(temperature)))
    return np.asarray(fn(s, t, temperature=temperature))


# --------------------------------------------------------------------------- #
# 1. NumPy reference comparisons (eager and jitted with traced hyperparameters).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("scale", SCALES)
def test_cross_entropy_matches_reference(scale, use_jit):
    rng = _rng("ce", scale)
    logits, labels = _logits(rng, scale), _labels(rng)
    fn = _jit_cross_entropy if use_jit else cross_entropy
    got = np.asarray(fn(logits, labels))
    assert got.shape == (BATCH,)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np_cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_distillation_kl_matches_reference(scale, temperature, use_jit):
    rng = _rng("kl", scale, temperature)
    s, t = _logits(rng, scale), _logits(rng, scale)
    got = _call_kl(distillation_kl, _jit_distillation_kl, s, t, temperature, use_jit)
    assert got.shape == (BATCH,)
    assert got.dtype == np.float32
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(got, np_distillation_kl(s, t, temperature), rtol=rtol, atol=atol)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_soft_target_cross_entropy_matches_reference(scale, temperature, use_jit):
    rng = _rng("soft_ce", scale, temperature)
    s, t = _logits(rng, scale), _logits(rng, scale)
    got = _call_kl(soft_target_cross_entropy, _jit_soft_ce, s, t, temperature, use_jit)
    assert got.shape == (BATCH,)
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(
        got, np_soft_target_cross_entropy(s, t, temperature), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_kd_loss_matches_reference(scale, temperature, alpha, use_jit):
    rng = _rng("kd", scale, temperature, alpha)
    s, t, y = _logits(rng, scale), _logits(rng, scale), _labels(rng)
    if use_jit:
        got = _jit_kd_loss(s, t, y, jnp.float32(temperature), jnp.float32(alpha))
    else:
        got = kd_loss(s, t, y, temperature=temperature, alpha=alpha)
    got = np.asarray(got)
    assert got.shape == (BATCH,)
    assert got.dtype == np.float32
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(got, np_kd_loss(s, t, y, temperature, alpha), rtol=rtol, atol=atol)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("shape", [(BATCH, NUM_CLASSES), FEATURE_SHAPE, HINT_SHAPE])
def test_feature_losses_match_reference(shape, use_jit):
    rng = _rng("features", shape)
    s = rng.standard_normal(shape).astype(np.float32)
    t = rng.standard_normal(shape).astype(np.float32)
    hint = _jit_hint_loss if use_jit else hint_loss
    cosine = _jit_cosine if use_jit else cosine_embedding_loss
    got_hint, got_cos = np.asarray(hint(s, t)), np.asarray(cosine(s, t))
    assert got_hint.shape == got_cos.shape == (BATCH,)
    np.testing.assert_allclose(got_hint, np_hint_loss(s, t), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_cos, np_cosine_embedding_loss(s, t), rtol=1e-5, atol=1e-5)


def test_logit_losses_keep_leading_axes():
    rng = _rng("leading")
    shape = (2, BATCH // 2, NUM_CLASSES)
    s, t, y = _logits(rng, 2.0, shape), _logits(rng, 2.0, shape), _labels(rng, shape[:-1])
    # kd_loss runs cross_entropy and distillation_kl on the same arrays. (Jitted: one
    # compile per function instead of one per op for this extra shape.)
    T, a = jnp.float32(2.0), jnp.float32(0.4)
    cases = [
        (_jit_soft_ce(s, t, T), np_soft_target_cross_entropy(s, t, 2.0)),
        (_jit_kd_loss(s, t, y, T, a), np_kd_loss(s, t, y, 2.0, 0.4)),
    ]
    for got, want in cases:
        assert got.shape == shape[:-1]
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_traced_temperature_and_alpha_under_jit_do_not_raise():
    rng = _rng("traced")
    s, t, y = _logits(rng, 1.0), _logits(rng, 1.0), _labels(rng)
    # Out-of-range values cannot be checked when traced; they must not raise at trace time.
    for temperature in (2.0, 0.0, -1.0):
        _jit_distillation_kl(s, t, jnp.float32(temperature)).block_until_ready()
        _jit_soft_ce(s, t, jnp.float32(temperature)).block_until_ready()
    _jit_kd_loss(s, t, y, jnp.float32(-1.0), jnp.float32(1.5)).block_until_ready()
    # A sweep over traced temperatures reuses one compiled function.
    sweep = jax.vmap(lambda T: jnp.mean(distillation_kl(s, t, temperature=T)))
    got = np.asarray(jax.jit(sweep)(jnp.asarray(TEMPERATURES, jnp.float32)))
    want = [np.mean(np_distillation_kl(s, t, T)) for T in TEMPERATURES]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-4)


# --------------------------------------------------------------------------- #
# 2. PyTorch parity (each test skips on its own when torch is missing).
# --------------------------------------------------------------------------- #


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _torch_kl(torch, s, t, temperature):
    F = torch.nn.functional
    return temperature**2 * F.kl_div(
        F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean"
    )


def _torch_kd(torch, s, t, y, temperature, alpha):
    F = torch.nn.functional
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * _torch_kl(torch, s, t, temperature)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_torch_distillation_kl(torch, scale, temperature):
    rng = _rng("torch_kl", scale, temperature)
    s, t = _logits(rng, scale), _logits(rng, scale)
    want = _torch_kl(torch, torch.from_numpy(s), torch.from_numpy(t), temperature).item()
    got = float(jnp.mean(distillation_kl(s, t, temperature=temperature)))
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_torch_kd_loss_and_cross_entropy(torch, scale, temperature, alpha):
    rng = _rng("torch_kd", scale, temperature, alpha)
    s, t, y = _logits(rng, scale), _logits(rng, scale), _labels(rng)
    ts, tt, ty = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y).long()
    want = _torch_kd(torch, ts, tt, ty, temperature, alpha).item()
    got = float(jnp.mean(kd_loss(s, t, y, temperature=temperature, alpha=alpha)))
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    want_ce = torch.nn.functional.cross_entropy(ts, ty).item()
    np.testing.assert_allclose(float(jnp.mean(cross_entropy(s, y))), want_ce, rtol=1e-5, atol=1e-5)


def test_torch_hint_loss(torch):
    rng = _rng("torch_hint")
    s = rng.standard_normal(HINT_SHAPE).astype(np.float32)
    t = rng.standard_normal(HINT_SHAPE).astype(np.float32)
    want = torch.nn.MSELoss()(torch.from_numpy(s), torch.from_numpy(t)).item()
    np.testing.assert_allclose(float(jnp.mean(hint_loss(s, t))), want, rtol=1e-5, atol=1e-6)


def _cosine_batch(rng, dtype=np.float32):
    s = rng.standard_normal(FEATURE_SHAPE).astype(dtype)
    t = rng.standard_normal(FEATURE_SHAPE).astype(dtype)
    s[1] = 0.0  # zero student row
    t[2] = 0.0  # zero teacher row
    s[3] = 0.0  # both rows zero
    t[3] = 0.0
    return s, t


def _torch_cosine(torch, s, t):
    return torch.nn.CosineEmbeddingLoss()(
        s.flatten(1), t.flatten(1), torch.ones(s.shape[0], dtype=s.dtype)
    )


def test_torch_cosine_embedding_loss_with_zero_rows(torch):
    s, t = _cosine_batch(_rng("torch_cos"))
    want = _torch_cosine(torch, torch.from_numpy(s), torch.from_numpy(t)).item()
    per_example = np.asarray(cosine_embedding_loss(s, t))
    assert np.all(np.isfinite(per_example))
    np.testing.assert_allclose(per_example[[1, 2, 3]], 1.0, atol=1e-6)
    np.testing.assert_allclose(per_example.mean(), want, rtol=1e-5, atol=1e-6)


# Gradients of the batch means w.r.t. the student, jitted once for every hyperparameter.
_jit_kd_mean_grad = jax.jit(
    jax.grad(lambda s, t, y, T, a: jnp.mean(kd_loss(s, t, y, temperature=T, alpha=a)))
)
_jit_cosine_mean_grad = jax.jit(jax.grad(lambda s, t: jnp.mean(cosine_embedding_loss(s, t))))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_torch_kd_loss_gradient_float64(torch, temperature, alpha):
    rng = _rng("torch_kd_grad", temperature, alpha)
    s = rng.standard_normal((BATCH, NUM_CLASSES)) * 3.0
    t = rng.standard_normal((BATCH, NUM_CLASSES)) * 3.0
    y = _labels(rng)
    ts = torch.from_numpy(s).requires_grad_(True)
    _torch_kd(
        torch, ts, torch.from_numpy(t), torch.from_numpy(y).long(), temperature, alpha
    ).backward()
    with jax.enable_x64(True):
        grad = _jit_kd_mean_grad(
            jnp.asarray(s),
            jnp.asarray(t),
            jnp.asarray(y),
            jnp.float64(temperature),
            jnp.float64(alpha),
        )
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(grad), ts.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_torch_cosine_gradient_with_zero_rows_float64(torch):
    s, t = _cosine_batch(_rng("torch_cos_grad"), np.float64)
    ts = torch.from_numpy(s).requires_grad_(True)
    _torch_cosine(torch, ts, torch.from_numpy(t)).backward()
    with jax.enable_x64(True):
        grad = _jit_cosine_mean_grad(jnp.asarray(s), jnp.asarray(t))
        assert grad.dtype == jnp.float64
        grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    # The zero-row gradients are ~1e4 (1/sqrt(eps) scale), so allow float64 rounding there.
    np.testing.assert_allclose(grad, ts.grad.numpy(), rtol=1e-7, atol=1e-12)


# --------------------------------------------------------------------------- #
# 3. Identities.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kd_loss_alpha_endpoints(temperature):
    rng = _rng("alpha_endpoints", temperature)
    s, t, y = _logits(rng, 5.0), _logits(rng, 5.0), _labels(rng)
    np.testing.assert_allclose(
        kd_loss(s, t, y, temperature=temperature, alpha=1.0), cross_entropy(s, y), rtol=1e-6
    )
    np.testing.assert_allclose(
        kd_loss(s, t, y, temperature=temperature, alpha=0.0),
        distillation_kl(s, t, temperature=temperature),
        rtol=1e-6,
    )


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_kl_is_zero_for_equal_logits_and_nonnegative(scale, temperature):
    rng = _rng("kl_zero", scale, temperature)
    s, t = _logits(rng, scale), _logits(rng, scale)
    np.testing.assert_allclose(distillation_kl(s, s, temperature=temperature), 0.0, atol=1e-6)
    assert np.all(np.asarray(distillation_kl(s, t, temperature=temperature)) >= 0.0)
    assert np.all(np.asarray(kd_loss(s, t, _labels(rng), temperature=temperature, alpha=0.3)) >= 0)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_logit_losses_are_shift_invariant(temperature):
    rng = _rng("shift", temperature)
    s, t, y = _logits(rng, 4.0), _logits(rng, 4.0), _labels(rng)
    s_shift = s + rng.uniform(-50, 50, size=(BATCH, 1)).astype(np.float32)
    t_shift = t + rng.uniform(-50, 50, size=(BATCH, 1)).astype(np.float32)
    rtol, atol = _tolerances(50.0, temperature)  # the shifted logits are up to ~60 in size
    pairs = [
        (cross_entropy(s, y), cross_entropy(s_shift, y)),
        (
            distillation_kl(s, t, temperature=temperature),
            distillation_kl(s_shift, t_shift, temperature=temperature),
        ),
        (
            soft_target_cross_entropy(s, t, temperature=temperature),
            soft_target_cross_entropy(s_shift, t_shift, temperature=temperature),
        ),
        (
            kd_loss(s, t, y, temperature=temperature, alpha=0.5),
            kd_loss(s_shift, t_shift, y, temperature=temperature, alpha=0.5),
        ),
    ]
    for before, after in pairs:
        np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=rtol, atol=atol)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_soft_target_cross_entropy_minus_kl_is_scaled_teacher_entropy(scale, temperature):
    rng = _rng("entropy", scale, temperature)
    s, t = _logits(rng, scale), _logits(rng, scale)
    soft_ce = np.asarray(soft_target_cross_entropy(s, t, temperature=temperature))
    kl = np.asarray(distillation_kl(s, t, temperature=temperature), np.float64)
    # Written as soft_ce == kl + T² H(p) so that the tolerance is relative to the size
    # of the terms, not of their difference (which cancels in float32).
    rtol, atol = _tolerances(scale, temperature)
    np.testing.assert_allclose(
        soft_ce, kl + temperature**2 * np_entropy(t, temperature), rtol=rtol, atol=atol
    )


def test_cosine_zero_rows_are_finite_without_torch():
    s, t = _cosine_batch(_rng("cos_zero_rows"))
    got = np.asarray(cosine_embedding_loss(s, t))
    np.testing.assert_allclose(got, np_cosine_embedding_loss(s, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[[1, 2, 3]], 1.0, atol=1e-6)
    grad = _jit_cosine_mean_grad(s, t)
    assert grad.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(grad)))


def test_cosine_and_hint_identities():
    rng = _rng("feature_identities")
    x = rng.standard_normal(FEATURE_SHAPE).astype(np.float32)
    np.testing.assert_allclose(cosine_embedding_loss(x, 3.0 * x), 0.0, atol=1e-6)
    np.testing.assert_allclose(cosine_embedding_loss(x, -x), 2.0, atol=1e-6)
    np.testing.assert_allclose(hint_loss(x, x), 0.0, atol=0.0)
    # Orthogonal rows give cos = 0, so the loss is exactly 1.
    a = np.zeros(FEATURE_SHAPE, np.float32)
    b = np.zeros(FEATURE_SHAPE, np.float32)
    a[:, 0, 0, 0], b[:, 0, 0, 1] = 1.0, 2.0
    np.testing.assert_allclose(cosine_embedding_loss(a, b), 1.0, atol=1e-6)
    # hint is the per-example mean, not the sum, of squared errors.
    b[:, 1, 2, 0] = 3.0  # squared error 1 + 4 + 9 spread over 48 features
    np.testing.assert_allclose(hint_loss(a, b), 14.0 / 48.0, rtol=1e-6)


# --------------------------------------------------------------------------- #
# 4. Gradient checks (float64).
# --------------------------------------------------------------------------- #


def _grad_case(name, s, t, y, temperature, alpha, f1, f2):
    """(function, differentiated args) for check_grads; T and alpha are differentiated too."""
    return {
        "cross_entropy": (lambda x: cross_entropy(x, y), (s,)),
        "distillation_kl": (
            lambda x, z, tt: distillation_kl(x, z, temperature=tt),
            (s, t, temperature),
        ),
        "soft_target_cross_entropy": (
            lambda x, z, tt: soft_target_cross_entropy(x, z, temperature=tt),
            (s, t, temperature),
        ),
        "kd_loss": (
            lambda x, z, tt, aa: kd_loss(x, z, y, temperature=tt, alpha=aa),
            (s, t, temperature, alpha),
        ),
        "hint_loss": (hint_loss, (f1, f2)),
        "cosine_embedding_loss": (cosine_embedding_loss, (f1, f2)),
    }[name]


_LOGIT_LOSSES = ["cross_entropy", "distillation_kl", "soft_target_cross_entropy", "kd_loss"]


@pytest.mark.parametrize(
    ("name", "temperature"),
    [(name, T) for name in _LOGIT_LOSSES for T in (1.0, 3.0)]
    + [("hint_loss", 1.0), ("cosine_embedding_loss", 1.0)],
)
def test_check_grads(name, temperature):
    rng = _rng("check_grads", name, temperature)
    with jax.enable_x64(True):
        s = jnp.asarray(rng.standard_normal((BATCH, NUM_CLASSES)) * 2.0)
        t = jnp.asarray(rng.standard_normal((BATCH, NUM_CLASSES)) * 2.0)
        f1 = jnp.asarray(rng.standard_normal(FEATURE_SHAPE))
        f2 = jnp.asarray(rng.standard_normal(FEATURE_SHAPE))
        y = jnp.asarray(_labels(rng))
        T, a = jnp.float64(temperature), jnp.float64(0.3)
        assert s.dtype == f1.dtype == T.dtype == jnp.float64
        fn, args = _grad_case(name, s, t, y, T, a, f1, f2)
        check_grads(fn, args, order=2, modes=["rev"])


def test_float64_inputs_stay_float64():
    with jax.enable_x64(True):
        s = jnp.ones((BATCH, NUM_CLASSES), jnp.float64)
        y = jnp.zeros((BATCH,), jnp.int32)
        assert soft_target_cross_entropy(s, s, temperature=2.0).dtype == jnp.float64
        assert kd_loss(s, s, y, temperature=2.0, alpha=0.5).dtype == jnp.float64
        f = jnp.ones(FEATURE_SHAPE, jnp.float64)
        assert hint_loss(f, f).dtype == jnp.float64
        assert cosine_embedding_loss(f, f).dtype == jnp.float64


# --------------------------------------------------------------------------- #
# 5. Low-precision inputs.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = _rng("low_precision", str(dtype))
    s = jnp.asarray(_logits(rng, 10.0), dtype)
    t = jnp.asarray(_logits(rng, 10.0), dtype)
    y = _labels(rng)
    f1 = jnp.asarray(rng.standard_normal(FEATURE_SHAPE), dtype)
    f2 = jnp.asarray(rng.standard_normal(FEATURE_SHAPE), dtype)
    up = {k: v.astype(jnp.float32) for k, v in dict(s=s, t=t, f1=f1, f2=f2).items()}
    cases = [
        (cross_entropy(s, y), cross_entropy(up["s"], y)),
        (
            distillation_kl(s, t, temperature=3.0),
            distillation_kl(up["s"], up["t"], temperature=3.0),
        ),
        (
            soft_target_cross_entropy(s, t, temperature=3.0),
            soft_target_cross_entropy(up["s"], up["t"], temperature=3.0),
        ),
        (
            kd_loss(s, t, y, temperature=3.0, alpha=0.3),
            kd_loss(up["s"], up["t"], y, temperature=3.0, alpha=0.3),
        ),
        (hint_loss(f1, f2), hint_loss(up["f1"], up["f2"])),
        (cosine_embedding_loss(f1, f2), cosine_embedding_loss(up["f1"], up["f2"])),
    ]
    for got, want in cases:
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    # And the float32 computation is accurate against the float64 reference.
    np.testing.assert_allclose(
        np.asarray(cases[1][0]), np_distillation_kl(up["s"], up["t"], 3.0), rtol=1e-5, atol=2e-5
    )


# --------------------------------------------------------------------------- #
# 6. Argument validation.
# --------------------------------------------------------------------------- #

_S = np.zeros((BATCH, NUM_CLASSES), np.float32)
_Y = np.zeros((BATCH,), np.int32)


def test_mismatched_shapes_raise_value_error_naming_argument():
    other = np.zeros((BATCH, NUM_CLASSES - 1), np.float32)
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_kl(_S, other, temperature=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        soft_target_cross_entropy(_S, other, temperature=2.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(_S, other, _Y, temperature=2.0, alpha=0.5)
    feats, other_feats = np.zeros(FEATURE_SHAPE, np.float32), np.zeros(HINT_SHAPE, np.float32)
    with pytest.raises(ValueError, match="teacher_features"):
        hint_loss(feats, other_feats)
    with pytest.raises(ValueError, match="teacher_features"):
        cosine_embedding_loss(feats, other_feats)


def test_integer_logits_raise_type_error():
    ints = np.zeros((BATCH, NUM_CLASSES), np.int32)
    with pytest.raises(TypeError, match="logits"):
        cross_entropy(ints, _Y)
    with pytest.raises(TypeError, match="student_logits"):
        distillation_kl(ints, _S, temperature=2.0)
    with pytest.raises(TypeError, match="teacher_logits"):
        distillation_kl(_S, ints, temperature=2.0)
    with pytest.raises(TypeError, match="student_logits"):
        soft_target_cross_entropy(ints, _S, temperature=2.0)
    with pytest.raises(TypeError, match="teacher_logits"):
        kd_loss(_S, ints, _Y, temperature=2.0, alpha=0.5)
    # kd_loss validates the student through cross_entropy, whose message says "logits".
    with pytest.raises(TypeError, match="logits"):
        kd_loss(ints, _S, _Y, temperature=2.0, alpha=0.5)
    with pytest.raises(TypeError, match="student_features"):
        hint_loss(ints, _S)
    with pytest.raises(TypeError, match="teacher_features"):
        cosine_embedding_loss(_S, ints)


def test_bad_labels_raise():
    with pytest.raises(TypeError, match="labels"):
        cross_entropy(_S, np.zeros((BATCH,), np.float32))
    with pytest.raises(TypeError, match="labels"):
        kd_loss(_S, _S, np.zeros((BATCH,), np.float32), temperature=2.0, alpha=0.5)
    for bad_shape in [(BATCH + 1,), (BATCH, 1), ()]:
        with pytest.raises(ValueError, match="labels"):
            cross_entropy(_S, np.zeros(bad_shape, np.int32))
    with pytest.raises(ValueError, match="labels"):
        kd_loss(_S, _S, np.zeros((BATCH - 1,), np.int32), temperature=2.0, alpha=0.5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, 0, float("nan")])
def test_non_positive_python_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(_S, _S, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_cross_entropy(_S, _S, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(_S, _S, _Y, temperature=temperature, alpha=0.5)


@pytest.mark.parametrize("alpha", [1.5, -0.1])
def test_alpha_out_of_range_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(_S, _S, _Y, temperature=2.0, alpha=alpha)


def test_python_hyperparameters_at_the_boundary_are_accepted():
    kd_loss(_S, _S, _Y, temperature=1e-3, alpha=0.0)
    kd_loss(_S, _S, _Y, temperature=1, alpha=1)


def test_one_dimensional_features_raise():
    x = np.zeros((BATCH,), np.float32)
    with pytest.raises(ValueError, match="student_features"):
        hint_loss(x, x)
    with pytest.raises(ValueError, match="student_features"):
        cosine_embedding_loss(x, x)


def test_scalar_logits_raise():
    with pytest.raises(ValueError, match="student_logits"):
        distillation_kl(np.float32(1.0), np.float32(1.0), temperature=2.0)


# --------------------------------------------------------------------------- #
# 7. Import hygiene.
# --------------------------------------------------------------------------- #


def test_importing_losses_does_not_import_flax_optax_or_orbax():
    code = (
        "import kdjax.losses, sys; "
        "bad = sorted(m for m in sys.modules if m.startswith(('flax', 'optax', 'orbax'))); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_a_masked_teacher_class_contributes_zero_not_nan():
    student = np.array([[1.0, 2.0, 3.0]], np.float32)
    teacher = np.array([[0.0, 1.0, -np.inf]], np.float32)
    value = distillation_kl(student, teacher, temperature=1.0)
    # Reference: the KL over the two unmasked classes only.
    p = np.exp(np_log_softmax(np.array([[0.0, 1.0]])))
    log_q = np_log_softmax(student.astype(np.float64))[:, :2]
    np.testing.assert_allclose(value, np.sum(p * (np.log(p) - log_q), -1), rtol=1e-5)
    grad = jax.grad(lambda s: jnp.sum(distillation_kl(s, teacher, temperature=1.0)))(student)
    assert np.all(np.isfinite(grad))


def test_numpy_scalar_hyperparameters_are_range_checked():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(logits, logits, temperature=np.float32(0))
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(logits, logits, np.array([0, 1]), temperature=1.0, alpha=np.float32(2))


def test_kd_loss_errors_name_its_own_arguments():
    with pytest.raises(TypeError, match="student_logits"):
        kd_loss(
            np.zeros((2, 3), np.int32),
            np.zeros((2, 3)),
            np.array([0, 1]),
            temperature=1.0,
            alpha=0.5,
        )
    with pytest.raises(ValueError, match="student_logits without the class axis"):
        kd_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.array([0, 1, 2]), temperature=1.0, alpha=0.5)


# --------------------------------------------------------------------------- #
# 8. Non-finite teacher logits, out-of-range labels, non-finite hyperparameters
#    and logit standardisation.
# --------------------------------------------------------------------------- #


def _kl_row_sums_and_grads(student, teacher):
    def total(s, t):
        values = distillation_kl(s, t, temperature=2.0)
        return jnp.sum(values), values

    (_, values), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(student, teacher)
    return np.asarray(values), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_or_plus_inf_teacher_logit_makes_value_and_gradient_nan(bad):
    rng = _rng("bad_teacher", bad)
    s, t = _logits(rng, 2.0, (3, 4)), _logits(rng, 2.0, (3, 4))
    t[1, 2] = bad
    values, grads = _kl_row_sums_and_grads(s, t)
    assert np.isnan(values[1]) and np.isfinite(values[[0, 2]]).all()
    for grad in grads:
        assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()
    np.testing.assert_allclose(
        values[[0, 2]], np_distillation_kl(s[[0, 2]], t[[0, 2]], 2.0), rtol=1e-5
    )


def test_torch_kl_div_also_gives_nan_for_a_nan_teacher(torch):
    t = torch.tensor([[0.0, float("nan"), 1.0]])
    want = _torch_kl(torch, torch.zeros(1, 3), t, 2.0).item()
    got = float(distillation_kl(np.zeros((1, 3), np.float32), t.numpy(), temperature=2.0)[0])
    assert np.isnan(want) and np.isnan(got)


@pytest.mark.parametrize("bad_label", [-1, NUM_CLASSES, 99])
def test_out_of_range_labels_give_nan_value_and_gradient(bad_label):
    rng = _rng("bad_label", bad_label)
    s, t, y = _logits(rng, 2.0), _logits(rng, 2.0), _labels(rng)
    y[3] = bad_label
    for fn in (
        lambda x: cross_entropy(x, y),
        lambda x: kd_loss(x, t, y, temperature=2.0, alpha=0.5),
    ):
        values = np.asarray(fn(s))
        grad = np.asarray(jax.grad(lambda x, fn=fn: jnp.sum(fn(x)))(s))
        good = np.arange(BATCH) != 3
        assert np.isnan(values[3]) and np.isfinite(values[good]).all()
        assert np.isnan(grad[3]).all() and np.isfinite(grad[good]).all()
    np.testing.assert_allclose(
        np.asarray(cross_entropy(s, y))[good], np_cross_entropy(s[good], y[good]), rtol=1e-5
    )


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_concrete_hyperparameters_raise(value):
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(_S, _S, temperature=value)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_cross_entropy(_S, _S, temperature=value)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(_S, _S, _Y, temperature=value, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(_S, _S, _Y, temperature=2.0, alpha=value)


def np_standardize(x):
    x = np.asarray(x, np.float64)
    centered = x - x.mean(-1, keepdims=True)
    return centered / (x.std(-1, ddof=1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_standardized_kd_loss_matches_reference(temperature):
    rng = _rng("standardize", temperature)
    s, t, y = _logits(rng, 5.0), _logits(rng, 50.0), _labels(rng)
    got = _jit_kd_standardized(s, t, y, jnp.float32(temperature), jnp.float32(0.3))
    soft = np_distillation_kl(np_standardize(s), np_standardize(t), temperature)
    want = 0.3 * np_cross_entropy(s, y) + 0.7 * soft
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # Standardisation removes each row's scale and shift.
    scaled = _jit_kd_standardized(3.0 * s + 1.0, t / 10.0, y, jnp.float32(temperature), 0.0)
    np.testing.assert_allclose(
        np.asarray(scaled), np.asarray(_jit_kd_standardized(s, t, y, temperature, 0.0)), rtol=1e-4
    )


_jit_kd_standardized = jax.jit(
    lambda s, t, y, T, a: kd_loss(s, t, y, temperature=T, alpha=a, standardize=True)
)


def test_standardize_needs_two_classes_and_keeps_constant_rows_finite():
    one = np.zeros((2, 1), np.float32)
    with pytest.raises(ValueError, match="at least 2"):
        distillation_kl(one, one, temperature=1.0, standardize=True)
    constant = np.ones((2, 4), np.float32)
    grad = jax.jit(
        jax.grad(
            lambda x: jnp.sum(distillation_kl(x, _S[:2, :4] + 1, temperature=1.0, standardize=True))
        )
    )(constant)
    assert np.isfinite(np.asarray(grad)).all()
