"""Contrastive representation distillation (CRD) with its memory bank as explicit state,
and the class-aware sampler of its negatives.

The bank is a pytree (:class:`CRDBank`) passed in and returned by :func:`crd_loss`,
so the whole update runs inside ``jax.jit`` and lives in the training state next
to the parameters, e.g.::

    bank = init_crd_bank(num_examples, 128, jax.random.key(0))

    @jax.jit
    def step(params, bank, batch, key):
        def objective(params):
            s_emb, t_emb = embed(params, batch)  # unit-norm embeddings (EmbedHead)
            loss, new_bank = crd_loss(s_emb, t_emb, batch["ids"], bank, key,
                                      num_negatives=4096)
            return loss, new_bank
        (loss, bank), grads = jax.value_and_grad(objective, has_aux=True)(params)
        ...
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses._checks import (
    Array,
    ArrayLike,
    as_float,
    check_ndim,
    check_positive,
    check_same_shape,
    check_static_int,
    check_unit_interval,
    normalize,
)

# RepDistiller's ContrastLoss adds this inside both NCE ratios.
_NCE_EPSILON = 1e-7


class CRDBank(NamedTuple):
    """CRD's memory of past embeddings, one row per training example.

    Attributes:
      student: ``[num_examples, dim]`` student embeddings (RepDistiller's ``memory_v1``).
      teacher: ``[num_examples, dim]`` teacher embeddings (``memory_v2``).
      student_normalizer: scalar ``Z`` dividing the student's scores; ``-1`` until the
        first call sets it from that batch, then fixed (as RepDistiller's ``Z_v1``).
      teacher_normalizer: the same for the teacher's scores (``Z_v2``).
    """

    student: Array
    teacher: Array
    student_normalizer: Array
    teacher_normalizer: Array


def init_crd_bank(num_examples: int, dim: int, key: Array) -> CRDBank:
    """A fresh bank: rows uniform in ``±sqrt(3 / dim)`` (RepDistiller's init, norm ≈ 1).

    Examples:
      >>> import jax
      >>> from kdjax.losses import init_crd_bank
      >>> bank = init_crd_bank(100, 16, jax.random.key(0))
      >>> bank.student.shape, float(bank.student_normalizer)
      ((100, 16), -1.0)
    """
    num_examples = check_static_int("num_examples", num_examples, 1)
    dim = check_static_int("dim", dim, 1)
    bound = 1.0 / math.sqrt(dim / 3.0)
    student_key, teacher_key = jax.random.split(key)
    shape = (num_examples, dim)
    unset = jnp.asarray(-1.0, jnp.float32)
    return CRDBank(
        student=jax.random.uniform(student_key, shape, jnp.float32, -bound, bound),
        teacher=jax.random.uniform(teacher_key, shape, jnp.float32, -bound, bound),
        student_normalizer=unset,
        teacher_normalizer=unset,
    )


def _nce_loss(scores: Array, num_examples: int) -> Array:
    """RepDistiller's ``ContrastLoss``: column 0 is the positive, the rest are negatives."""
    num_negatives = scores.shape[1] - 1
    noise = num_negatives / num_examples  # m · P_n, with the uniform noise P_n = 1 / N
    positive, negative = scores[:, 0], scores[:, 1:]
    log_positive = jnp.log(positive / (positive + noise + _NCE_EPSILON))
    log_negative = jnp.log(noise / (negative + noise + _NCE_EPSILON))
    return -(jnp.sum(log_positive) + jnp.sum(log_negative)) / scores.shape[0]


def _normalized_scores(memory, embeddings, candidates, normalizer, temperature):
    """``exp(<memory[candidates], e> / T) / Z`` and the ``Z`` used (set if unset).

    The dot products come from whichever reads less memory: every bank row against
    the batch (one ``[batch, N]`` matrix product, then the candidates' columns) when
    the bank has fewer rows than the batch has candidates (CIFAR: 50,000 against
    128 × 16,385), else the candidates' rows gathered per example."""
    memory = jax.lax.stop_gradient(memory).astype(embeddings.dtype)
    if memory.shape[0] < candidates.size:
        dots = jnp.take_along_axis(embeddings @ memory.T, candidates, axis=1)
    else:
        dots = jnp.einsum("bkd,bd->bk", memory[candidates], embeddings)
    scores = jnp.exp(dots / temperature)
    estimate = jax.lax.stop_gradient(jnp.mean(scores)) * memory.shape[0]
    normalizer = jnp.where(normalizer > 0, normalizer.astype(scores.dtype), estimate)
    return scores / normalizer, normalizer


def _updated_memory(memory, ids, embeddings, momentum):
    mixed = momentum * memory[ids] + (1.0 - momentum) * jax.lax.stop_gradient(embeddings)
    return memory.at[ids].set(normalize(mixed).astype(memory.dtype))


def crd_loss(
    s_emb: ArrayLike,
    t_emb: ArrayLike,
    ids: ArrayLike,
    bank: CRDBank,
    key: Array | None,
    *,
    temperature: ArrayLike = 0.07,
    num_negatives: int = 16384,
    momentum: ArrayLike = 0.5,
    negative_ids: ArrayLike | None = None,
) -> tuple[Array, CRDBank]:
    """Contrastive representation distillation (CRD): NCE against a memory bank, **scalar**.

    For example ``i`` (dataset index ``ids[i]``) and ``K`` negative indices ``n_k``,
    the student embedding ``s_i`` is scored against the *teacher* memory and ``t_i``
    against the *student* memory: ``h(s_i, j) = exp(s_i · M_t[j] / T) / Z_s``. With
    ``m = K`` and the uniform noise ``P_n = 1/N`` (``N`` = bank rows)::

        L = −(1/b) Σ_i [log(h_i⁺ / (h_i⁺ + m P_n + ε)) + Σ_k log(m P_n / (h_ik + m P_n + ε))]

    summed over the two directions (student→teacher memory, teacher→student memory),
    ``ε = 1e-7``. ``Z`` is set once, from the first batch, to ``mean(h)·N`` (then kept
    in the bank). Afterwards the rows ``ids`` of each memory become
    ``normalize(momentum · M[ids] + (1 − momentum) · e)``. This equals RepDistiller's
    ``CRDLoss`` after its ``Embed`` heads (``ContrastMemory`` + two ``ContrastLoss``),
    given the same indices. Gradients flow into both embeddings (CRD trains the
    teacher's embedding head too, not the teacher) and never into the bank.

    Negatives are drawn uniformly with replacement from all ``N`` rows with ``key``
    (the memory's own sampler). RepDistiller's CIFAR-100 default instead draws them
    from the *other classes* (``CIFAR100InstanceSample``, ``mode='exact'``: the
    positive is the example itself): pass ``negative_ids`` from
    :func:`sample_negative_ids` for that (``key`` is then unused and may be None).
    The ids of one batch should be distinct (with duplicates, which row update wins
    is unspecified).

    What RepDistiller does with it: ``s_emb`` and ``t_emb`` come from an ``Embed``
    head each (``nn.Linear`` to 128 dimensions, then L2 normalisation) on the pooled
    features (``feat[-1]``), both trained with the student; 16384 class-aware
    negatives, ``T = 0.07``, momentum 0.5; weight ``beta = 0.8`` beside CE weight 1.

    Args:
      s_emb: ``[batch, dim]`` unit-norm student embeddings (``kdjax.models.connectors.EmbedHead``).
      t_emb: ``[batch, dim]`` unit-norm teacher embeddings.
      ids: ``[batch]`` integer dataset indices in ``[0, N)``.
      bank: the :class:`CRDBank` from :func:`init_crd_bank` or the previous call.
      key: a PRNG key for the negatives (or None with ``negative_ids``).
      temperature: ``T > 0`` (paper: 0.07); may be traced.
      num_negatives: ``K``, a Python int (paper: 16384); ignored with ``negative_ids``.
      momentum: memory momentum in ``[0, 1]`` (paper: 0.5); may be traced.
      negative_ids: optional ``[batch, K]`` integer indices of the negatives (e.g.
        from :func:`sample_negative_ids`).

    Returns:
      ``(loss, new_bank)``: the scalar loss and the updated bank.

    References:
      Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from kdjax.losses import crd_loss, init_crd_bank
      >>> bank = init_crd_bank(50, 4, jax.random.key(0))
      >>> emb = jnp.eye(4)[:2]
      >>> loss, bank = crd_loss(emb, emb, jnp.array([3, 7]), bank, jax.random.key(1),
      ...                       num_negatives=8, momentum=0.0)
      >>> loss.shape, bank.student[3].tolist(), float(bank.student_normalizer) > 0
      ((), [1.0, 0.0, 0.0, 0.0], True)
    """
    check_positive("temperature", temperature)
    check_unit_interval("momentum", momentum)
    s_emb = as_float("s_emb", s_emb)
    t_emb = as_float("t_emb", t_emb)
    check_ndim("s_emb", s_emb, 2, "[batch, dim]")
    check_same_shape("s_emb", s_emb, "t_emb", t_emb)
    num_examples, dim = bank.student.shape
    if s_emb.shape[1] != dim:
        raise ValueError(f"s_emb has dim {s_emb.shape[1]} but bank rows have dim {dim}.")
    batch = s_emb.shape[0]
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer) or ids.shape != (batch,):
        raise ValueError(f"ids must be integers of shape ({batch},), got {ids.dtype}{ids.shape}.")
    if negative_ids is None:
        if key is None:
            raise ValueError("crd_loss needs a PRNG key to sample negatives (or negative_ids).")
        num_negatives = check_static_int("num_negatives", num_negatives, 1)
        negative_ids = jax.random.randint(key, (batch, num_negatives), 0, num_examples)
    negative_ids = jnp.asarray(negative_ids)
    if not jnp.issubdtype(negative_ids.dtype, jnp.integer) or negative_ids.ndim != 2:
        raise ValueError(f"negative_ids must be [batch, K] integers, got {negative_ids.shape}.")
    candidates = jnp.concatenate([ids[:, None], negative_ids], axis=1)
    temperature = jnp.asarray(temperature, s_emb.dtype)
    student_scores, student_normalizer = _normalized_scores(
        bank.teacher, s_emb, candidates, bank.student_normalizer, temperature
    )
    teacher_scores, teacher_normalizer = _normalized_scores(
        bank.student, t_emb, candidates, bank.teacher_normalizer, temperature
    )
    loss = _nce_loss(student_scores, num_examples) + _nce_loss(teacher_scores, num_examples)
    momentum = jnp.asarray(momentum, bank.student.dtype)
    new_bank = CRDBank(
        student=_updated_memory(bank.student, ids, s_emb, momentum),
        teacher=_updated_memory(bank.teacher, ids, t_emb, momentum),
        student_normalizer=student_normalizer.astype(bank.student_normalizer.dtype),
        teacher_normalizer=teacher_normalizer.astype(bank.teacher_normalizer.dtype),
    )
    return loss, new_bank


class ClassIndex(NamedTuple):
    """The training set's example ids grouped by class (RepDistiller's ``cls_positive``).

    Attributes:
      ids_by_class: ``[num_examples]`` example ids sorted by class (ascending id
        within a class).
      class_start: ``[num_classes]`` where each class's ids begin in ``ids_by_class``.
      class_count: ``[num_classes]`` how many examples each class has.
    """

    ids_by_class: Array
    class_start: Array
    class_count: Array


def init_class_index(dataset_labels: ArrayLike, num_classes: int) -> ClassIndex:
    """The :class:`ClassIndex` of a training set from its labels (example id = position).

    Built once on the host from concrete labels, like RepDistiller's dataset does in
    its constructor; pass it into the jitted step as an argument.

    Examples:
      >>> from kdjax.losses import init_class_index
      >>> index = init_class_index([2, 0, 2, 1, 0], 3)
      >>> index.ids_by_class.tolist(), index.class_start.tolist(), index.class_count.tolist()
      ([1, 4, 3, 0, 2], [0, 2, 3], [2, 1, 2])
    """
    num_classes = check_static_int("num_classes", num_classes, 1)
    labels = np.asarray(dataset_labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"dataset_labels must be 1-D integers, got {labels.dtype}{labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"dataset_labels must lie in [0, {num_classes}).")
    counts = np.bincount(labels, minlength=num_classes)
    return ClassIndex(
        ids_by_class=jnp.asarray(np.argsort(labels, kind="stable"), jnp.int32),
        class_start=jnp.asarray(np.cumsum(counts) - counts, jnp.int32),
        class_count=jnp.asarray(counts, jnp.int32),
    )


def sample_negative_ids(
    key: Array, labels: ArrayLike, class_index: ClassIndex, *, num_negatives: int = 16384
) -> Array:
    """Draws CRD's negatives from the classes other than each anchor's, as RepDistiller does.

    For each example of the batch, ``num_negatives`` ids of training examples of
    *other* classes, drawn uniformly without replacement, or with replacement when
    fewer than ``num_negatives`` such examples exist: RepDistiller's
    ``CIFAR100InstanceSample`` (``np.random.choice(cls_negative[target], k,
    replace=k > len(cls_negative[target]))``). Pass the result as ``negative_ids``
    to :func:`crd_loss`, which puts the anchor's own id first as the positive
    (RepDistiller's ``mode='exact'``, its index 0). Without replacement costs a
    ``[batch, num_examples]`` draw and a top-k per call (50,000 examples on CIFAR).
    At least one example must lie outside each anchor's class; labels are not
    range-checked (they are usually traced).

    Args:
      key: a PRNG key.
      labels: ``[batch]`` integer class of each anchor.
      class_index: the training set's :class:`ClassIndex` (:func:`init_class_index`).
      num_negatives: ``K``, a Python int (RepDistiller: 16384).

    Returns:
      ``[batch, num_negatives]`` int32 example ids.

    References:
      Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

    Examples:
      >>> import jax
      >>> from kdjax.losses import init_class_index, sample_negative_ids
      >>> index = init_class_index([0, 0, 1, 1, 2, 2], 3)
      >>> negatives = sample_negative_ids(jax.random.key(0), [0, 2], index, num_negatives=4)
      >>> sorted(negatives[0].tolist()), sorted(negatives[1].tolist())
      ([2, 3, 4, 5], [0, 1, 2, 3])
    """
    num_negatives = check_static_int("num_negatives", num_negatives, 1)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim != 1:
        raise ValueError(f"labels must be [batch] integers, got {labels.dtype}{labels.shape}.")
    num_examples = class_index.ids_by_class.shape[0]
    batch = labels.shape[0]
    # The anchor's class is the block [start, start + count) of ids_by_class.
    start = class_index.class_start[labels][:, None]
    count = class_index.class_count[labels][:, None]
    pool = num_examples - count
    replace_key, subset_key = jax.random.split(key)
    drawn = jax.random.randint(replace_key, (batch, num_negatives), 0, pool)
    positions = drawn + jnp.where(drawn >= start, count, 0)  # skip the anchor's block
    if num_negatives <= num_examples:
        # A uniform subset: the positions outside the block with the largest random keys.
        position = jnp.arange(num_examples)
        in_class = (position >= start) & (position < start + count)
        scores = jnp.where(in_class, -1.0, jax.random.uniform(subset_key, (batch, num_examples)))
        _, subset = jax.lax.top_k(scores, num_negatives)
        positions = jnp.where(num_negatives > pool, positions, subset)
    return class_index.ids_by_class[positions]
