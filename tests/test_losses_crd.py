"""CRD: the memory bank as explicit state, against RepDistiller's ContrastMemory in
PyTorch (loss, gradients, normalisers, updated memories), under jit, and its errors;
the class-aware negatives of RepDistiller's CIFAR-100 loader."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from losses_cases import rng_for

from kdjax.losses import (
    CRDBank,
    crd_loss,
    init_class_index,
    init_crd_bank,
    sample_negative_ids,
)

NUM_EXAMPLES, DIM, BATCH, NEGATIVES = 40, 8, 5, 6


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _unit_rows(rng, shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(seed, num_negatives=NEGATIVES):
    rng = rng_for("crd", seed)
    s_emb, t_emb = _unit_rows(rng, (BATCH, DIM)), _unit_rows(rng, (BATCH, DIM))
    ids = rng.choice(NUM_EXAMPLES, size=BATCH, replace=False)
    negatives = rng.integers(0, NUM_EXAMPLES, size=(BATCH, num_negatives))
    return s_emb, t_emb, ids, negatives


def _objective(s_emb, t_emb, ids, bank, negatives):
    return crd_loss(
        s_emb, t_emb, ids, bank, None, negative_ids=negatives, temperature=0.1, momentum=0.3
    )


_jit_value_and_grad = jax.jit(jax.value_and_grad(_objective, argnums=(0, 1), has_aux=True))


# 5 × 7 candidates gather their bank rows; 5 × 13 > 40 rows score the whole bank.
@pytest.mark.parametrize("num_negatives", [NEGATIVES, 12], ids=["gathered", "whole_bank"])
@pytest.mark.parametrize("normalizers_set", [False, True])
def test_crd_matches_repdistiller_in_float64(x64, normalizers_set, num_negatives):
    torch = pytest.importorskip("torch")
    import losses_torch_reference as reference

    s_emb, t_emb, ids, negatives = _inputs(normalizers_set, num_negatives)
    bank = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64), init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(3))
    )
    if normalizers_set:
        bank = bank._replace(
            student_normalizer=jnp.float64(7.5), teacher_normalizer=jnp.float64(3.0)
        )
    (loss, new_bank), (s_grad, t_grad) = _jit_value_and_grad(s_emb, t_emb, ids, bank, negatives)

    ts, tt = torch.tensor(s_emb, requires_grad=True), torch.tensor(t_emb, requires_grad=True)
    idx = torch.from_numpy(np.concatenate([ids[:, None], negatives], 1))
    want, z_s, z_t, mem_s, mem_t = reference.crd(
        ts,
        tt,
        idx,
        torch.tensor(np.asarray(bank.student)),
        torch.tensor(np.asarray(bank.teacher)),
        float(bank.student_normalizer),
        float(bank.teacher_normalizer),
        0.1,
        0.3,
    )
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
    np.testing.assert_allclose(s_grad, ts.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t_grad, tt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(new_bank.student_normalizer, z_s, rtol=1e-12)
    np.testing.assert_allclose(new_bank.teacher_normalizer, z_t, rtol=1e-12)
    np.testing.assert_allclose(new_bank.student, mem_s.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new_bank.teacher, mem_t.numpy(), rtol=1e-12, atol=1e-15)


def test_bank_update_normalises_the_momentum_mix_of_the_batch_rows_only():
    s_emb, t_emb, ids, negatives = _inputs("update")
    bank = init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(0))
    _, new_bank = jax.jit(_objective)(s_emb, t_emb, ids, bank, negatives)
    mixed = 0.3 * np.asarray(bank.student)[ids] + 0.7 * s_emb
    want = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    np.testing.assert_allclose(new_bank.student[ids], want, rtol=1e-5, atol=1e-6)
    others = np.setdiff1d(np.arange(NUM_EXAMPLES), ids)
    np.testing.assert_array_equal(new_bank.teacher[others], bank.teacher[others])
    chex.assert_trees_all_equal_shapes_and_dtypes(new_bank, bank)


def test_normaliser_is_set_once_then_kept():
    s_emb, t_emb, ids, _ = _inputs("normaliser")
    bank = init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(1))

    @jax.jit
    def step(bank, key):
        return crd_loss(s_emb, t_emb, ids, bank, key, num_negatives=NEGATIVES)

    loss, bank = step(bank, jax.random.key(2))
    first = float(bank.student_normalizer)
    assert first > 0 and float(bank.teacher_normalizer) > 0 and np.isfinite(loss)
    loss, bank = step(bank, jax.random.key(3))
    assert float(bank.student_normalizer) == first
    assert loss.shape == () and np.isfinite(loss)


def test_sampled_negatives_are_uniform_indices_of_the_bank():
    # With num_negatives ≫ N every bank row is drawn; the loss stays finite.
    s_emb, t_emb, ids, _ = _inputs("sampled")
    bank = init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(4))
    loss, _ = jax.jit(lambda k: crd_loss(s_emb, t_emb, ids, bank, k, num_negatives=400))(
        jax.random.key(5)
    )
    assert np.isfinite(loss)
    drawn = jax.random.randint(jax.random.key(5), (BATCH, 400), 0, NUM_EXAMPLES)
    assert set(np.unique(drawn)) == set(range(NUM_EXAMPLES))


def test_init_bank_rows_have_about_unit_norm_and_unset_normalisers():
    bank = init_crd_bank(1000, 64, jax.random.key(0))
    assert isinstance(bank, CRDBank)
    norms = np.linalg.norm(bank.student, axis=1)
    assert abs(norms.mean() - 1.0) < 0.05
    bound = (3 / 64) ** 0.5
    assert np.abs(bank.teacher).max() <= bound
    assert float(bank.student_normalizer) == float(bank.teacher_normalizer) == -1.0


def test_crd_errors_name_the_argument():
    s_emb, t_emb, ids, negatives = _inputs("errors")
    bank = init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        crd_loss(s_emb, t_emb, ids, bank, None)
    with pytest.raises(ValueError, match="dim"):
        crd_loss(s_emb[:, :4], t_emb[:, :4], ids, bank, None, negative_ids=negatives)
    with pytest.raises(ValueError, match="ids"):
        crd_loss(s_emb, t_emb, ids[:2], bank, None, negative_ids=negatives)
    with pytest.raises(ValueError, match="temperature"):
        crd_loss(s_emb, t_emb, ids, bank, None, negative_ids=negatives, temperature=np.inf)
    with pytest.raises(ValueError, match="momentum"):
        crd_loss(s_emb, t_emb, ids, bank, None, negative_ids=negatives, momentum=1.5)
    with pytest.raises(ValueError, match="num_negatives"):
        crd_loss(s_emb, t_emb, ids, bank, jax.random.key(0), num_negatives=0)


# --------------------------------------------------------------------------- #
# Class-aware negatives (RepDistiller's CIFAR100InstanceSample, mode='exact').
# --------------------------------------------------------------------------- #

# An unbalanced toy training set: 4 classes of 5, 3, 8 and 24 examples, shuffled.
_DATASET_LABELS = rng_for("class_index").permutation(np.repeat(np.arange(4), [5, 3, 8, 24]))
_sample = jax.jit(sample_negative_ids, static_argnames="num_negatives")


def test_class_index_groups_the_ids_by_class():
    index = init_class_index(_DATASET_LABELS, 4)
    for label in range(4):
        start, count = int(index.class_start[label]), int(index.class_count[label])
        block = np.asarray(index.ids_by_class[start : start + count])
        np.testing.assert_array_equal(block, np.flatnonzero(_DATASET_LABELS == label))


@pytest.mark.parametrize("num_negatives", [1, 16, 32])
def test_negatives_come_from_other_classes_without_replacement(num_negatives):
    # The largest class leaves 16 others, the smallest 37: without replacement for all.
    index = init_class_index(_DATASET_LABELS, 4)
    anchors = np.array([0, 3, 5, 17, 39])
    labels = _DATASET_LABELS[anchors]
    negatives = np.asarray(_sample(jax.random.key(0), labels, index, num_negatives=num_negatives))
    assert negatives.shape == (5, num_negatives) and negatives.dtype == np.int32
    assert np.all((negatives >= 0) & (negatives < len(_DATASET_LABELS)))
    for label, row in zip(labels, negatives, strict=True):
        assert not np.any(_DATASET_LABELS[row] == label)  # no negative shares the class
        pool = np.count_nonzero(_DATASET_LABELS != label)
        if num_negatives <= pool:
            assert len(set(row.tolist())) == num_negatives  # no repeats
        else:
            assert label == 3  # only the largest class's pool is smaller than 32


def test_more_negatives_than_the_other_classes_hold_are_drawn_with_replacement():
    # RepDistiller: replace = k > len(cls_negative[target]).
    index = init_class_index(_DATASET_LABELS, 4)
    labels = np.full(200, 3)  # 16 examples outside class 3
    negatives = np.asarray(_sample(jax.random.key(1), labels, index, num_negatives=64))
    others = np.flatnonzero(_DATASET_LABELS != 3)
    assert set(np.unique(negatives)) == set(others.tolist())  # all of them, none else


def test_negatives_are_uniform_over_the_other_classes():
    index = init_class_index(_DATASET_LABELS, 4)
    labels = np.zeros(4000, np.int64)  # class 0: 35 others, 10 drawn each time
    negatives = np.asarray(_sample(jax.random.key(2), labels, index, num_negatives=10))
    counts = np.bincount(negatives.ravel(), minlength=len(_DATASET_LABELS))
    others = _DATASET_LABELS != 0
    assert np.all(counts[~others] == 0)
    expected = 4000 * 10 / others.sum()  # ≈ 1143 per id
    assert np.all(np.abs(counts[others] - expected) < 6 * np.sqrt(expected))


def test_sampled_negatives_in_crd_match_repdistiller_with_the_anchor_as_index_0(x64):
    torch = pytest.importorskip("torch")
    import losses_torch_reference as reference

    # 40 examples in 4 classes; the batch's own ids are the positives (mode='exact').
    dataset_labels = np.arange(NUM_EXAMPLES) % 4
    s_emb, t_emb, ids, _ = _inputs("class_aware")
    negatives = sample_negative_ids(
        jax.random.key(3), dataset_labels[ids], init_class_index(dataset_labels, 4),
        num_negatives=NEGATIVES,
    )  # fmt: skip
    assert not np.any(dataset_labels[np.asarray(negatives)] == dataset_labels[ids][:, None])
    bank = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64), init_crd_bank(NUM_EXAMPLES, DIM, jax.random.key(4))
    )
    (loss, _), (s_grad, _) = _jit_value_and_grad(s_emb, t_emb, ids, bank, negatives)
    ts, tt = torch.tensor(s_emb, requires_grad=True), torch.tensor(t_emb, requires_grad=True)
    idx = torch.from_numpy(np.hstack([ids[:, None], np.asarray(negatives)]).astype(np.int64))
    want = reference.crd(
        ts, tt, idx, torch.tensor(np.asarray(bank.student)), torch.tensor(np.asarray(bank.teacher)),
        -1.0, -1.0, 0.1, 0.3,
    )[0]  # fmt: skip
    want.backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-10)
    np.testing.assert_allclose(s_grad, ts.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_class_index_and_sampler_errors_name_the_argument():
    with pytest.raises(ValueError, match="dataset_labels must lie"):
        init_class_index([0, 1, 4], 4)
    with pytest.raises(ValueError, match="dataset_labels must be 1-D integers"):
        init_class_index([0.0, 1.0], 2)
    index = init_class_index(_DATASET_LABELS, 4)
    with pytest.raises(ValueError, match="num_negatives"):
        sample_negative_ids(jax.random.key(0), np.array([0]), index, num_negatives=0)
    with pytest.raises(ValueError, match="labels must be"):
        sample_negative_ids(jax.random.key(0), np.array([[0]]), index, num_negatives=2)


def test_crd_speed_benchmark_times_equal_losses_and_a_draw():
    """``benchmarks.crd_speed`` compares crd_loss with the gathered-rows form: both give
    the same loss and gradients (here the whole-bank path: 8 × 31 candidates > 64 rows)."""
    from benchmarks.crd_speed import measure, programs

    parts = programs(examples=64, batch=8, negatives=30, dim=4, classes=4)
    (ours, args), (gathered, _) = parts["crd_loss + gradients"], parts["gathered rows + gradients"]
    chex.assert_trees_all_close(ours(*args), gathered(*args), rtol=1e-5, atol=1e-6)
    times = measure(parts, rounds=1)
    assert set(times) == set(parts) and all(t > 0 for t in times.values())
