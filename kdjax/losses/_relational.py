"""Relational losses: the student matches relations *between the examples of a
batch* (similarities, distances, angles, kernel correlations) rather than each
example's own features.

Each loss here is defined over the whole batch and returns a **scalar**; the batch
(axis 0) must hold the examples to relate. Every non-batch axis is flattened, so
the student and teacher widths may differ (except in RepDistiller's ``Correlation``,
which subtracts the two).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    absolute,
    as_float,
    check_batched,
    check_non_negative,
    check_same_batch,
    check_same_shape,
    check_static_int,
    normalize,
    safe_norm,
)

# RepDistiller's PKT guards the norms and the log ratio with this epsilon.
_PKT_EPSILON = 1e-7
# RepDistiller's RKD clamps squared distances at this value before the square root.
_RKD_DISTANCE_EPSILON = 1e-12


def _flat_pair(student_name, student, teacher_name, teacher):
    student = as_float(student_name, student)
    teacher = as_float(teacher_name, teacher)
    check_batched(student_name, student)
    check_batched(teacher_name, teacher)
    check_same_batch(student_name, student, teacher_name, teacher)
    batch = student.shape[0]
    return student.reshape(batch, -1), teacher.reshape(batch, -1)


def similarity_preserving_loss(s_feat: ArrayLike, t_feat: ArrayLike) -> Array:
    """Similarity-preserving (SP) loss over the batch: a **scalar**.

    With ``G = F Fᵀ`` (``b × b`` Gram matrix of the flattened features) and each row
    of ``G`` L2-normalised (``g / max(‖g‖, 1e-12)``)::

        (1 / b²) · ‖Ĝ_t − Ĝ_s‖_F²

    which equals RepDistiller's ``Similarity`` loss for one layer (the paper's γ,
    3000 there, is the caller's weight). A batch of identical rows is valid; an
    all-zero row gives a zero row of ``Ĝ``.

    Args:
      s_feat: ``[batch, ...]`` student features (e.g. an NHWC map).
      t_feat: ``[batch, ...]`` teacher features; only the batch size must match.

    Returns:
      Scalar loss, ``>= 0``.

    References:
      Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import similarity_preserving_loss
      >>> s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> round(float(similarity_preserving_loss(s, jnp.ones((2, 5)))), 4)
      0.2929
    """
    student, teacher = _flat_pair("s_feat", s_feat, "t_feat", t_feat)
    batch = student.shape[0]
    student_gram = normalize(student @ student.T)
    teacher_gram = normalize(teacher @ teacher.T)
    return jnp.sum(jnp.square(teacher_gram - student_gram)) / batch**2


def _pkt_conditional(features: Array) -> Array:
    """Row-normalised cosine-similarity kernel ``P_{j|i}`` of the PKT paper."""
    features = features / (safe_norm(features, axis=-1, keepdims=True) + _PKT_EPSILON)
    similarity = (features @ features.T + 1.0) / 2.0
    return similarity / jnp.sum(similarity, axis=-1, keepdims=True)


def pkt_loss(s_feat: ArrayLike, t_feat: ArrayLike) -> Array:
    """Probabilistic knowledge transfer (PKT): KL between cosine-kernel affinities, **scalar**.

    Rows are unit-normalised (``f / (‖f‖ + 1e-7)``), the cosine kernel
    ``K_ij = (cos_ij + 1) / 2`` is turned into conditionals ``P_{j|i} = K_ij / Σ_j K_ij``
    for teacher (``P``) and student (``Q``), and::

        (1 / b²) Σ_{i,j} P_{j|i} log((P_{j|i} + ε) / (Q_{j|i} + ε)),   ε = 1e-7

    which equals RepDistiller's ``PKT`` (``torch.mean`` over the ``b × b`` matrix,
    diagonal included; the paper sums). A zero row normalises to zero (kernel ½ to
    every other example); a batch of 1 gives 0.

    Args:
      s_feat: ``[batch, ...]`` student features.
      t_feat: ``[batch, ...]`` teacher features; only the batch size must match.

    Returns:
      Scalar loss.

    References:
      Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
      Transfer", ECCV 2018.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import pkt_loss
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> round(float(pkt_loss(x, 3.0 * x)), 6)
      0.0
    """
    student, teacher = _flat_pair("s_feat", s_feat, "t_feat", t_feat)
    student_p = _pkt_conditional(student)
    teacher_p = _pkt_conditional(teacher)
    ratio = jnp.log((teacher_p + _PKT_EPSILON) / (student_p + _PKT_EPSILON))
    return jnp.mean(teacher_p * ratio)


def _smooth_l1(a: Array, b: Array) -> Array:
    """PyTorch ``F.smooth_l1_loss(a, b)`` (beta 1, mean over every entry)."""
    difference = jnp.abs(a - b)
    return jnp.mean(jnp.where(difference < 1.0, 0.5 * jnp.square(difference), difference - 0.5))


def _normalized_distances(features: Array) -> Array:
    """Pairwise distances divided by their mean over the ``i ≠ j`` pairs."""
    squared_norms = jnp.sum(jnp.square(features), axis=-1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * features @ features.T
    off_diagonal = ~jnp.eye(features.shape[0], dtype=bool)
    distances = jnp.where(off_diagonal, jnp.sqrt(jnp.maximum(squared, _RKD_DISTANCE_EPSILON)), 0)
    pairs = max(features.shape[0] * (features.shape[0] - 1), 1)
    mean = jnp.sum(distances) / pairs
    return distances / jnp.where(mean > 0, mean, 1.0)


def _angles(features: Array) -> Array:
    """``cos ∠(f_j − f_i, f_k − f_i)`` for every triple, ``[b, b, b]`` (vertex ``i``)."""
    differences = normalize(features[None, :, :] - features[:, None, :])
    return jnp.einsum("ijd,ikd->ijk", differences, differences)


def rkd_loss(
    s_feat: ArrayLike,
    t_feat: ArrayLike,
    *,
    distance_weight: ArrayLike = 25.0,
    angle_weight: ArrayLike = 50.0,
) -> Array:
    """Relational knowledge distillation (RKD): distance- and angle-wise, **scalar**.

    ``distance_weight · mean_{i,j} ℓ(ψ_D^s, ψ_D^t) + angle_weight · mean_{i,j,k} ℓ(ψ_A^s, ψ_A^t)``
    with ``ℓ`` the Huber loss (``F.smooth_l1_loss``, β = 1), ``ψ_D(i, j) = ‖f_i − f_j‖ / μ``
    where ``μ`` is the mean distance over the ``i ≠ j`` pairs (as the paper;
    RepDistiller's ``d[d > 0].mean()`` is the same since it clamps every squared
    distance at 1e-12), and ``ψ_A(i, j, k) = cos ∠(f_j − f_i, f_k − f_i)`` with the
    difference vectors normalised by ``max(‖·‖, 1e-12)`` (zero when ``j`` or ``k``
    equals ``i``). The means run over all ``b²`` and ``b³`` entries; this equals
    RepDistiller's ``RKDLoss`` (which also computes the distances through the Gram
    matrix). Degenerate batches: a batch of 1 has no pairs, so both terms are 0
    (RepDistiller divides by an empty mean and gives NaN); coinciding rows are 1e-6
    apart after the clamp, as in RepDistiller, and their difference vectors
    normalise to zero; the angle gradient there is of order ``1/1e-12`` when the
    teacher's angle differs (``F.normalize``'s guard), so keep such batches rare.
    The angle term holds ``b³`` values and a ``b × b × D`` difference tensor: keep
    ``D`` modest (embed first).

    Args:
      s_feat: ``[batch, ...]`` student features.
      t_feat: ``[batch, ...]`` teacher features; only the batch size must match.
      distance_weight: weight of the distance term (paper: 25), ``>= 0``; may be traced.
      angle_weight: weight of the angle term (paper: 50), ``>= 0``; may be traced.

    Returns:
      Scalar loss, ``>= 0``.

    References:
      Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import rkd_loss
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
      >>> round(float(rkd_loss(x, 4.0 * x + 1.0)), 5)  # scale and shift invariant
      0.0
    """
    check_non_negative("distance_weight", distance_weight)
    check_non_negative("angle_weight", angle_weight)
    student, teacher = _flat_pair("s_feat", s_feat, "t_feat", t_feat)
    distance = _smooth_l1(_normalized_distances(student), _normalized_distances(teacher))
    angle = _smooth_l1(_angles(student), _angles(teacher))
    return distance_weight * distance + angle_weight * angle


def _taylor_gaussian_kernel(embeddings: Array, gamma: Array, order: int) -> Array:
    """``Σ_{p=0}^{P} exp(−2γ) (2γ)^p / p! · (e_i · e_j)^p`` for every pair, ``[b, b]``."""
    products = embeddings @ embeddings.T
    terms = [(2.0 * gamma) ** p / math.factorial(p) * products**p for p in range(order + 1)]
    return jnp.exp(-2.0 * gamma) * sum(terms)


def correlation_congruence_loss(
    s_emb: ArrayLike, t_emb: ArrayLike, *, gamma: ArrayLike = 0.4, order: int = 2
) -> Array:
    """Correlation congruence (CC): match the batch's kernel correlation matrices, **scalar**.

    ``ψ(F)_ij = k(F_i, F_j)`` with the Gaussian RBF ``exp(−γ‖F_i − F_j‖²)``, which for
    unit-norm embeddings is ``exp(−2γ) exp(2γ F_iᵀF_j)``, approximated by its Taylor
    series of order ``P`` as in the paper; then::

        (1 / b²) · ‖ψ(F_t) − ψ(F_s)‖_F²

    This is the paper's Eq. (squared norm). torchdistill's ``CCKDLoss`` uses the same
    kernel but the unsquared ``torch.dist(...) / b²``. RepDistiller's ``Correlation``
    (the "CC" of its CIFAR tables, weight 0.02) is a different loss:
    :func:`repdistiller_correlation_loss`; its 0.02 is tuned for that form, not this
    one. The embeddings are used as given: normalise them first (e.g. with
    ``kdjax.models.connectors.EmbedHead``) for the RBF reading to hold.

    Args:
      s_emb: ``[batch, ...]`` student embeddings (flattened per example).
      t_emb: ``[batch, ...]`` teacher embeddings; only the batch size must match.
      gamma: kernel width ``γ >= 0`` (paper: 0.4); may be traced.
      order: Taylor order ``P`` (paper: 2), a Python int ``>= 0``.

    Returns:
      Scalar loss, ``>= 0``.

    References:
      Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import correlation_congruence_loss
      >>> s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[1.0, 0.0], [1.0, 0.0]])
      >>> round(float(correlation_congruence_loss(s, t, gamma=0.5, order=1)), 6)
      0.067668
    """
    check_non_negative("gamma", gamma)
    order = check_static_int("order", order, 0)
    student, teacher = _flat_pair("s_emb", s_emb, "t_emb", t_emb)
    gamma = jnp.asarray(gamma, student.dtype)
    difference = _taylor_gaussian_kernel(teacher, gamma, order) - _taylor_gaussian_kernel(
        student, gamma, order
    )
    return jnp.sum(jnp.square(difference)) / student.shape[0] ** 2


def repdistiller_correlation_loss(s_emb: ArrayLike, t_emb: ArrayLike) -> Array:
    """RepDistiller's ``Correlation`` loss (its "CC"), **scalar**: not the paper's kernel.

    With ``δ_i = |s_i − t_i|`` (element-wise, per example ``i``)::

        (1 / (b − 1)) Σ_{i=1}^{b−1} Σ_d δ_{i,d} · δ_{i+1,d}

    a product of the residuals of *consecutive* examples of the batch (1 with 2,
    2 with 3, …), which equals RepDistiller's ``Correlation``
    (``torch.mean((delta[:-1] * delta[1:]).sum(1))``, "code emailed by the original
    author"). It is not the paper's correlation-congruence loss
    (:func:`correlation_congruence_loss`): no kernel, and the batch order matters.
    ``|·|`` has gradient 0 at 0, as PyTorch's. A batch of 1 has no pair and gives 0
    (RepDistiller: the mean of nothing, NaN).

    What RepDistiller does with it: both embeddings come from a ``LinearEmbed`` head
    (one ``nn.Linear`` to 128 dimensions with bias, no normalisation) on the pooled
    features (``feat[-1]``), one head for the student and one for the teacher, both
    trained with the student; weight ``beta = 0.02`` beside CE weight 1.

    Args:
      s_emb: ``[batch, ...]`` student embeddings (flattened per example).
      t_emb: teacher embeddings of the same shape.

    Returns:
      Scalar loss, ``>= 0``.

    References:
      Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019
      (the method RepDistiller's code stands for); Tian, Krishnan & Isola,
      "Contrastive Representation Distillation", ICLR 2020 (RepDistiller).

    Examples:
      >>> import jax.numpy as jnp
      >>> from kdjax.losses import repdistiller_correlation_loss
      >>> s = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
      >>> round(float(repdistiller_correlation_loss(s, jnp.zeros((3, 2)))), 6)  # (5 + 0) / 2
      2.5
    """
    student = as_float("s_emb", s_emb)
    teacher = as_float("t_emb", t_emb)
    check_batched("s_emb", student)
    check_same_shape("s_emb", student, "t_emb", teacher)
    batch = student.shape[0]
    difference = (student - teacher).reshape(batch, -1)
    residual = absolute(difference)
    products = jnp.sum(residual[:-1] * residual[1:], axis=-1)
    return jnp.sum(products) / max(batch - 1, 1)
