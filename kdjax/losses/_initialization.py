"""Feature losses that initialise a student before its classification training:
activation boundaries (AB) and the flow of solution procedure (FSP).

Both papers, and RepDistiller, use them in a first stage that trains only the
student's feature layers (and AB's connector) against the teacher, followed by
ordinary training with the labels. Both read several stages of the networks (one
NHWC map per stage) and return one value per example; the batch mean equals
RepDistiller's summed loss named in each docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    as_float,
    check_ndim,
    check_non_negative,
    check_same_batch,
    check_same_shape,
    match_spatial,
    stages,
    sum_over_stages,
)

_NHWC = "NHWC [batch, height, width, channels]"

# The authors' code (bhheo/AB_distillation), kept by RepDistiller's ``ABLoss``, divides
# the summed criterion by 1000 and multiplies it by 3.
_AB_SCALE = 3.0 / 1000.0


def _boundary_criterion(student: Array, teacher: Array, margin: Array) -> Array:
    """The element-wise alternative L2 criterion of AB (its Eq. 9)."""
    teacher_active = teacher > 0
    below = (student + margin) ** 2 * ((student > -margin) & ~teacher_active)
    above = (student - margin) ** 2 * ((student <= margin) & teacher_active)
    return below + above


def activation_boundary_loss(
    s_map: ArrayLike, t_map: ArrayLike, *, margin: ArrayLike = 1.0
) -> Array:
    """Activation boundaries (AB): the student's neurons should fire where the teacher's do.

    For the connector's output ``s`` (the student's pre-activation map carried to the
    teacher's shape) and the teacher's pre-activation map ``t``, element-wise::

        ℓ(s, t) = (s + m)² · [s > −m and t <= 0] + (s − m)² · [s <= m and t > 0]

    which pushes ``s`` below ``−m`` where the teacher's neuron is off and above
    ``m`` where it is on. Over ``n`` stages ``k = 0 … n−1`` the per-example loss is::

        (3 / 1000) · Σ_k 2^(k − n + 1) · Σ_{h,w,c} ℓ(s_k, t_k)

    (later stages weigh more: ``1/4, 1/2, 1`` for three; one map has weight 1).
    Its batch mean equals RepDistiller's ``sum(ABLoss(n, margin)(g_s, g_t))``, which
    sums the criterion over the batch and divides by the batch size; the ``3/1000``
    and the stage weights are the authors' code's. Gradients reach ``s`` only (the
    indicators are constants).

    What RepDistiller does with it: the maps are the *pre-activation* outputs of the
    three stages (``feat[1:-1]`` with ``preact=True``: each stage's last residual sum
    before its ReLU), for teacher and student. The connector, per stage, is the
    identity when the channel counts and sizes already match (resnet56 → resnet20)
    and otherwise a convolution + BatchNorm without ReLU (``ConvReg(use_relu=False)``).
    The loss is used only in an initialisation stage: 30 epochs (``--init_epochs``)
    of SGD (lr 0.05, momentum 0.9, weight decay 5e-4) on the connector and the
    student's feature layers with this loss alone (no weight), after which the
    student trains for 240 epochs with cross-entropy only (``loss_kd = 0``; the
    ``-b 1`` of its script is unused).

    Args:
      s_map: ``[batch, H, W, C]`` connector output (NHWC), or a list/tuple of them,
        one per stage, earliest first.
      t_map: the teacher's pre-activation maps, each of its stage's ``s_map`` shape.
      margin: ``m >= 0`` (paper and RepDistiller: 1); may be traced.

    Returns:
      ``[batch]`` per-example losses, ``>= 0``.

    References:
      Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation
      Boundaries Formed by Hidden Neurons", AAAI 2019.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import activation_boundary_loss
      >>> t = jnp.array([-1.0, 1.0]).reshape(1, 1, 2, 1)  # teacher: off, on
      >>> s = jnp.array([0.0, 0.0]).reshape(1, 1, 2, 1)  # student: on the boundary
      >>> print(activation_boundary_loss(s, t).round(6))  # 3/1000 · ((0 + 1)² + (0 − 1)²)
      [0.006]
    """
    check_non_negative("margin", margin)
    pairs = stages(s_map=s_map, t_map=t_map)
    per_stage = []
    for index, ((s_name, student), (t_name, teacher)) in enumerate(pairs):
        student = as_float(s_name, student)
        teacher = as_float(t_name, teacher)
        check_ndim(s_name, student, 4, _NHWC)
        check_same_shape(s_name, student, t_name, teacher)
        criterion = _boundary_criterion(student, teacher, jnp.asarray(margin, student.dtype))
        weight = _AB_SCALE * 2.0 ** (index - len(pairs) + 1)
        per_stage.append((s_name, weight * jnp.sum(criterion, axis=(1, 2, 3))))
    return sum_over_stages(per_stage)


def _fsp_matrices(name: str, maps: Sequence[ArrayLike]) -> list[tuple[str, Array]]:
    """``G[i, j] = mean_{h,w} a[h,w,i] · b[h,w,j]`` for consecutive maps ``a``, ``b``."""
    maps = [as_float(f"{name}[{index}]", x) for index, x in enumerate(maps)]
    for index, x in enumerate(maps):
        check_ndim(f"{name}[{index}]", x, 4, _NHWC)
    matrices = []
    for index in range(len(maps) - 1):
        lower_name, upper_name = f"{name}[{index}]", f"{name}[{index + 1}]"
        lower, upper = match_spatial(lower_name, maps[index], upper_name, maps[index + 1])
        positions = lower.shape[1] * lower.shape[2]
        gram = jnp.einsum("bhwi,bhwj->bij", lower, upper) / positions
        matrices.append((lower_name, gram))
    return matrices


def fsp_loss(s_maps: Sequence[ArrayLike], t_maps: Sequence[ArrayLike]) -> Array:
    """Flow of solution procedure (FSP): match the Gram matrices between consecutive stages.

    For consecutive maps ``a`` (``C_a`` channels) and ``b`` (``C_b``) of one network,
    the larger average-pooled to the smaller's height and width, the FSP matrix is
    ``G[i, j] = mean_{h,w} a[h,w,i] · b[h,w,j]`` (``C_a × C_b``). The per-example
    loss sums, over the ``n − 1`` consecutive pairs, the mean squared difference of
    the student's and teacher's matrices::

        Σ_k mean_{i,j} (G_k^s[i, j] − G_k^t[i, j])²

    Its batch mean equals RepDistiller's ``sum(FSP(...)(g_s, g_t))`` (a mean over
    the matrix entries, where the paper sums them: the paper's loss over
    ``C_a · C_b``). The student's and teacher's channel counts must be equal stage
    by stage (RepDistiller raises otherwise); their spatial sizes may differ.

    What RepDistiller does with it: the maps are ``feat[:-1]``, the stem's output and
    the three stages' (four maps, three matrices). The loss is used only in an
    initialisation stage: 30 epochs of SGD (lr 0.05, momentum 0.9, weight decay
    5e-4) on the student's feature layers with this loss alone (no weight), after
    which the student trains for 240 epochs with cross-entropy only (``loss_kd = 0``;
    the ``-b 50`` of its script is unused). No trainable part is added.

    Args:
      s_maps: a list/tuple of at least two ``[batch, H, W, C]`` student maps (NHWC),
        earliest first.
      t_maps: the teacher's maps, as many, with the same channel counts.

    Returns:
      ``[batch]`` per-example losses, ``>= 0``.

    References:
      Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization,
      Network Minimization and Transfer Learning", CVPR 2017.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import fsp_loss
      >>> ones = jnp.ones((1, 2, 2, 1))
      >>> fsp_loss([ones, ones], [ones, 3.0 * ones]).tolist()  # G: 1 and 3
      [4.0]
    """
    for name, maps in (("s_maps", s_maps), ("t_maps", t_maps)):
        if not isinstance(maps, (list, tuple)) or len(maps) < 2:
            raise ValueError(f"{name} must be a list/tuple of at least two NHWC maps.")
    if len(s_maps) != len(t_maps):
        raise ValueError(
            f"s_maps and t_maps must hold as many maps, got {len(s_maps)} and {len(t_maps)}."
        )
    student = _fsp_matrices("s_maps", s_maps)
    teacher = _fsp_matrices("t_maps", t_maps)
    per_stage = []
    for (s_name, s_gram), (t_name, t_gram) in zip(student, teacher, strict=True):
        check_same_batch(s_name, s_gram, t_name, t_gram)
        if s_gram.shape != t_gram.shape:
            raise ValueError(
                f"{s_name} and {t_name} and the maps after them must have the same channel "
                f"counts (FSP matrices {s_gram.shape[1:]} and {t_gram.shape[1:]})."
            )
        per_stage.append((s_name, jnp.mean(jnp.square(s_gram - t_gram), axis=(1, 2))))
    return sum_over_stages(per_stage)
