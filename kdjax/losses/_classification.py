"""Hinton-style logit losses: cross-entropy, temperature-scaled KL, soft-target
cross-entropy, their combination ``kd_loss`` and the optional logit standardisation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    as_float,
    as_labels,
    check_logits,
    check_same_shape,
    check_temperature,
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


def softened_logits(student_logits, teacher_logits, temperature, standardize=False):
    """Validated ``(student/T, teacher/T, (teacher − student)/T, T)``.

    The difference is formed before the division, not from the two quotients, so it
    keeps its relative precision however large ``T`` is. The quotients are of the
    logits shifted by their row maximum (softmax ignores the shift).
    """
    student_logits = as_float("student_logits", student_logits)
    teacher_logits = as_float("teacher_logits", teacher_logits)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_temperature("temperature", temperature)
    if standardize:
        check_logits("student_logits", student_logits, min_classes=2)
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    temperature = jnp.asarray(temperature, student_logits.dtype)
    difference = (teacher_logits - student_logits) / temperature
    student, teacher = shift_by_max(student_logits), shift_by_max(teacher_logits)
    return student / temperature, teacher / temperature, difference, temperature


def shift_by_max(logits: Array) -> Array:
    """``logits − max`` per row (the max as a constant, as in ``jax.nn.log_softmax``)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    return logits - jax.lax.stop_gradient(top)


def kl_from_log_probs(teacher_log_probs: Array, student_log_probs: Array) -> Array:
    """``Σ_c p_c (log p_c − log q_c)`` over the last axis, with PyTorch ``kl_div``'s
    conventions: a class with ``p_c = 0`` contributes 0 (``xlogy``), a NaN in ``p``
    makes the row NaN (value and gradient alike)."""
    teacher_probs = jnp.exp(teacher_log_probs)
    # Only exact zeros are dropped: NaN compares unequal to 0 and so propagates. The
    # inner wheres keep both log-probabilities finite there (a class masked on
    # both sides is -inf on both), so the unused branch has no NaN gradient.
    zero = teacher_probs == 0
    safe_teacher_log_probs = jnp.where(zero, 0.0, teacher_log_probs)
    safe_student_log_probs = jnp.where(zero, 0.0, student_log_probs)
    pointwise = teacher_probs * (safe_teacher_log_probs - safe_student_log_probs)
    return jnp.sum(jnp.where(zero, 0.0, pointwise), axis=-1)


def kl_from_logits(teacher: Array, student: Array, difference: Array) -> Array:
    """``KL(softmax(teacher) ‖ softmax(student))`` over the last axis; never negative.

    ``difference`` is ``teacher − student``, formed by the caller where it is exact
    (:func:`softened_logits`). Rows where it spans at most ``_NARROW_SPREAD`` (every
    row at a high temperature) take :func:`narrow_kl`, to a few ulps of the KL however
    close the two distributions are; the others (far apart, or holding a NaN or
    ``±inf``) take the direct sum :func:`kl_from_log_probs`, whose conventions both
    share, with its negative rounding clamped at 0 (:func:`clamp_rounding`).
    """
    series, _, narrow = narrow_kl(teacher, student, difference)
    direct = kl_from_log_probs(
        jax.nn.log_softmax(teacher, axis=-1), jax.nn.log_softmax(student, axis=-1)
    )
    return jnp.where(narrow, series, clamp_rounding(direct))


def clamp_rounding(kl: Array) -> Array:
    """A direct sum's negative rounding (around ``−1e-19`` where both distributions
    are one-hot) set to 0, with no gradient; NaN stays NaN, gradient included."""
    return jnp.where(kl < 0, 0.0, kl)


# ``narrow_kl`` serves rows whose ``teacher − student`` spans at most this many nats
# over the classes in play: every row at a high temperature. ``e^8`` cannot overflow.
_NARROW_SPREAD = 8.0
# ``_excess`` sums its Taylor series below this ``|x|`` (to ``x**_EXCESS_ORDER``, below
# float64 rounding) and uses ``expm1(-x) + x`` above it, which loses at most 3 bits there.
_EXCESS_SERIES_BELOW = 0.5
_EXCESS_ORDER = 16


def _excess(x: Array) -> Array:
    """``e^{−x} − 1 + x`` (``>= 0``, ``≈ x²/2`` near 0) to within a few ulps of itself."""
    small = jnp.abs(x) < _EXCESS_SERIES_BELOW
    y = jnp.where(small, x, 0.0)
    # Σ_{k>=2} (−y)^k / k! = y² (1/2! − y/3! + y²/4! − …), in Horner form.
    series = jnp.zeros_like(y) + 1.0 / math.factorial(_EXCESS_ORDER)
    for k in range(_EXCESS_ORDER - 1, 1, -1):
        series = series * -y + 1.0 / math.factorial(k)
    return jnp.where(small, y * y * series, jnp.expm1(-x) + x)


def narrow_kl(teacher: Array, student: Array, difference: Array) -> tuple[Array, Array, Array]:
    """``(KL(p ‖ q), E_p[d], narrow)`` per row, ``p = softmax(teacher)``,
    ``q = softmax(student)``, ``d = difference = teacher − student``.

    ``q ∝ p·e^{−d}`` gives ``KL(p ‖ q) = log E_p[e^{−(d − E_p[d])}] = log1p(Σ_c p_c
    φ(d_c − E_p[d]))`` with ``φ(x) = e^{−x} − 1 + x >= 0``: a sum of non-negative terms
    that never forms ``log p − log q``. That difference of two numbers near ``−log C``
    loses everything at a high temperature (in float32 the direct sum comes out
    negative at ``T = 1e4``); this form keeps the KL's sign and relative precision,
    and ``T²·KL`` its high-temperature limit ``½ mean_c (D_c − mean D)²``,
    ``D = teacher_logits − student_logits`` (Hinton et al., 2015, §2.1).
    ``lse(teacher) − lse(student) = E_p[d] − KL``, which DKD needs.

    ``narrow`` marks the rows this applies to: finite, and ``d`` spanning at most
    ``_NARROW_SPREAD`` over the classes where ``p`` or ``q`` is non-zero (a class both
    mask is left out). The other rows' values are finite placeholders.
    """
    teacher_probs = jax.nn.softmax(teacher, axis=-1)
    in_play = (teacher_probs != 0) | (jax.nn.softmax(student, axis=-1) != 0)
    top = jnp.max(jnp.where(in_play, difference, -jnp.inf), axis=-1)
    bottom = jnp.min(jnp.where(in_play, difference, jnp.inf), axis=-1)
    narrow = top - bottom <= _NARROW_SPREAD  # False for NaN
    used = narrow[..., None] & in_play
    # Double where: the unused entries (NaN, ±inf) get no NaN gradient either.
    d = jnp.where(used, difference, 0.0)
    probs = jnp.where(used, teacher_probs, 0.0)
    mean = jnp.sum(probs * d, axis=-1, keepdims=True)
    centred = jnp.where(used, d - mean, 0.0)
    kl = jnp.log1p(jnp.sum(probs * _excess(centred), axis=-1))
    return kl, mean[..., 0], narrow


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
    "base temperature". The paper's CIFAR-100 KD setting (its code's
    ``--logit-stand --base-temp 2 --kd-weight 9`` over mdistiller's KD defaults) is
    ``0.1 · CE + 9 · distillation_kl(s, t, temperature=2, standardize=True)``
    (base temperature 3 for a few pairs, e.g. vgg13 → vgg8, as its logs name them):
    two independent weights, so add :func:`cross_entropy` and this term yourself
    rather than use :func:`kd_loss`'s ``alpha``. (RepDistiller has no logit
    standardisation: its CIFAR KD weights, 0.1 CE + 0.9 KD at ``T = 4``, are for
    plain KD.)

    In float32 the value and gradient keep ~1e-6 relative precision at any
    temperature up to :data:`MAX_TEMPERATURE` (1e6): the KL is summed in a form with
    non-negative terms that never subtracts ``log q`` from ``log p`` (two numbers
    near ``−log C`` whose difference shrinks like ``1/T``), so ``T²·KL`` reaches
    Hinton's high-temperature limit ``½ mean_c (D_c − mean D)²``, ``D = t − s``,
    instead of rounding noise times ``T²``.

    Args:
      student_logits: ``[..., num_classes]`` student scores (gradients flow here).
      teacher_logits: ``[..., num_classes]`` teacher scores (treated as constants:
        wrap them in ``jax.lax.stop_gradient`` yourself if they are not).
      temperature: scalar ``0 < T <= MAX_TEMPERATURE``; may be a traced array (then
        unchecked).
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
    student, teacher, difference, temperature = softened_logits(
        student_logits, teacher_logits, temperature, standardize
    )
    return temperature**2 * kl_from_logits(teacher, student, difference)


def soft_target_cross_entropy(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: ArrayLike
) -> Array:
    """Temperature-scaled cross-entropy against the teacher's soft targets, per example.

    ``T² · (−Σ_c p_c log q_c)`` with ``p = softmax(teacher/T)``, ``q = softmax(student/T)``:
    the soft term of the TensorFlow notebook (Keras' ``CategoricalCrossentropy`` on
    softened outputs, times ``T²``). It differs from :func:`distillation_kl` by
    ``T² · H(p)``, a constant with respect to the student, so both give the same
    gradient; only the reported value differs. It is computed as that sum, so its
    gradient keeps the KL's precision at a high temperature.

    Args:
      student_logits: ``[..., num_classes]`` student scores.
      teacher_logits: ``[..., num_classes]`` teacher scores.
      temperature: scalar ``0 < T <= MAX_TEMPERATURE``; may be a traced array (then
        unchecked).

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
    student, teacher, difference, temperature = softened_logits(
        student_logits, teacher_logits, temperature
    )
    teacher_log_probs = jax.nn.log_softmax(teacher, axis=-1)
    teacher_probs = jnp.exp(teacher_log_probs)
    zero = teacher_probs == 0  # a masked class adds 0 (xlogy), as in kl_from_log_probs
    entropy = -jnp.sum(teacher_probs * jnp.where(zero, 0.0, teacher_log_probs), axis=-1)
    return temperature**2 * (entropy + kl_from_logits(teacher, student, difference))


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
    of the R MNIST, TensorFlow and MLP notebooks). The batch mean equals PyTorch::

        alpha * F.cross_entropy(s, y) + (1 - alpha) * T**2 * F.kl_div(
            F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean')

    which is the R MNIST notebook's loss with the temperature applied to both sides
    (the notebook softens only the student). For two independent weights (the CIFAR-10
    CNN notebook, the PyTorch KD tutorial), add
    :func:`cross_entropy` and :func:`distillation_kl` yourself. With
    ``standardize=True`` only the KL term sees z-scored logits (as in Sun et al.'s
    code); the cross-entropy keeps the raw student logits. Their CIFAR-100 weights,
    0.1 CE + 9 KD at base temperature 2, do not sum to 1: see
    :func:`distillation_kl`.

    Args:
      student_logits: ``[..., num_classes]`` student scores.
      teacher_logits: ``[..., num_classes]`` teacher scores.
      labels: ``[...]`` integer class ids; one outside ``[0, num_classes)`` gives NaN.
      temperature: scalar ``0 < T <= MAX_TEMPERATURE``; may be a traced array.
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
