"""Argument checks and small numerically guarded helpers shared by the loss modules.

Everything here runs at trace time or is a pure ``jax.numpy`` expression; the
error messages name the offending argument so a bad call is easy to locate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

# PyTorch's ``F.normalize`` divides by ``max(‖x‖, eps)`` with this eps.
NORMALIZE_EPSILON = 1e-12

# The largest temperature the losses accept. In float32 the temperature-scaled losses
# match an exact reference to ~1e-6 relative (values and gradients) at every decade up
# to it (tests/test_losses_temperature.py); T²·KL is within ~|logits| / T of its
# T → ∞ limit long before. They hold to ~1e14-1e16, until the squared logit
# differences over T and then T² leave float32's range: the bound keeps that margin.
MAX_TEMPERATURE = 1e6


def as_float(name: str, value: ArrayLike) -> Array:
    """``value`` as a floating array of at least float32 (bfloat16/float16 are upcast)."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def as_labels(name: str, labels: ArrayLike, shape: tuple[int, ...], logits_name: str) -> Array:
    """Integer ``labels`` of ``shape`` (the logits' shape without the class axis)."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {labels.dtype}.")
    if labels.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape} ({logits_name} without the class axis), "
            f"got {labels.shape}."
        )
    return labels


def check_same_shape(name_a: str, a: Array, name_b: str, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}."
        )


def check_same_batch(name_a: str, a: Array, name_b: str, b: Array) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size (axis 0), "
            f"got {a.shape[0]} and {b.shape[0]}."
        )


def check_logits(name: str, logits: Array, *, min_classes: int = 1) -> None:
    if logits.ndim < 1 or logits.shape[-1] < min_classes:
        raise ValueError(
            f"{name} must have a class axis (last axis) of at least {min_classes} "
            f"class(es), got shape {logits.shape}."
        )


def check_batched(name: str, features: Array) -> None:
    if features.ndim < 2:
        raise ValueError(
            f"{name} must have a batch axis and at least one feature axis, "
            f"got shape {features.shape}."
        )


def check_ndim(name: str, array: Array, ndim: int, layout: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {layout} ({ndim} axes), got shape {array.shape}.")


def concrete(value: ArrayLike) -> np.ndarray | None:
    """The value as a float64 numpy array when it is known at trace time, else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=np.float64)


def check_positive(name: str, value: ArrayLike) -> None:
    """Raises unless a concrete ``value`` is finite and > 0 (traced values pass)."""
    known = concrete(value)
    if known is not None and not np.all(np.isfinite(known) & (known > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {value}.")


def check_temperature(name: str, value: ArrayLike) -> None:
    """Raises unless a concrete ``value`` is finite, > 0 and <= ``MAX_TEMPERATURE``
    (traced values pass)."""
    known = concrete(value)
    if known is not None and not np.all(
        np.isfinite(known) & (known > 0) & (known <= MAX_TEMPERATURE)
    ):
        raise ValueError(
            f"{name} must be finite, > 0 and <= {MAX_TEMPERATURE:g} (MAX_TEMPERATURE: the "
            f"float32 losses are tested up to it), got {value}."
        )


def check_non_negative(name: str, value: ArrayLike) -> None:
    """Raises unless a concrete ``value`` is finite and >= 0 (traced values pass)."""
    known = concrete(value)
    if known is not None and not np.all(np.isfinite(known) & (known >= 0)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}.")


def check_unit_interval(name: str, value: ArrayLike) -> None:
    """Raises unless a concrete ``value`` lies in [0, 1] (traced values pass)."""
    known = concrete(value)
    if known is not None and not np.all((known >= 0) & (known <= 1)):
        raise ValueError(f"{name} must be in [0, 1], got {value}.")


def check_static_int(name: str, value: Any, minimum: int) -> int:
    """A Python int >= ``minimum`` (it fixes a shape or a loop, so it cannot be traced)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}.")
    return int(value)


def safe_norm(x: Array, axis: int | tuple[int, ...] = -1, keepdims: bool = False) -> Array:
    """Euclidean norm whose gradient at ``x = 0`` is 0 instead of NaN.

    This is the subgradient PyTorch's ``norm`` returns at 0, so guarded
    normalisations below have the same derivative as their PyTorch counterparts.
    """
    squared = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def absolute(x: Array) -> Array:
    """``|x|`` with gradient ``sign(x)``, so 0 at ``x = 0`` as PyTorch's ``abs`` (JAX's is 1)."""
    return x * jax.lax.stop_gradient(jnp.sign(x))


def normalize(x: Array, axis: int = -1) -> Array:
    """PyTorch ``F.normalize(x, dim=axis)``: ``x / max(‖x‖, 1e-12)``; zero rows stay zero."""
    return x / jnp.maximum(safe_norm(x, axis=axis, keepdims=True), NORMALIZE_EPSILON)


def match_spatial(name_a: str, a: Array, name_b: str, b: Array) -> tuple[Array, Array]:
    """Average-pools the larger of two NHWC maps down to the other's height and width.

    Equals PyTorch's ``F.adaptive_avg_pool2d`` (which RepDistiller's AT/NST/VID use)
    when the sizes divide evenly; other ratios raise ``ValueError``.
    """
    check_same_batch(name_a, a, name_b, b)
    height, width = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])

    def pool(name: str, x: Array) -> Array:
        if x.shape[1] % height or x.shape[2] % width:
            raise ValueError(
                f"{name} has spatial size {x.shape[1:3]}, not a multiple of "
                f"{(height, width)}: pool the maps to a common size first."
            )
        fh, fw = x.shape[1] // height, x.shape[2] // width
        return x.reshape(x.shape[0], height, fh, width, fw, x.shape[3]).mean(axis=(2, 4))

    return pool(name_a, a), pool(name_b, b)


def stages(**arguments: Any) -> list[tuple[tuple[str, Any], ...]]:
    """The arguments of a loss that reads one array or one per network stage, stage by stage.

    Each argument is either one array (a single stage) or a list/tuple of arrays (one
    per stage, e.g. RepDistiller's ``feat[1:-1]``); all must be of the same kind and
    length. Returns, for each stage, the ``(name, value)`` of every argument in order,
    named ``s_map[1]`` etc. for a sequence so error messages point at the stage.
    """
    names = list(arguments)
    sequences = [isinstance(value, (list, tuple)) for value in arguments.values()]
    if not any(sequences):
        return [tuple(arguments.items())]
    listed = ", ".join(names)
    if not all(sequences):
        raise ValueError(
            f"{listed} must all be single arrays or all sequences (one array per stage), "
            f"got {', '.join(type(value).__name__ for value in arguments.values())}."
        )
    lengths = [len(value) for value in arguments.values()]
    if len(set(lengths)) != 1 or lengths[0] == 0:
        raise ValueError(
            f"{listed} must hold the same non-zero number of stages, got lengths {lengths}."
        )
    return [
        tuple((f"{name}[{index}]", arguments[name][index]) for name in names)
        for index in range(lengths[0])
    ]


def sum_over_stages(per_stage: list[tuple[str, Array]]) -> Array:
    """The sum of ``(name, [batch] losses)`` over stages, which must share one batch size
    (the name is the stage's first argument, for the error message)."""
    first_name, total = per_stage[0]
    for name, value in per_stage[1:]:
        check_same_batch(first_name, total, name, value)
        total = total + value
    return total
