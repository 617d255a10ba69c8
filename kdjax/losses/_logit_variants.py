"""Later logit-distillation losses: decoupled KD (DKD), per example, with the
linear warm-up its authors apply to it, and DIST's correlation matching, defined
over the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    as_float,
    as_labels,
    check_logits,
    check_ndim,
    check_non_negative,
    check_positive,
    check_same_shape,
    check_temperature,
    safe_norm,
)
from kdjax.losses._classification import (
    clamp_rounding,
    kl_from_log_probs,
    kl_from_logits,
    narrow_kl,
    shift_by_max,
)

# DIST's ``cosine_similarity(a, b, eps=1e-8)`` adds this to the product of norms.
_DIST_EPSILON = 1e-8


def _logit_pair(student_logits, teacher_logits, *, min_classes: int):
    student_logits = as_float("student_logits", student_logits)
    teacher_logits = as_float("teacher_logits", teacher_logits)
    check_logits("student_logits", student_logits, min_classes=min_classes)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    return student_logits, teacher_logits


def dkd_loss(
    s: ArrayLike,
    t: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 8.0,
    temperature: ArrayLike = 4.0,
) -> Array:
    """Decoupled knowledge distillation (DKD), per example.

    With ``p = softmax(t/T)``, ``q = softmax(s/T)`` and ``y`` the label::

        T² · (alpha · KL(b_p ‖ b_q) + beta · KL(p̂ ‖ q̂))

    where ``b = [p_y, 1 − p_y]`` is the binary target/non-target split (TCKD) and
    ``p̂ = softmax`` over the non-target classes only (NCKD). The batch mean equals
    mdistiller's ``dkd_loss`` except that the target class is excluded exactly
    instead of by subtracting 1000 from its logit (identical unless ``|logit/T|``
    approaches 1000). Like mdistiller's function, this is the distillation term
    only: add :func:`cross_entropy` yourself. A label outside ``[0, num_classes)``
    makes that example NaN (value and gradient). Both KLs are summed as in
    :func:`~kdjax.losses.distillation_kl`, so they keep their sign and precision at
    a high temperature.

    mdistiller's CIFAR-100 settings (``configs/cifar100/dkd/*.yaml`` over its
    defaults): ``CE_WEIGHT`` 1, ``alpha`` 1, ``temperature`` 4, and the term
    multiplied by :func:`linear_warmup` ``(epoch, 20)`` with epochs counted from 1
    (``min(epoch / 20, 1)``); ``beta`` depends on the pair: 2 for resnet56 →
    resnet20 and resnet110 → resnet32; 6 for wrn_40_2 → wrn_16_2, wrn_40_2 →
    wrn_40_1, vgg13 → vgg8 and vgg13 → MobileNetV2; the default 8 for resnet32x4 →
    resnet8x4, resnet32x4 → ShuffleV1/V2, wrn_40_2 → ShuffleV1 and ResNet50 →
    MobileNetV2. Its protocol is RepDistiller's (SGD 0.05, or 0.01 for the
    ShuffleNet/MobileNet students, batch 64, 240 epochs).

    Args:
      s: ``[..., num_classes]`` student logits, ``num_classes >= 2``.
      t: ``[..., num_classes]`` teacher logits.
      labels: ``[...]`` integer class ids.
      alpha: TCKD weight ``>= 0`` (paper: 1); may be traced.
      beta: NCKD weight ``>= 0`` (mdistiller: 8, or 2 / 6 for some pairs, above);
        may be traced.
      temperature: ``0 < T <= MAX_TEMPERATURE`` (paper: 4); may be traced.

    Returns:
      ``[...]`` per-example losses, ``>= 0``.

    References:
      Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import dkd_loss
      >>> s, t = jnp.array([[2.0, 1.0, 0.0]]), jnp.array([[2.0, 0.0, 1.0]])
      >>> print(dkd_loss(s, t, jnp.array([0]), alpha=0.0, beta=1.0, temperature=1.0).round(4))
      [0.4621]
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        check_non_negative(name, value)
    check_temperature("temperature", temperature)
    s, t = _logit_pair(s, t, min_classes=2)
    labels = as_labels("labels", labels, s.shape[:-1], "s")
    num_classes = s.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    target = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes, dtype=bool)
    temperature = jnp.asarray(temperature, s.dtype)
    difference = (t - s) / temperature  # formed before the division: see softened_logits
    # What shift_by_max takes out of the frame of `difference`.
    max_gap = (jnp.max(t, axis=-1) - jnp.max(s, axis=-1)) / temperature
    s, t = shift_by_max(s) / temperature, shift_by_max(t) / temperature
    # Non-target distributions: the target class masked on both sides.
    student_rest = jnp.where(target, -jnp.inf, s)
    teacher_rest = jnp.where(target, -jnp.inf, t)
    student_rest_lse = jax.nn.logsumexp(student_rest, axis=-1)
    teacher_rest_lse = jax.nn.logsumexp(teacher_rest, axis=-1)
    series, rest_mean, narrow = narrow_kl(teacher_rest, student_rest, difference)
    direct = kl_from_log_probs(
        teacher_rest - teacher_rest_lse[..., None], student_rest - student_rest_lse[..., None]
    )
    non_target_kl = jnp.where(narrow, series, clamp_rounding(direct))
    # The binary target/rest split has logits [x_y, logsumexp over the rest]; the
    # difference of the latter is E_p̂[d] − KL(p̂ ‖ q̂) on narrow rows (narrow_kl).
    rest_gap = jnp.where(narrow, rest_mean - series, teacher_rest_lse - student_rest_lse + max_gap)

    def split(target_value, rest_value):
        return jnp.stack([jnp.sum(jnp.where(target, target_value, 0.0), axis=-1), rest_value], -1)

    target_kl = kl_from_logits(
        split(t, teacher_rest_lse), split(s, student_rest_lse), split(difference, rest_gap)
    )
    loss = temperature**2 * (alpha * target_kl + beta * non_target_kl)
    return loss * jnp.where(valid, 1.0, jnp.nan).astype(loss.dtype)


def linear_warmup(step: ArrayLike, warmup_steps: ArrayLike) -> Array:
    """The warm-up factor ``min(step / warmup_steps, 1)``, clipped at 0 below.

    mdistiller multiplies its DKD term by ``min(epoch / warmup, 1.0)`` with the
    epoch counted from 1 and ``warmup = 20`` (``linear_warmup(epoch, 20)``: 1/20 in
    the first epoch, 1 from the 20th on). Counted in steps instead, the factor
    rises every step rather than once per epoch. Pure and traceable: ``step`` may
    be a traced array (e.g. the optimizer's step count).

    Args:
      step: the current epoch or step (a number or array; ``>= 0``).
      warmup_steps: the length of the ramp ``> 0``; may be traced.

    Returns:
      The float32 factor in ``[0, 1]``, of ``step``'s shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import linear_warmup
      >>> print(linear_warmup(jnp.array([0, 1, 10, 20, 240]), 20))
      [0.   0.05 0.5  1.   1.  ]
    """
    check_positive("warmup_steps", warmup_steps)
    step = jnp.asarray(step, jnp.float32)
    return jnp.clip(step / jnp.asarray(warmup_steps, jnp.float32), 0.0, 1.0)


def _predictions(shifted: Array) -> tuple[Array, Array]:
    """``(softmax − 1/C, softmax)`` per row of logits whose maximum is 0.

    A correlation ignores a constant shift of its vectors, and ``1/C`` is one for a
    row and for a column. With ``v = expm1(shifted)`` (in ``[−1, 0]``), ``softmax −
    1/C = (v − mean v) / (C (1 + mean v))`` keeps its relative precision when the row
    is nearly uniform (a high temperature), where ``softmax − 1/C`` would keep
    ``T·eps`` of it.
    """
    v = jnp.expm1(shifted)
    mean = jnp.mean(v, axis=-1, keepdims=True)
    centred = (v - mean) / (shifted.shape[-1] * (1.0 + mean))
    return centred, jax.nn.softmax(shifted, axis=-1)


def _columns(centred: Array, probs: Array) -> Array:
    """The columns of the predictions, each in whichever form is smaller in size (so
    loses least to the centring in the correlation): ``softmax − 1/C`` near
    uniform, ``softmax`` where the class's probabilities are small."""
    smaller = jnp.max(jnp.abs(centred), axis=0) < jnp.max(probs, axis=0)
    return jnp.where(smaller, centred, probs).T


def _mean_pearson(a: Array, b: Array) -> Array:
    """Mean over rows of the Pearson correlation of ``a[i]`` and ``b[i]`` (DIST's eps)."""
    a = a - jnp.mean(a, axis=-1, keepdims=True)
    b = b - jnp.mean(b, axis=-1, keepdims=True)
    norms = safe_norm(a, axis=-1) * safe_norm(b, axis=-1)
    return jnp.mean(jnp.sum(a * b, axis=-1) / (norms + _DIST_EPSILON))


def dist_loss(
    s: ArrayLike,
    t: ArrayLike,
    *,
    beta: ArrayLike = 1.0,
    gamma: ArrayLike = 1.0,
    temperature: ArrayLike = 1.0,
) -> Array:
    """DIST: match inter- and intra-class Pearson correlations of predictions, **scalar**.

    With ``Y = softmax(logits/T)`` (``[batch, classes]``) and ``ρ`` the Pearson
    correlation (``cos`` of the centred vectors, ``eps = 1e-8`` added to the norm
    product)::

        T² · (beta · (1 − mean_i ρ(Y_s[i,:], Y_t[i,:]))      # inter-class, per row
            + gamma · (1 − mean_c ρ(Y_s[:,c], Y_t[:,c])))    # intra-class, per column

    which equals the authors' ``DIST`` module (``tau**2`` included). It is defined
    over the batch (the intra-class term correlates each class's column across
    examples). A batch of 1 has constant columns: their ``ρ`` is 0, so the intra
    term is ``gamma · T²`` with zero gradient. The predictions enter the correlations
    as ``softmax − 1/C`` where that form is the more precise (near uniform), so the
    loss keeps its precision at a high temperature.

    Args:
      s: ``[batch, num_classes]`` student logits.
      t: ``[batch, num_classes]`` teacher logits.
      beta: inter-class weight ``>= 0`` (paper: 1 or 2); may be traced.
      gamma: intra-class weight ``>= 0`` (paper: 1 or 2); may be traced.
      temperature: ``0 < T <= MAX_TEMPERATURE`` (paper: 1 on ImageNet, 4 on
        CIFAR-100); may be traced.

    Returns:
      Scalar loss in ``[0, 2 T² (beta + gamma)]``.

    References:
      Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
      NeurIPS 2022.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import dist_loss
      >>> s = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
      >>> round(float(dist_loss(s, s + 5.0)), 6)  # softmax is shift invariant
      0.0
    """
    for name, value in (("beta", beta), ("gamma", gamma)):
        check_non_negative(name, value)
    check_temperature("temperature", temperature)
    s, t = _logit_pair(s, t, min_classes=1)
    check_ndim("s", s, 2, "[batch, num_classes]")
    temperature = jnp.asarray(temperature, s.dtype)
    student = _predictions(shift_by_max(s) / temperature)
    teacher = _predictions(shift_by_max(t) / temperature)
    inter = 1.0 - _mean_pearson(student[0], teacher[0])
    intra = 1.0 - _mean_pearson(_columns(*student), _columns(*teacher))
    return temperature**2 * (beta * inter + gamma * intra)
