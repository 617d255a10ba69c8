"""The temperature-scaled losses from ``T = 1`` to ``MAX_TEMPERATURE``, in float32.

Values are checked against an exact reference (50-digit ``decimal`` arithmetic on
the same float32 logits) at every decade, gradients against the exact ``T (q − p)``
or against the same loss in float64; ``T²·KL`` against Hinton's high-temperature
limit; temperatures above the bound are refused. Two kinds of logits: independent
teacher and student (``apart``) and a student within 1e-2 of its teacher
(``close``), where the KL is ~1e-5 of the ``apart`` one.
"""

from __future__ import annotations

import decimal
import zlib
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import (
    MAX_TEMPERATURE,
    dist_loss,
    distillation_kl,
    dkd_loss,
    kd_loss,
    soft_target_cross_entropy,
    standardize_logits,
)

BATCH, NUM_CLASSES = 8, 10
TEMPERATURES = [1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6]
# Measured: at most ~7e-7 relative (values) and ~6e-7 of the largest gradient entry,
# where the direct float32 sums were off by 1e-4 to 1e9 above T = 1e3.
RTOL = 1e-5
DIST_EPSILON = Decimal("1e-8")


@pytest.fixture
def x64():
    """Enables float64 in JAX for one test and restores the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _logits(kind: str):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    student = rng.standard_normal((BATCH, NUM_CLASSES)) * 3.0
    if kind == "apart":
        teacher = rng.standard_normal((BATCH, NUM_CLASSES)) * 3.0
    else:
        teacher = student + rng.standard_normal((BATCH, NUM_CLASSES)) * 1e-2
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    return student.astype(np.float32), teacher.astype(np.float32), labels


# --------------------------------------------------------------------------- #
# The exact reference: every float32 input is exactly a Decimal.
# --------------------------------------------------------------------------- #


def _exact_probs(row, temperature) -> list[Decimal]:
    with decimal.localcontext(prec=50):
        scaled = [Decimal(float(v)) / Decimal(temperature) for v in row]
        top = max(scaled)
        weights = [(v - top).exp() for v in scaled]
        total = sum(weights)
        return [w / total for w in weights]


def _exact_kl(p, q) -> Decimal:
    with decimal.localcontext(prec=50):
        return sum(pi * (pi / qi).ln() for pi, qi in zip(p, q, strict=True))


def _exact(student, teacher, temperature, fn) -> np.ndarray:
    """``fn(p, q, T)`` for each row, as float64."""
    rows = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p, q = _exact_probs(t_row, temperature), _exact_probs(s_row, temperature)
        with decimal.localcontext(prec=50):
            rows.append(fn(p, q, Decimal(temperature)))
    return np.array(rows, np.float64)


def _exact_distillation_kl(student, teacher, temperature):
    return _exact(student, teacher, temperature, lambda p, q, T: float(T * T * _exact_kl(p, q)))


def _exact_soft_target_ce(student, teacher, temperature):
    def soft_ce(p, q, T):
        return float(-T * T * sum(pi * qi.ln() for pi, qi in zip(p, q, strict=True)))

    return _exact(student, teacher, temperature, soft_ce)


def _exact_kl_gradient(student, teacher, temperature):
    """``∂(T²·KL)/∂s = T (q − p)``, per row (also the soft cross-entropy's)."""
    return _exact(
        student,
        teacher,
        temperature,
        lambda p, q, T: [float(T * (qi - pi)) for pi, qi in zip(p, q, strict=True)],
    )


def _exact_dkd(student, teacher, labels, temperature, alpha=1.0, beta=8.0):
    values = []
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        p, q = _exact_probs(t_row, temperature), _exact_probs(s_row, temperature)
        with decimal.localcontext(prec=50):
            binary = _exact_kl([p[y], 1 - p[y]], [q[y], 1 - q[y]])
            rest = [c for c in range(NUM_CLASSES) if c != y]
            non_target = _exact_kl(
                [p[c] / (1 - p[y]) for c in rest], [q[c] / (1 - q[y]) for c in rest]
            )
            T = Decimal(temperature)
            values.append(float(T * T * (Decimal(alpha) * binary + Decimal(beta) * non_target)))
    return np.array(values)


def _exact_dist(student, teacher, temperature, beta=1.0, gamma=1.0):
    ys = [_exact_probs(row, temperature) for row in student]
    yt = [_exact_probs(row, temperature) for row in teacher]

    def pearson(a, b):
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        a, b = [x - mean_a for x in a], [x - mean_b for x in b]
        norms = sum(x * x for x in a).sqrt() * sum(x * x for x in b).sqrt()
        return sum(x * z for x, z in zip(a, b, strict=True)) / (norms + DIST_EPSILON)

    with decimal.localcontext(prec=50):
        inter = sum(pearson(ys[i], yt[i]) for i in range(BATCH)) / BATCH
        columns = [([y[c] for y in ys], [y[c] for y in yt]) for c in range(NUM_CLASSES)]
        intra = sum(pearson(a, b) for a, b in columns) / NUM_CLASSES
        T = Decimal(temperature)
        return float(T * T * (Decimal(beta) * (1 - inter) + Decimal(gamma) * (1 - intra)))


# --------------------------------------------------------------------------- #
# Values and gradients at every decade.
# --------------------------------------------------------------------------- #

# The temperature is traced, so each function compiles once for the whole sweep.
_kl = jax.jit(lambda s, t, T: distillation_kl(s, t, temperature=T))
_soft_ce = jax.jit(lambda s, t, T: soft_target_cross_entropy(s, t, temperature=T))
_kl_grad = jax.jit(jax.grad(lambda s, t, T: jnp.sum(distillation_kl(s, t, temperature=T))))
_soft_ce_grad = jax.jit(
    jax.grad(lambda s, t, T: jnp.sum(soft_target_cross_entropy(s, t, temperature=T)))
)
_dkd = jax.jit(lambda s, t, y, T: dkd_loss(s, t, y, temperature=T))
_dist = jax.jit(lambda s, t, T: dist_loss(s, t, temperature=T))


@pytest.mark.parametrize("kind", ["apart", "close"])
def test_distillation_kl_keeps_its_sign_and_value_at_every_decade(kind):
    s, t, _ = _logits(kind)
    for temperature in TEMPERATURES:
        got = np.asarray(_kl(s, t, jnp.float32(temperature)))
        want = _exact_distillation_kl(s, t, temperature)
        assert np.all(got >= 0), f"T={temperature:g}: {got}"
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"T={temperature:g}")


def test_the_standardized_kl_keeps_its_value_at_every_decade():
    s, t, _ = _logits("apart")
    kl = jax.jit(lambda s, t, T: distillation_kl(s, t, temperature=T, standardize=True))
    # The reference sees the same standardised logits, so only the KL is compared.
    s_std, t_std = np.asarray(standardize_logits(s)), np.asarray(standardize_logits(t))
    for temperature in TEMPERATURES:
        got = np.asarray(kl(s, t, jnp.float32(temperature)))
        want = _exact_distillation_kl(s_std, t_std, temperature)
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"T={temperature:g}")


@pytest.mark.parametrize("kind", ["apart", "close"])
def test_kl_and_soft_target_gradients_match_the_exact_gradient(kind):
    s, t, _ = _logits(kind)
    for temperature in TEMPERATURES:
        T = jnp.float32(temperature)
        want = _exact_kl_gradient(s, t, temperature)
        scale = np.max(np.abs(want))
        for name, grad in (("kl", _kl_grad), ("soft_ce", _soft_ce_grad)):
            got = np.asarray(grad(s, t, T))
            np.testing.assert_allclose(
                got, want, rtol=0, atol=RTOL * scale, err_msg=f"{name}, T={temperature:g}"
            )
        soft_ce = np.asarray(_soft_ce(s, t, T))
        want_ce = _exact_soft_target_ce(s, t, temperature)
        np.testing.assert_allclose(soft_ce, want_ce, rtol=RTOL, err_msg=f"T={temperature:g}")


@pytest.mark.parametrize("kind", ["apart", "close"])
def test_dkd_keeps_its_value_at_every_decade(kind):
    s, t, y = _logits(kind)
    for temperature in TEMPERATURES:
        got = np.asarray(_dkd(s, t, y, jnp.float32(temperature)))
        want = _exact_dkd(s, t, y, temperature)
        assert np.all(got >= 0), f"T={temperature:g}: {got}"
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"T={temperature:g}")


def _check_gradient(grad, s, t, temperature):
    """``grad(s, t, T)`` in float32 against float64, relative to its largest entry."""
    got = np.asarray(grad(s, t, jnp.float32(temperature)))
    want = np.asarray(grad(s.astype(np.float64), t.astype(np.float64), jnp.float64(temperature)))
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_allclose(
        got, want, rtol=0, atol=RTOL * np.max(np.abs(want)), err_msg=f"T={temperature:g}"
    )


def test_dist_keeps_its_value_and_gradient_at_every_decade(x64):
    # "apart" only: for a student this close, 1 − ρ itself cancels at low T.
    s, t, _ = _logits("apart")
    grad = jax.jit(jax.grad(lambda s, t, T: dist_loss(s, t, temperature=T)))
    for temperature in TEMPERATURES:
        got = float(_dist(s, t, jnp.float32(temperature)))
        want = _exact_dist(s, t, temperature)
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"T={temperature:g}")
        _check_gradient(grad, s, t, temperature)


_GRADIENT_LOSSES = {
    "distillation_kl": lambda s, t, y, T: jnp.sum(distillation_kl(s, t, temperature=T)),
    "standardized_kl": lambda s, t, y, T: jnp.sum(
        distillation_kl(s, t, temperature=T, standardize=True)
    ),
    "kd_loss": lambda s, t, y, T: jnp.sum(kd_loss(s, t, y, temperature=T, alpha=0.5)),
    "dkd_loss": lambda s, t, y, T: jnp.sum(dkd_loss(s, t, y, temperature=T)),
}


@pytest.mark.parametrize("name", sorted(_GRADIENT_LOSSES))
def test_float32_gradients_match_float64_at_every_decade(x64, name):
    s, t, y = _logits("apart")
    loss = _GRADIENT_LOSSES[name]
    grad = jax.jit(jax.grad(lambda s, t, T: loss(s, t, y, T)))
    for temperature in TEMPERATURES:
        _check_gradient(grad, s, t, temperature)


def test_t_squared_kl_reaches_hintons_high_temperature_limit():
    # T²·KL → ½ mean_c (D_c − mean D)², D = t − s (Hinton et al., 2015, §2.1), with a
    # relative correction of order |logits| / T (~1e-5 at T = 1e6).
    s, t, _ = _logits("apart")
    d = t.astype(np.float64) - s.astype(np.float64)
    limit = 0.5 * np.mean((d - d.mean(-1, keepdims=True)) ** 2, axis=-1)
    got = np.asarray(distillation_kl(s, t, temperature=MAX_TEMPERATURE))
    np.testing.assert_allclose(got, limit, rtol=1e-4)


# --------------------------------------------------------------------------- #
# The bound.
# --------------------------------------------------------------------------- #


def test_concrete_temperatures_above_the_bound_are_refused():
    s, t, y = _logits("apart")
    calls = {
        "distillation_kl": lambda T: distillation_kl(s, t, temperature=T),
        "standardized_kl": lambda T: distillation_kl(s, t, temperature=T, standardize=True),
        "soft_target_cross_entropy": lambda T: soft_target_cross_entropy(s, t, temperature=T),
        "kd_loss": lambda T: kd_loss(s, t, y, temperature=T, alpha=0.5),
        "dkd_loss": lambda T: dkd_loss(s, t, y, temperature=T),
        "dist_loss": lambda T: dist_loss(s, t, temperature=T),
    }
    for name, call in calls.items():
        assert np.all(np.isfinite(np.asarray(call(MAX_TEMPERATURE)))), name
        for too_hot in (2 * MAX_TEMPERATURE, 1e30, np.float32(1e20)):
            with pytest.raises(ValueError, match=r"temperature must be .*<= 1e\+06"):
                call(too_hot)
