"""Hinton-style logit losses: cross-entropy, temperature-scaled KL, soft-target
cross-entropy, their combination ``kd_loss`` and the optional logit standardisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    as_float,
    as_labels,
    check_logits,
    check_positive,
    check_same_shape,
    check_unit_interval,
    safe_norm,
)

# Sun et al.'s ``normalize``: ``(z − mean) / (1e-7 + std)``, with the unbiased std.
_STANDARDIZE_EPSILON = 1e-7


def standardize_logits(logits: ArrayLike) -> Array:
    """Z-scores each row of logits over its class axis (Sun et al., CVPR 2024).

    ``(z − mean(z)) / (std(z) + 1e-7)`` with the unbiased standard deviation, as
    the reference code's ``(logit - logit.mean(-1)) / (1e-7 + logit.std(-1))``
    (PyTorch's ``std`` divides by ``C − 1``). A constant row maps to zeros; its
    gradient is finite (PyTorch's ``std`` gives NaN there).

    Args:
      logits: ``[..., num_classes]`` with ``num_classes >= 2``.

    Returns:
      ``[..., num_classes]`` standardised logits.

    References:
      Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import standardize_logits
      >>> print(standardize_logits(jnp.array([[1.0, 2.0, 3.0]])).round(4))
      [[-1.  0.  1.]]
    """
    logits = as_float("logits", logits)
    check_logits("logits", logits, min_classes=2)
    centered = logits - jnp.mean(logits, axis=-1, keepdims=True)
    std = safe_norm(centered, axis=-1, keepdims=True) / jnp.sqrt(logits.shape[-1] - 1.0)
    return centered / (std + _STANDARDIZE_EPSILON)


def softened_log_probs(student_logits, teacher_logits, temperature, standardize=False):
    """Validated ``log softmax(student/T)``, ``log softmax(teacher/T)`` and ``T``."""
    student_logits = as_float("student_logits", student_logits)
    teacher_logits = as_float("teacher_logits", teacher_logits)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_positive("temperature", temperature)
    if standardize:
        check_logits("student_logits", student_logits, min_classes=2)
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    temperature = jnp.asarray(temperature, student_logits.dtype)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return student_log_probs, teacher_log_probs, temperature


def kl_from_log_probs(teacher_log_probs: Array, student_log_probs: Array) -> Array:
    """``Σ_c p_c (log p_c − log q_c)`` over the last axis, with PyTorch ``kl_div``'s
    conventions: a class with ``p_c = 0`` contributes 0 (``xlogy``), a NaN in ``p``
    makes the row NaN (value and gradient alike)."""
    teacher_probs = jnp.exp(teacher_log_probs)
    # Only exact zeros are dropped: NaN compares unequal to 0 and so propagates. The
    # inner where keeps log p finite so the unused branch has no NaN gradient.
    zero = teacher_probs == 0
    safe_teacher_log_probs = jnp.where(zero, 0.0, teacher_log_probs)
    pointwise = teacher_probs * (safe_teacher_log_probs - student_log_probs)
    return jnp.sum(jnp.where(zero, 0.0, pointwise), axis=-1)


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Softmax cross-entropy with integer labels, per example.

    ``-log softmax(logits)[labels]``; the batch mean equals PyTorch
    ``F.cross_entropy(logits, labels)``. A label outside ``[0, num_classes)``
    (``-1`` included: it is *not* read as the last class) makes that example's
    value and gradient NaN, so a training loop's finite-loss check catches it.

    Args:
      logits: ``[..., num_classes]`` floating-point scores.
      labels: ``[...]`` integer class ids in ``[0, num_classes)``.

    Returns:
      ``[...]`` per-example losses.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import cross_entropy
      >>> cross_entropy(jnp.array([[0.0, 0.0], [0.0, 0.0]]), jnp.array([0, 2])).tolist()
      [0.6931471824645996, nan]
    """
    return labelled_cross_entropy(logits, labels, logits_name="logits")


def labelled_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, logits_name: str) -> Array:
    """:func:`cross_entropy` whose errors name the logits ``logits_name``."""
    logits = as_float(logits_name, logits)
    check_logits(logits_name, logits)
    labels = as_labels("labels", labels, logits.shape[:-1], logits_name)
    valid = (labels >= 0) & (labels < logits.shape[-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)
    # Multiplying (not replacing) by NaN makes the gradient NaN as well as the value.
    return -picked[..., 0] * jnp.where(valid, 1.0, jnp.nan).astype(logits.dtype)


def distillation_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike,
    standardize: bool = False,
) -> Array:
    """Temperature-scaled KL divergence from teacher to student, per example.

    ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))
    = T² · Σ_c p_c (log p_c − log q_c)`` with ``p = softmax(teacher/T)`` and
    ``q = softmax(student/T)``. The ``T²`` factor keeps the gradient magnitude of
    the soft term comparable across temperatures (Hinton et al., 2015, §2).

    The batch mean equals PyTorch
    ``T**2 * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean')``,
    including its edge cases: a teacher logit of ``-inf`` (a masked class) contributes
    0; a NaN or ``+inf`` teacher logit makes that row's value and gradient NaN.

    With ``standardize=True`` both sides are first z-scored per row
    (:func:`standardize_logits`, Sun et al., CVPR 2024), so the student matches the
    teacher's logit *relations* rather than their scale; ``T`` then acts as their
    "base temperature" (e.g. 2).

    Args:
      student_logits: ``[..., num_classes]`` student scores (gradients flow here).
      teacher_logits: ``[..., num_classes]`` teacher scores (treated as constants:
        wrap them in ``jax.lax.stop_gradient`` yourself if they are not).
      temperature: scalar ``T > 0``; may be a traced array.
      standardize: Python bool, z-score the logits first (needs ``num_classes >= 2``).

    Returns:
      ``[...]`` per-example losses, ``>= 0``.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import distillation_kl
      >>> s, t = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[3.0, 2.0, 1.0]])
      >>> print(distillation_kl(s, t, temperature=2.0).round(4))
      [1.2806]
      >>> print(distillation_kl(s, 10 * s, temperature=2.0, standardize=True).round(4))
      [0.]
    """
    student_log_probs, teacher_log_probs, temperature = softened_log_probs(
        student_logits, teacher_logits, temperature, standardize
    )
    return temperature**2 * kl_from_log_probs(teacher_log_probs, student_log_probs)


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

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import soft_target_cross_entropy
      >>> s = jnp.zeros((1, 4))
      >>> print(soft_target_cross_entropy(s, s, temperature=1.0).round(4))  # log 4
      [1.3863]
    """
    student_log_probs, teacher_log_probs, temperature = softened_log_probs(
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
    standardize: bool = False,
) -> Array:
    """Hinton-style distillation loss, per example.

    ``alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(t/T) ‖ softmax(s/T))``:
    ``alpha`` weights the hard labels, ``1 − alpha`` the teacher (the convention
    of seeds 000, 003 and 004). The batch mean equals PyTorch::

        alpha * F.cross_entropy(s, y) + (1 - alpha) * T**2 * F.kl_div(
            F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean')

    which is seed 000's loss with the temperature applied to both sides (the seed
    softens only the student). For two independent weights (seeds 001/002), add
    :func:`cross_entropy` and :func:`distillation_kl` yourself. With
    ``standardize=True`` only the KL term sees z-scored logits (as in Sun et al.'s
    code); the cross-entropy keeps the raw student logits.

    Args:
      student_logits: ``[..., num_classes]`` student scores.
      teacher_logits: ``[..., num_classes]`` teacher scores.
      labels: ``[...]`` integer class ids; one outside ``[0, num_classes)`` gives NaN.
      temperature: scalar ``T > 0``; may be a traced array.
      alpha: scalar in ``[0, 1]``, weight of the hard-label term; may be traced.
      standardize: Python bool, z-score the logits of the KL term.

    Returns:
      ``[...]`` per-example losses.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015;
      Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import kd_loss
      >>> s, t = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[3.0, 2.0, 1.0]])
      >>> print(kd_loss(s, t, jnp.array([2]), temperature=2.0, alpha=0.5).round(4))
      [0.8441]
    """
    check_unit_interval("alpha", alpha)
    hard = labelled_cross_entropy(student_logits, labels, logits_name="student_logits")
    soft = distillation_kl(
        student_logits, teacher_logits, temperature=temperature, standardize=standardize
    )
    alpha = jnp.asarray(alpha, hard.dtype)
    return alpha * hard + (1.0 - alpha) * soft
