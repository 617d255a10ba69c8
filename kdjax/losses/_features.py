"""Feature-map losses compared one example at a time: FitNets hints, cosine,
attention transfer (AT), neuron-selectivity transfer (NST), variational
information distillation (VID) and factor transfer (FT).

Feature maps are NHWC (JAX's layout): ``[batch, height, width, channels]``. Every
loss here returns one value per example (axis 0); the batch mean equals the
reference implementation named in each docstring. AT, NST and VID read one map or
a sequence of maps, one per stage of the network, and sum the stages' losses as
RepDistiller does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    absolute,
    as_float,
    check_batched,
    check_ndim,
    check_non_negative,
    check_positive,
    check_same_shape,
    match_spatial,
    normalize,
    stages,
    sum_over_stages,
)

# PyTorch's CosineEmbeddingLoss adds this to each squared norm before the square
# root (ATen `cosine_embedding_loss`), which keeps an all-zero row finite.
_COSINE_EPSILON = 1e-12

_NHWC = "NHWC [batch, height, width, channels]"


def _feature_pair(student_name, student, teacher_name, teacher):
    student = as_float(student_name, student)
    teacher = as_float(teacher_name, teacher)
    check_batched(student_name, student)
    check_same_shape(student_name, student, teacher_name, teacher)
    return student, teacher


def _map_pair(student_name, student, teacher_name, teacher):
    student = as_float(student_name, student)
    teacher = as_float(teacher_name, teacher)
    check_ndim(student_name, student, 4, _NHWC)
    check_ndim(teacher_name, teacher, 4, _NHWC)
    return match_spatial(student_name, student, teacher_name, teacher)


def hint_loss(student_features: ArrayLike, teacher_features: ArrayLike) -> Array:
    """FitNets-style hint: mean squared error over all non-batch axes, per example.

    ``mean((s − t)², axes 1..)``. With equal-sized examples the batch mean equals
    PyTorch ``nn.MSELoss()(s, t)``, RepDistiller's ``HintLoss``. The trainable
    regressor that maps the student's features to the teacher's shape, and the
    choice of stage, are the caller's: RepDistiller reads the middle stage
    (``feat[2]``, ``--hint_layer 2``: the second of a CIFAR ResNet's three stages)
    of both networks and regresses the student's map with ``ConvReg`` (a
    convolution with bias — 1×1 for equal spatial sizes, 3×3 stride 2 when the
    student's map is twice the teacher's, a 4×4 stride-2 transposed one when half —
    then BatchNorm and ReLU), trained with the student; its CIFAR weight is β = 100
    beside CE weight 1. (``kdjax.models.connectors.ConvConnector`` is a plain
    convolution, without the BatchNorm and ReLU.)

    Args:
      student_features: ``[batch, ...]`` (e.g. the regressed conv map ``B×H×W×C``).
      teacher_features: the same shape.

    Returns:
      ``[batch]`` per-example losses.

    References:
      Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import hint_loss
      >>> hint_loss(jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1))).tolist()
      [1.0]
    """
    student, teacher = _feature_pair(
        "student_features", student_features, "teacher_features", teacher_features
    )
    squared_error = jnp.square(student - teacher)
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import cosine_embedding_loss
      >>> cosine_embedding_loss(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])).tolist()
      [1.0]
    """
    student, teacher = _feature_pair(
        "student_features", student_features, "teacher_features", teacher_features
    )
    batch = student.shape[0]
    student_flat = student.reshape(batch, -1)
    teacher_flat = teacher.reshape(batch, -1)
    dot = jnp.sum(student_flat * teacher_flat, axis=-1)
    student_sq = jnp.sum(jnp.square(student_flat), axis=-1) + _COSINE_EPSILON
    teacher_sq = jnp.sum(jnp.square(teacher_flat), axis=-1) + _COSINE_EPSILON
    return 1.0 - dot / jnp.sqrt(student_sq * teacher_sq)


def pool_features(features: ArrayLike, size: int) -> Array:
    """Average-pools flattened ``[batch, D]`` features to ``[batch, size]``.

    Adjacent groups of ``D / size`` elements are averaged: PyTorch
    ``F.avg_pool1d(features, D // size)``, as the PyTorch KD tutorial uses to match the
    teacher's 2048 features to the student's 1024 before the cosine loss. ``D`` must be
    a multiple of ``size``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import pool_features
      >>> pool_features(jnp.array([[1.0, 3.0, 5.0, 7.0]]), 2).tolist()
      [[2.0, 6.0]]
    """
    features = as_float("features", features)
    check_batched("features", features)
    flat = features.reshape(features.shape[0], -1)
    width = flat.shape[-1]
    if size < 1 or width % size:
        raise ValueError(f"cannot pool {width} features to {size}: {width} is not a multiple.")
    return jnp.mean(flat.reshape(flat.shape[0], size, width // size), axis=-1)


def attention_map(feature_map: Array, p: float) -> Array:
    """AT's spatial attention ``normalize(mean_c |x|^p)``, flattened to ``[batch, H·W]``."""
    # |x|^p with gradient 0 at x = 0 (PyTorch's choice for p >= 1, and no inf for p < 1).
    magnitude = jnp.abs(feature_map)
    nonzero = magnitude > 0
    power = jnp.where(nonzero, jnp.where(nonzero, magnitude, 1.0) ** p, 0.0)
    attention = jnp.mean(power, axis=-1)
    return normalize(attention.reshape(attention.shape[0], -1))


def attention_transfer_loss(s_map: ArrayLike, t_map: ArrayLike, *, p: float = 2) -> Array:
    """Attention transfer (AT): squared distance of normalised spatial attention maps.

    With ``Q = vec(mean_c |x_c|^p)`` (mean over channels, so the channel counts
    may differ) and ``q = Q / max(‖Q‖₂, 1e-12)``, one stage's per-example loss is
    ``mean_{h,w} (q_s − q_t)²`` (a mean over the ``H·W`` positions). Given
    sequences of maps (one per stage) the per-example loss is the **sum** over the
    stages. Its batch mean equals RepDistiller's ``sum(Attention()(g_s, g_t))``
    with ``g = feat[1:-1]`` (its ``train_student.py`` sums the per-stage
    ``(at(f_s) - at(f_t)).pow(2).mean()``, every stage weighted 1) and mdistiller's
    AT; both then weight the sum by ``beta = 1000``. The paper writes
    ``β/2 · ‖q_s − q_t‖₂`` (unsquared). Those codes use ``f.pow(p)``; this uses
    ``|f|^p`` as the paper does (the same for even ``p``). When a stage's spatial
    sizes differ by an integer factor the larger map is average-pooled first (their
    ``adaptive_avg_pool2d``). An all-zero map gives ``q = 0`` (finite gradients).

    Args:
      s_map: ``[batch, H, W, C_s]`` student feature map (NHWC), or a list/tuple of
        them, one per stage (RepDistiller: the outputs of a CIFAR ResNet's three
        stages, ``feat[1:-1]``).
      t_map: ``[batch, H', W', C_t]`` teacher feature map, or as many as ``s_map``.
      p: exponent ``> 0`` (a Python number).

    Returns:
      ``[batch]`` per-example losses in ``[0, 4 · Σ_stages 1 / (H·W)]``.

    References:
      Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import attention_transfer_loss
      >>> s = jnp.zeros((1, 2, 1, 3)).at[0, 0].set(1.0)  # all attention on row 0
      >>> t = jnp.zeros((1, 2, 1, 8)).at[0, 1].set(5.0)  # all attention on row 1
      >>> attention_transfer_loss(s, t).tolist()  # ((1 - 0)² + (0 - 1)²) / 2
      [1.0]
      >>> attention_transfer_loss([s, s], [t, s]).tolist()  # stages summed: 1 + 0
      [1.0]
    """
    check_positive("p", p)
    per_stage = []
    for (s_name, student), (t_name, teacher) in stages(s_map=s_map, t_map=t_map):
        student, teacher = _map_pair(s_name, student, t_name, teacher)
        difference = attention_map(student, p) - attention_map(teacher, p)
        per_stage.append((s_name, jnp.mean(jnp.square(difference), axis=-1)))
    return sum_over_stages(per_stage)


def _polynomial_kernel_mean(a: Array, b: Array) -> Array:
    """``mean_{i,j} (a_i · b_j)²`` per example, for ``a: [B, HW, C_a]``, ``b: [B, HW, C_b]``."""
    gram = jnp.einsum("bpi,bpj->bij", a, b)
    return jnp.mean(jnp.square(gram), axis=(1, 2))


def _nst_stage(s_map: Array, t_map: Array) -> Array:
    batch = s_map.shape[0]
    student = normalize(s_map.reshape(batch, -1, s_map.shape[-1]), axis=1)
    teacher = normalize(t_map.reshape(batch, -1, t_map.shape[-1]), axis=1)
    return (
        _polynomial_kernel_mean(teacher, teacher)
        + _polynomial_kernel_mean(student, student)
        - 2.0 * _polynomial_kernel_mean(student, teacher)
    )


def nst_loss(s_map: ArrayLike, t_map: ArrayLike) -> Array:
    """Neuron selectivity transfer (NST): squared MMD with a polynomial kernel.

    Each channel's map, flattened over ``H·W`` and L2-normalised
    (``f / max(‖f‖, 1e-12)``), is one sample; with ``k(x, y) = (xᵀy)²`` (degree 2,
    ``c = 0``) one stage's per-example loss is::

        mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') − 2 mean_{i,j} k(s_j, t_i)

    Given sequences of maps (one per stage) the per-example loss is the **sum**
    over the stages. Its batch mean equals RepDistiller's
    ``sum(NSTLoss()(g_s, g_t))`` with ``g = feat[1:-1]`` (its ``full_loss`` branch;
    it detaches the teacher term, which has no gradient with respect to the student
    anyway), which it weights by ``beta = 50``. Channel counts may differ; a stage's
    spatial sizes must match or differ by an integer factor (the larger map is
    average-pooled). A dead (all-zero) channel normalises to zero.

    Args:
      s_map: ``[batch, H, W, C_s]`` student feature map (NHWC), or a list/tuple of
        them, one per stage (RepDistiller: ``feat[1:-1]``).
      t_map: ``[batch, H', W', C_t]`` teacher feature map, or as many as ``s_map``.

    Returns:
      ``[batch]`` per-example losses, ``>= 0``.

    References:
      Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
      Transfer", arXiv:1707.01219, 2017.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import nst_loss
      >>> x = jnp.arange(24.0).reshape(1, 2, 3, 4)
      >>> print(nst_loss(x, 2.0 * x).round(6))  # the normalisation removes the scale
      [0.]
      >>> y = jnp.ones((1, 2, 3, 4))
      >>> stages = nst_loss([x, x[:, :1]], [y, 2.0 * x[:, :1]])  # the stages' sum
      >>> bool(jnp.allclose(stages, nst_loss(x, y) + nst_loss(x[:, :1], 2.0 * x[:, :1])))
      True
    """
    per_stage = []
    for (s_name, student), (t_name, teacher) in stages(s_map=s_map, t_map=t_map):
        student, teacher = _map_pair(s_name, student, t_name, teacher)
        per_stage.append((s_name, _nst_stage(student, teacher)))
    return sum_over_stages(per_stage)


def _vid_stage(mean_name, mean, target_name, target, scale_name, log_scale, eps):
    mean = as_float(mean_name, mean)
    target = as_float(target_name, target)
    if mean.ndim == 4 and target.ndim == 4 and mean.shape[1:3] != target.shape[1:3]:
        mean, target = match_spatial(mean_name, mean, target_name, target)
    check_batched(mean_name, mean)
    check_same_shape(mean_name, mean, target_name, target)
    log_scale = as_float(scale_name, log_scale)
    if log_scale.shape != (mean.shape[-1],):
        raise ValueError(
            f"{scale_name} must have shape ({mean.shape[-1]},) (one per channel of "
            f"{mean_name}), got {log_scale.shape}."
        )
    variance = jax.nn.softplus(log_scale) + eps
    negative_log_likelihood = 0.5 * (jnp.square(mean - target) / variance + jnp.log(variance))
    return jnp.mean(negative_log_likelihood.reshape(mean.shape[0], -1), axis=-1)


def vid_loss(
    s_pred_mean: ArrayLike, t_feat: ArrayLike, log_scale: ArrayLike, *, eps: float = 1e-5
) -> Array:
    """Variational information distillation (VID): Gaussian negative log-likelihood.

    The teacher feature is modelled as ``N(μ, σ²)`` with ``μ`` the regressed student
    feature and a learnable per-channel variance ``σ²_c = softplus(log_scale_c) + eps``
    (heteroscedastic over channels, shared over positions). One stage's per-example
    loss is::

        mean_{h,w,c} ½ ((μ − t)² / σ²_c + log σ²_c)

    (the constant ``½ log 2π`` is dropped). Given sequences (one ``μ``, teacher map
    and ``log_scale`` per stage, each stage with its own regressor and variance) the
    per-example loss is the **sum** over the stages. Its batch mean equals
    RepDistiller's ``sum`` of one ``VIDLoss`` per stage of ``feat[1:-1]`` (weight
    ``beta = 1``), ``torch.mean(0.5 * ((pred_mean - target)**2 / pred_var +
    torch.log(pred_var)))`` after its regressor (three 1×1 convolutions without
    bias, ReLU between, ``C_s → C_t → C_t → C_t``; variance initialised to 5). When
    a stage's maps differ in spatial size by an integer factor the larger one is
    average-pooled to the smaller, as ``VIDLoss`` does. RepDistiller pools the
    student's map *before* its regressor when the student's is the larger: pool it
    there yourself to match exactly (pooling the teacher's map is the same in both).
    ``μ`` and ``log_scale`` come from ``kdjax.models.connectors.VIDRegressor``; both
    are trained with the student.

    Args:
      s_pred_mean: ``[batch, ..., C]`` predicted mean (NHWC maps or ``[batch, C]``),
        or a list/tuple of them, one per stage.
      t_feat: teacher features of the same shape (NHWC maps may be an integer
        factor larger or smaller in height and width), or one per stage.
      log_scale: ``[C]`` softplus-parametrised variance, broadcast over the last
        axis, or one per stage.
      eps: the variance floor, ``>= 0``.

    Returns:
      ``[batch]`` per-example losses (may be negative: it is a log-density).

    References:
      Ahn et al., "Variational Information Distillation for Knowledge Transfer",
      CVPR 2019.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import vid_loss
      >>> unit = jnp.log(jnp.e - 1.0) * jnp.ones(3)  # softplus(unit) = 1
      >>> print(vid_loss(jnp.zeros((1, 3)), 2.0 * jnp.ones((1, 3)), unit, eps=0.0).round(4))
      [2.]
      >>> means, targets = [jnp.zeros((1, 3))] * 2, [2.0 * jnp.ones((1, 3)), jnp.zeros((1, 3))]
      >>> print(vid_loss(means, targets, [unit, unit], eps=0.0).round(4))  # 2 + 0
      [2.]
    """
    check_non_negative("eps", eps)
    per_stage = []
    for (mean_name, mean), (target_name, target), (scale_name, scale) in stages(
        s_pred_mean=s_pred_mean, t_feat=t_feat, log_scale=log_scale
    ):
        value = _vid_stage(mean_name, mean, target_name, target, scale_name, scale, eps)
        per_stage.append((mean_name, value))
    return sum_over_stages(per_stage)


def factor_transfer_loss(s_factor: ArrayLike, t_factor: ArrayLike, *, p: float = 2) -> Array:
    """Factor transfer (FT), as RepDistiller computes it: L1 distance of normalised factors.

    A factor is the output of a small encoder on a network's last feature map: the
    teacher's *paraphraser*, the student's *translator*. Each factor is reduced over
    its channels and L2-normalised, ``q = vec(mean_c |f_c|^p) / max(‖·‖₂, 1e-12)``
    (AT's attention map, ``p = 2``), and the per-example loss is the L1 distance
    averaged over the ``H·W`` positions, ``mean_{h,w} |q_s − q_t|``. Its batch mean
    equals RepDistiller's ``FactorTransfer()`` (``p1 = 2``, ``p2 = 1``:
    ``(factor(f_s) - factor(f_t)).abs().mean()``), weighted there by ``beta = 200``.
    The paper normalises the whole flattened factor instead,
    ``‖F_s/‖F_s‖₂ − F_t/‖F_t‖₂‖₁`` (no reduction over channels); this follows
    RepDistiller, whose CIFAR numbers kdjax compares against. Spatial sizes that
    differ by an integer factor are average-pooled to the smaller (as there); the
    channel counts may differ. ``|·|`` has gradient 0 at 0, as PyTorch's.

    Trainable parts, both on the last stage's map (``feat[-2]``) in RepDistiller:
    the teacher's paraphraser (3×3 convolutions ``C_t → C_t → C_t/2 → C_t/2`` with
    LeakyReLU 0.1, no BatchNorm, and a mirrored transposed-convolution decoder),
    trained *before* distillation to reconstruct the teacher's map (MSE, 30 epochs)
    and then frozen; and the student's translator (the same encoder from ``C_s``,
    with BatchNorm), trained with the student.

    Args:
      s_factor: ``[batch, H, W, C]`` the translator's output on the student's map.
      t_factor: ``[batch, H', W', C']`` the paraphraser's encoding of the teacher's map.
      p: the channel exponent ``> 0`` (RepDistiller's ``p1``: 2), a Python number.

    Returns:
      ``[batch]`` per-example losses in ``[0, 2]``.

    References:
      Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
      Factor Transfer", NeurIPS 2018.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import factor_transfer_loss
      >>> s = jnp.zeros((1, 2, 1, 3)).at[0, 0].set(1.0)  # all of q on row 0
      >>> t = jnp.zeros((1, 2, 1, 4)).at[0, 1].set(2.0)  # all of q on row 1
      >>> factor_transfer_loss(s, t).tolist()  # (|1 - 0| + |0 - 1|) / 2
      [1.0]
    """
    check_positive("p", p)
    student, teacher = _map_pair("s_factor", s_factor, "t_factor", t_factor)
    difference = attention_map(student, p) - attention_map(teacher, p)
    return jnp.mean(absolute(difference), axis=-1)
