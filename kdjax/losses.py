"""Knowledge-distillation losses as plain JAX functions.

This module depends on `jax` and numpy alone (no Flax, no optax), so it can be imported
into any JAX research code: ``from kdjax.losses import kd_loss``.

Conventions, following optax's losses:

* Data arguments are positional; hyperparameters are keyword-only.
* Each loss returns **one value per example**; the caller reduces (usually with
  ``jnp.mean``). The batch mean of each loss equals the PyTorch expression named
  in its docstring.
* Logit losses reduce over the last (class) axis and keep every leading axis.
  Feature losses treat axis 0 as the batch axis and reduce over all the others.
* Arithmetic is done in at least float32, so bfloat16/float16 inputs do not lose
  the softmax; the result has that promoted dtype.
* Shape and dtype problems raise ``ValueError``/``TypeError`` at trace time with
  a message that names the argument. ``temperature`` and ``alpha`` may be traced
  arrays (so one compiled step serves a whole sweep); when they are concrete
  (numbers or arrays known at trace time) they are range-checked too. Labels are
  not range-checked (they are usually traced): a label outside ``[0, C)`` gives NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

__all__ = [
    "cosine_embedding_loss",
    "cross_entropy",
    "distillation_kl",
    "hint_loss",
    "kd_loss",
    "soft_target_cross_entropy",
]

# PyTorch's CosineEmbeddingLoss adds this to each squared norm before the square
# root (ATen `cosine_embedding_loss`), which keeps an all-zero row finite.
_COSINE_EPSILON = 1e-12


def _as_float(name: str, value: ArrayLike) -> Array:
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def _check_same_shape(name_a: str, a: Array, name_b: str, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}."
        )


def _check_logits(name: str, logits: Array) -> None:
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a class axis (last axis), got shape {logits.shape}.")


def _check_batched(name: str, features: Array) -> None:
    if features.ndim < 2:
        raise ValueError(
            f"{name} must have a batch axis and at least one feature axis, "
            f"got shape {features.shape}."
        )


def _concrete(value: ArrayLike):
    """The value as a numpy array when it is known at trace time, else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=np.float64)


def _check_positive(name: str, value: ArrayLike) -> None:
    concrete = _concrete(value)
    if concrete is not None and not np.all(concrete > 0):
        raise ValueError(f"{name} must be > 0, got {value}.")


def _check_unit_interval(name: str, value: ArrayLike) -> None:
    concrete = _concrete(value)
    if concrete is not None and not np.all((concrete >= 0) & (concrete <= 1)):
        raise ValueError(f"{name} must be in [0, 1], got {value}.")


def _softened_log_probs(student_logits, teacher_logits, temperature):
    """Validated ``log softmax(student/T)``, ``log softmax(teacher/T)`` and ``T``."""
    student_logits = _as_float("student_logits", student_logits)
    teacher_logits = _as_float("teacher_logits", teacher_logits)
    _check_logits("student_logits", student_logits)
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_positive("temperature", temperature)
    temperature = jnp.asarray(temperature, student_logits.dtype)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return student_log_probs, teacher_log_probs, temperature


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Softmax cross-entropy with integer labels, per example.

    ``-log softmax(logits)[labels]``; the batch mean equals PyTorch
    ``F.cross_entropy(logits, labels)``.

    Args:
      logits: ``[..., num_classes]`` floating-point scores.
      labels: ``[...]`` integer class ids in ``[0, num_classes)``.

    Returns:
      ``[...]`` per-example losses.
    """
    return _cross_entropy(logits, labels, logits_name="logits")


def _cross_entropy(logits: ArrayLike, labels: ArrayLike, *, logits_name: str) -> Array:
    logits = _as_float(logits_name, logits)
    _check_logits(logits_name, logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {logits.shape[:-1]} ({logits_name} without the class "
            f"axis), got {labels.shape}."
        )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def distillation_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: ArrayLike
) -> Array:
    """Temperature-scaled KL divergence from teacher to student, per example.

    ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))
    = T² · Σ_c p_c (log p_c − log q_c)`` with ``p = softmax(teacher/T)`` and
    ``q = softmax(student/T)``. The ``T²`` factor keeps the gradient magnitude of
    the soft term comparable across temperatures (Hinton et al., 2015, §2).

    The batch mean equals PyTorch
    ``T**2 * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean')``.

    Args:
      student_logits: ``[..., num_classes]`` student scores (gradients flow here).
      teacher_logits: ``[..., num_classes]`` teacher scores (treated as constants:
        wrap them in ``jax.lax.stop_gradient`` yourself if they are not).
      temperature: scalar ``T > 0``; may be a traced array.

    Returns:
      ``[...]`` per-example losses, ``>= 0``.
    """
    student_log_probs, teacher_log_probs, temperature = _softened_log_probs(
        student_logits, teacher_logits, temperature
    )
    teacher_probs = jnp.exp(teacher_log_probs)
    # Classes the teacher gives probability 0 (underflow, or a -inf logit that
    # masks a class) contribute 0, the xlogy convention of PyTorch's kl_div. The
    # inner where keeps log p finite so the unused branch has no NaN gradient.
    safe_teacher_log_probs = jnp.where(teacher_probs > 0, teacher_log_probs, 0.0)
    kl = jnp.sum(
        jnp.where(
            teacher_probs > 0, teacher_probs * (safe_teacher_log_probs - student_log_probs), 0.0
        ),
        axis=-1,
    )
    return temperature**2 * kl


def soft_target_cross_entropy(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: ArrayLike
) -> Array:
    """Temperature-scaled cross-entropy against the teacher's soft targets, per example.

    ``T² · (−Σ_c p_c log q_c)`` with ``p = softmax(teacher/T)``, ``q = softmax(student/T)``:
    the soft term of seed 003 (Keras' ``CategoricalCrossentropy`` on softened
    outputs, times ``T²``). It differs from :func:`distillation_kl` by
    ``T² · H(p)``, a constant with respect to the student, so both give the same
    gradient; only the reported value differs.

    Args:
      student_logits: ``[..., num_classes]`` student scores.
      teacher_logits: ``[..., num_classes]`` teacher scores.
      temperature: scalar ``T > 0``; may be a traced array.

    Returns:
      ``[...]`` per-example losses.
    """
    student_log_probs, teacher_log_probs, temperature = _softened_log_probs(
        student_logits, teacher_logits, temperature
    )
    teacher_probs = jnp.exp(teacher_log_probs)
    return -(temperature**2) * jnp.sum(teacher_probs * student_log_probs, axis=-1)


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: ArrayLike,
    alpha: ArrayLike,
) -> Array:
    """Hinton-style distillation loss, per example.

    ``alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(t/T) ‖ softmax(s/T))``:
    ``alpha`` weights the hard labels, ``1 − alpha`` the teacher (the convention
    of seeds 000, 003 and 004). The batch mean equals PyTorch::

        alpha * F.cross_entropy(s, y) + (1 - alpha) * T**2 * F.kl_div(
            F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean')

    which is seed 000's loss with the temperature applied to both sides (the seed
    softens only the student). For two independent weights (seeds 001/002), add
    :func:`cross_entropy` and :func:`distillation_kl` yourself.

    Args:
      student_logits: ``[..., num_classes]`` student scores.
      teacher_logits: ``[..., num_classes]`` teacher scores.
      labels: ``[...]`` integer class ids.
      temperature: scalar ``T > 0``; may be a traced array.
      alpha: scalar in ``[0, 1]``, weight of the hard-label term; may be traced.

    Returns:
      ``[...]`` per-example losses.
    """
    _check_unit_interval("alpha", alpha)
    hard = _cross_entropy(student_logits, labels, logits_name="student_logits")
    soft = distillation_kl(student_logits, teacher_logits, temperature=temperature)
    alpha = jnp.asarray(alpha, hard.dtype)
    return alpha * hard + (1.0 - alpha) * soft


def hint_loss(student_features: ArrayLike, teacher_features: ArrayLike) -> Array:
    """FitNets-style hint: mean squared error over all non-batch axes, per example.

    ``mean((s − t)², axes 1..)``. With equal-sized examples the batch mean equals
    PyTorch ``nn.MSELoss()(s, t)``. The trainable regressor that maps the
    student's features to the teacher's shape belongs to the student model, not
    to this loss (Romero et al., 2015).

    Args:
      student_features: ``[batch, ...]`` (e.g. the regressed conv map ``B×H×W×C``).
      teacher_features: the same shape.

    Returns:
      ``[batch]`` per-example losses.
    """
    student_features = _as_float("student_features", student_features)
    teacher_features = _as_float("teacher_features", teacher_features)
    _check_batched("student_features", student_features)
    _check_same_shape("student_features", student_features, "teacher_features", teacher_features)
    squared_error = jnp.square(student_features - teacher_features)
    return jnp.mean(squared_error.reshape(squared_error.shape[0], -1), axis=-1)


def cosine_embedding_loss(student_features: ArrayLike, teacher_features: ArrayLike) -> Array:
    """``1 − cos(student, teacher)`` on flattened features, per example.

    Matches PyTorch ``nn.CosineEmbeddingLoss()(s, t, torch.ones(B))`` (target 1),
    including its epsilon: ``cos = <s, t> / sqrt((|s|² + ε)(|t|² + ε))`` with
    ``ε = 1e-12``, so an all-zero row gives loss 1 with finite gradients instead
    of NaN.

    Args:
      student_features: ``[batch, ...]``; every non-batch axis is flattened.
      teacher_features: the same shape.

    Returns:
      ``[batch]`` per-example losses in ``[0, 2]``.
    """
    student_features = _as_float("student_features", student_features)
    teacher_features = _as_float("teacher_features", teacher_features)
    _check_batched("student_features", student_features)
    _check_same_shape("student_features", student_features, "teacher_features", teacher_features)
    batch = student_features.shape[0]
    student_flat = student_features.reshape(batch, -1)
    teacher_flat = teacher_features.reshape(batch, -1)
    dot = jnp.sum(student_flat * teacher_flat, axis=-1)
    student_sq = jnp.sum(jnp.square(student_flat), axis=-1) + _COSINE_EPSILON
    teacher_sq = jnp.sum(jnp.square(teacher_flat), axis=-1) + _COSINE_EPSILON
    return 1.0 - dot / jnp.sqrt(student_sq * teacher_sq)


def pool_features(features: ArrayLike, size: int) -> Array:
    """Average-pools flattened ``[batch, D]`` features to ``[batch, size]``.

    Adjacent groups of ``D / size`` elements are averaged: PyTorch
    ``F.avg_pool1d(features, D // size)``, as seed 002 uses to match the teacher's
    2048 features to the student's 1024 before the cosine loss. ``D`` must be a
    multiple of ``size``.
    """
    features = _as_float("features", features)
    _check_batched("features", features)
    flat = features.reshape(features.shape[0], -1)
    width = flat.shape[-1]
    if size < 1 or width % size:
        raise ValueError(f"cannot pool {width} features to {size}: {width} is not a multiple.")
    return jnp.mean(flat.reshape(flat.shape[0], size, width // size), axis=-1)
