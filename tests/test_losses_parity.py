"""PyTorch parity of the relational, feature-map and later logit losses.

Each kdjax loss is compared, value and gradient (``torch.autograd``), with the
independent PyTorch implementation in ``losses_torch_reference.py``: in float64
(tight) and float32, on two shape variants (several stages for the multi-stage
losses), and on degenerate batches (identical rows, zero rows, batches of 1 and 2).
Skipped as a whole when torch is missing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_cases import CASES, DEGENERATE

torch = pytest.importorskip("torch")
import losses_torch_reference as reference  # noqa: E402  (needs torch)

_TOLERANCES = {
    np.float64: dict(rtol=1e-9, atol=1e-12),
    np.float32: dict(rtol=2e-4, atol=2e-6),
}


@pytest.fixture
def x64():
    """Enables float64 in JAX for one test and restores the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@functools.cache
def _jitted_value_and_grad(name, num_floats):
    """One jitted function per loss, so tests on the same shapes share a compile."""
    case = CASES[name]

    def total(*inputs):
        values = case.flat_loss(*inputs)
        return jnp.sum(values), values

    return jax.jit(jax.value_and_grad(total, tuple(range(num_floats)), has_aux=True))


def _jax_value_and_grads(case, inputs):
    num_floats = len(case.split(inputs)[0])
    (_, values), grads = _jitted_value_and_grad(case.name, num_floats)(*inputs)
    return np.asarray(values), [np.asarray(g) for g in grads]


def _torch_value_and_grads(case, inputs):
    floats, ints = case.split(inputs)
    floats = [torch.tensor(x, requires_grad=True) for x in floats]
    ints = [torch.from_numpy(np.asarray(y, np.int64)) for y in ints]
    function = getattr(reference, case.torch_name)
    values = function(*case.regroup(floats), *ints, **dict(case.torch_kwargs))
    values.sum().backward()
    # An input that enters only through comparisons (AB's teacher) gets no gradient.
    grads = [
        np.zeros_like(x.detach().numpy()) if x.grad is None else x.grad.numpy() for x in floats
    ]
    return values.detach().numpy(), grads


def _compare(case, inputs, dtype, tolerance=None):
    inputs = tuple(x.astype(dtype) if x.dtype.kind == "f" else x for x in inputs)
    want_values, want_grads = _torch_value_and_grads(case, inputs)
    got_values, got_grads = _jax_value_and_grads(case, inputs)
    assert got_values.dtype == dtype
    assert got_values.shape == (() if case.batch_loss else (len(inputs[0]),))
    tolerance = tolerance or _TOLERANCES[dtype]
    np.testing.assert_allclose(got_values, want_values, **tolerance)
    for got, want in zip(got_grads, want_grads, strict=True):
        # Gradients are compared relative to their largest entry (float32 rounding
        # is relative to the size of the terms, not of each small entry).
        scale = max(np.abs(want).max(), 1e-12)
        np.testing.assert_allclose(got / scale, want / scale, **tolerance)
    return got_values, got_grads


@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_in_float64(x64, name, variant):
    _compare(CASES[name], CASES[name].inputs(variant), np.float64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_in_float32(name):
    _compare(CASES[name], CASES[name].inputs("a"), np.float32)


# RepDistiller takes a mean over no pairs (NaN) for a batch of 1; kdjax returns 0.
_ZERO_FOR_A_BATCH_OF_ONE = ("rkd", "cc_repdistiller")


def _batch_of_one_is_zero(case, inputs):
    """A batch of one has no pairs: kdjax returns 0 with zero gradients."""
    values, grads = _jax_value_and_grads(case, inputs)
    assert values == 0.0
    assert all(np.all(g == 0.0) for g in grads)


# Batches of 1 and 2 are only degenerate for the losses that relate examples.
_DEGENERATE_CASES = [
    (name, degenerate)
    for name in sorted(CASES)
    for degenerate in DEGENERATE
    if CASES[name].batch_loss or not degenerate.startswith("batch")
]


@pytest.mark.parametrize(("name", "degenerate"), _DEGENERATE_CASES)
def test_degenerate_batches_are_finite_and_match_torch(x64, name, degenerate):
    case = CASES[name]
    inputs = case.inputs("a", degenerate)
    if name in _ZERO_FOR_A_BATCH_OF_ONE and degenerate == "batch_1":
        _batch_of_one_is_zero(case, inputs)
        return
    # Degenerate batches sit next to 0/0 points (e.g. DIST's columns of identical
    # rows are centred to rounding noise), where float64 rounding differs more.
    values, grads = _compare(case, inputs, np.float64, dict(rtol=1e-7, atol=1e-8))
    assert np.all(np.isfinite(values))
    assert all(np.all(np.isfinite(g)) for g in grads)
