"""Tests for kdjax.distill.soft_targets: lookup by id, the on-disk store and its fingerprints.

The "teacher" here is a fixed linear map of the pixels, so the logits expected for
any example can be computed independently of the store and of the example's
position, and every alignment check is made by id.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import Split
from kdjax.distill.soft_targets import StoreError, load_or_compute, lookup, params_fingerprint
from kdjax.store.locking import LOCK_FILE

NUM_CLASSES = 10
# Small integers: every logit is an exact integer in float32 (|sum| < 2**24), so the
# reference does not depend on how a BLAS splits the batch.
_PROJECTION = np.random.default_rng(1234).integers(-3, 4, (28 * 28, NUM_CLASSES))


def teacher_logits(images: np.ndarray) -> np.ndarray:
    """An independent reference: logits as a deterministic function of each image."""
    flat = np.asarray(images, np.int64).reshape(len(images), -1)
    return (flat @ _PROJECTION).astype(np.float32)


class CountingTeacher:
    """``compute_logits`` that records how many times, and on how many images, it ran."""

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        self.calls.append(len(images))
        return teacher_logits(images)


def make_split(count: int = 12, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(
        images=rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
        labels=rng.integers(0, NUM_CLASSES, count).astype(np.int32),
        ids=rng.permutation(1000)[:count].astype(np.int64),  # sparse, unordered ids
    )


def permuted(split: Split, order: np.ndarray) -> Split:
    return Split(split.images[order], split.labels[order], split.ids[order])


def expected_by_id(split: Split) -> dict[int, np.ndarray]:
    return dict(zip(split.ids.tolist(), teacher_logits(split.images), strict=True))


def assert_aligned(logits: np.ndarray, split: Split, reference: dict[int, np.ndarray]) -> None:
    assert logits.shape == (len(split), NUM_CLASSES)
    for row, example_id in zip(logits, split.ids.tolist(), strict=True):
        np.testing.assert_array_equal(row, reference[example_id])


def quiet(message: str) -> None:
    del message


# --- lookup ------------------------------------------------------------------------------


def test_lookup_rows_by_id_in_any_order():
    rng = np.random.default_rng(0)
    store_ids = rng.permutation(np.arange(50, 80))
    store_rows = np.stack([store_ids * 10.0, store_ids * -1.0], axis=1)
    wanted = rng.permutation(store_ids)[:17]
    rows = lookup(store_ids, store_rows, wanted)
    np.testing.assert_array_equal(rows, np.stack([wanted * 10.0, wanted * -1.0], axis=1))


def test_lookup_repeated_and_empty_queries():
    store_ids = np.array([7, 3, 11])
    store_rows = np.array([[70.0], [30.0], [110.0]])
    np.testing.assert_array_equal(
        lookup(store_ids, store_rows, np.array([3, 3, 11, 7])), [[30.0], [30.0], [110.0], [70.0]]
    )
    assert lookup(store_ids, store_rows, np.array([], np.int64)).shape == (0, 1)


@pytest.mark.parametrize("missing", [5, 0, 12, 999], ids=["inside", "below", "above", "far"])
def test_lookup_names_missing_id(missing):
    store_ids = np.array([11, 3, 7, 9])
    store_rows = np.arange(4.0)[:, None]
    with pytest.raises(StoreError, match=rf"\b{missing}\b"):
        lookup(store_ids, store_rows, np.array([3, missing, 7]))


def test_lookup_names_first_missing_id():
    with pytest.raises(StoreError, match=r"example id 42 "):
        lookup(np.array([1, 2, 3]), np.zeros((3, 2)), np.array([2, 42, 43]))


# --- load_or_compute -----------------------------------------------------------------------


def test_first_call_computes_and_writes(tmp_path):
    split = make_split()
    teacher = CountingTeacher()
    path = tmp_path / "stores" / "train.npz"  # the parent folder does not exist yet

    logits = load_or_compute(
        path, split, teacher_fingerprint="teacher-a", compute_logits=teacher, log=quiet
    )

    assert teacher.calls == [len(split)]
    assert logits.dtype == np.float32
    assert_aligned(logits, split, expected_by_id(split))
    assert path.is_file()
    with np.load(path) as stored:
        np.testing.assert_array_equal(stored["logits"], logits)
        np.testing.assert_array_equal(stored["ids"], split.ids)
        np.testing.assert_array_equal(stored["labels"], split.labels)
        assert str(stored["teacher_fingerprint"]) == "teacher-a"
        assert str(stored["data_fingerprint"]) == split.fingerprint()


def test_no_temporary_file_left(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    for teacher_fingerprint in ("teacher-a", "teacher-b"):  # a write, then a rewrite
        load_or_compute(
            path,
            split,
            teacher_fingerprint=teacher_fingerprint,
            compute_logits=teacher_logits,
            log=quiet,
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "train.npz"]


def test_second_call_reads_the_store(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    teacher = CountingTeacher()
    first = load_or_compute(
        path, split, teacher_fingerprint="teacher-a", compute_logits=teacher, log=quiet
    )
    # A new but equal Split (fresh arrays, same content) is the same data.
    same = Split(split.images.copy(), split.labels.copy(), split.ids.copy())
    second = load_or_compute(
        path, same, teacher_fingerprint="teacher-a", compute_logits=teacher, log=quiet
    )
    assert teacher.calls == [len(split)]
    np.testing.assert_array_equal(second, first)
    assert second.dtype == np.float32


def test_shuffled_split_is_recomputed_and_aligned_by_id(tmp_path):
    # The data fingerprint covers the order of the examples, so the same examples in
    # another order are a different split: the store is recomputed, and in every case
    # row i holds the logits of the example with id split.ids[i].
    path = tmp_path / "train.npz"
    split = make_split()
    reference = expected_by_id(split)
    shuffled = permuted(split, np.random.default_rng(5).permutation(len(split)))
    teacher = CountingTeacher()
    messages = []

    def run(current):
        return load_or_compute(
            path,
            current,
            teacher_fingerprint="teacher-a",
            compute_logits=teacher,
            log=messages.append,
        )

    original = run(split)
    assert_aligned(original, split, reference)

    reordered = run(shuffled)
    assert teacher.calls == [len(split)] * 2
    assert any("stale" in message for message in messages)
    assert_aligned(reordered, shuffled, reference)
    np.testing.assert_array_equal(reordered, lookup(split.ids, original, shuffled.ids))

    assert_aligned(run(shuffled), shuffled, reference)  # now stored in this order
    assert teacher.calls == [len(split)] * 2

    assert_aligned(run(split), split, reference)  # the store follows the last split
    assert teacher.calls == [len(split)] * 3


def test_subset_is_recomputed(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    teacher = CountingTeacher()
    load_or_compute(path, split, teacher_fingerprint="t", compute_logits=teacher, log=quiet)
    head = split.take(5)
    logits = load_or_compute(path, head, teacher_fingerprint="t", compute_logits=teacher, log=quiet)
    assert teacher.calls == [12, 5]
    assert_aligned(logits, head, expected_by_id(split))


def test_other_teacher_is_recomputed(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    teacher = CountingTeacher()
    messages = []
    load_or_compute(path, split, teacher_fingerprint="teacher-a", compute_logits=teacher, log=quiet)

    def other_teacher(images):
        teacher.calls.append(len(images))
        return teacher_logits(images) * 2.0 + 1.0

    logits = load_or_compute(
        path,
        split,
        teacher_fingerprint="teacher-b",
        compute_logits=other_teacher,
        log=messages.append,
    )
    assert teacher.calls == [len(split)] * 2
    assert any("stale" in message and str(path) in message for message in messages)
    np.testing.assert_array_equal(logits, teacher_logits(split.images) * 2.0 + 1.0)
    with np.load(path) as stored:
        assert str(stored["teacher_fingerprint"]) == "teacher-b"
        np.testing.assert_array_equal(stored["logits"], logits)


def test_changed_pixel_is_recomputed(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    teacher = CountingTeacher()
    load_or_compute(path, split, teacher_fingerprint="t", compute_logits=teacher, log=quiet)

    images = split.images.copy()
    images[3, 10, 20, 0] ^= 0xFF
    changed = Split(images, split.labels, split.ids)
    logits = load_or_compute(
        path, changed, teacher_fingerprint="t", compute_logits=teacher, log=quiet
    )
    assert teacher.calls == [len(split)] * 2
    assert_aligned(logits, changed, expected_by_id(changed))
    assert not np.allclose(logits[3], teacher_logits(split.images[3:4])[0])


def test_changed_label_is_recomputed(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    teacher = CountingTeacher()
    load_or_compute(path, split, teacher_fingerprint="t", compute_logits=teacher, log=quiet)
    labels = split.labels.copy()
    labels[0] = (labels[0] + 1) % NUM_CLASSES
    load_or_compute(
        path,
        Split(split.images, labels, split.ids),
        teacher_fingerprint="t",
        compute_logits=teacher,
        log=quiet,
    )
    assert teacher.calls == [len(split)] * 2


def test_wrong_row_count_raises_and_writes_nothing(tmp_path):
    path = tmp_path / "train.npz"
    split = make_split()
    with pytest.raises(StoreError, match=r"shape \(11, 10\) for 12 examples"):
        load_or_compute(
            path,
            split,
            teacher_fingerprint="t",
            compute_logits=lambda images: teacher_logits(images)[:-1],
            log=quiet,
        )
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_accepts_jax_logits(tmp_path):
    split = make_split()
    logits = load_or_compute(
        tmp_path / "train.npz",
        split,
        teacher_fingerprint="t",
        compute_logits=lambda images: jnp.asarray(teacher_logits(images), jnp.bfloat16),
        log=quiet,
    )
    assert isinstance(logits, np.ndarray)
    assert logits.dtype == np.float32
    expected = np.asarray(jnp.asarray(teacher_logits(split.images), jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(logits, expected)


# --- params_fingerprint ---------------------------------------------------------------------


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "bias": np.zeros(3, np.float32),
        },
        "Dense_1": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
    }


def test_params_fingerprint_equal_for_equal_trees():
    first, second = make_params(), make_params()
    assert first["Dense_0"]["kernel"] is not second["Dense_0"]["kernel"]
    assert params_fingerprint(first) == params_fingerprint(second)
    as_jax = {
        name: {key: jnp.asarray(value) for key, value in layer.items()}
        for name, layer in second.items()
    }
    assert params_fingerprint(as_jax) == params_fingerprint(first)
    assert len(params_fingerprint(first)) == 16


def test_params_fingerprint_changes_with_one_value():
    params = make_params()
    changed = make_params()
    changed["Dense_1"]["kernel"][2, 1] = np.nextafter(
        changed["Dense_1"]["kernel"][2, 1], np.float32(np.inf)
    )
    assert params_fingerprint(changed) != params_fingerprint(params)
    assert params_fingerprint(make_params(seed=1)) != params_fingerprint(params)


def test_params_fingerprint_changes_with_key_name():
    params = make_params()
    renamed = make_params()
    renamed["Dense_2"] = renamed.pop("Dense_1")
    assert params_fingerprint(renamed) != params_fingerprint(params)
    swapped = make_params()
    swapped["Dense_0"]["scale"] = swapped["Dense_0"].pop("bias")
    assert params_fingerprint(swapped) != params_fingerprint(params)


def test_params_fingerprint_changes_with_shape_and_dtype():
    params = make_params()
    reshaped = make_params()
    reshaped["Dense_0"]["kernel"] = reshaped["Dense_0"]["kernel"].reshape(3, 4)  # same bytes
    assert params_fingerprint(reshaped) != params_fingerprint(params)
    recast = make_params()
    recast["Dense_0"]["bias"] = recast["Dense_0"]["bias"].astype(np.int32)  # zeros either way
    assert params_fingerprint(recast) != params_fingerprint(params)


@pytest.mark.parametrize("payload", [b"garbage", None])
def test_corrupt_or_foreign_store_is_recomputed(tmp_path, payload):
    path = tmp_path / "train.npz"
    if payload is None:
        np.savez(path, something_else=np.zeros(3))
    else:
        path.write_bytes(payload)
    split, teacher = make_split(), CountingTeacher()
    logits = load_or_compute(
        path, split, teacher_fingerprint="t", compute_logits=teacher, log=lambda message: None
    )
    assert teacher.calls == [len(split)]
    assert_aligned(logits, split, expected_by_id(split))


def test_lookup_in_an_empty_store_is_a_store_error():
    with pytest.raises(StoreError, match="empty"):
        lookup(np.array([], np.int64), np.zeros((0, 3)), np.array([5]))


# --- Damaged stores, failed writes, two processes -------------------------------------------


def stored_arrays(path) -> dict:
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


def computed_once(tmp_path, teacher=None):
    path = tmp_path / "train.npz"
    split = make_split()
    load_or_compute(
        path, split, teacher_fingerprint="t", compute_logits=teacher or teacher_logits, log=quiet
    )
    return path, split


def test_a_valid_store_with_other_logits_is_caught_by_its_checksum(tmp_path):
    # The case: a well-formed .npz, right fingerprints, random logits.
    path, split = computed_once(tmp_path)
    arrays = stored_arrays(path)
    arrays["logits"] = np.random.default_rng(0).normal(size=arrays["logits"].shape)
    np.savez(path, **arrays)
    teacher, messages = CountingTeacher(), []
    logits = load_or_compute(
        path, split, teacher_fingerprint="t", compute_logits=teacher, log=messages.append
    )
    assert teacher.calls == [len(split)]
    assert_aligned(logits, split, expected_by_id(split))
    assert any(f"{path} is damaged (its checksum" in m for m in messages)
    np.testing.assert_array_equal(stored_arrays(path)["logits"], logits)  # rewritten


def test_a_store_without_checksum_is_recomputed(tmp_path):
    path, split = computed_once(tmp_path)
    arrays = stored_arrays(path)
    del arrays["checksum"]
    np.savez(path, **arrays)
    teacher, messages = CountingTeacher(), []
    load_or_compute(
        path, split, teacher_fingerprint="t", compute_logits=teacher, log=messages.append
    )
    assert teacher.calls == [len(split)]
    assert any("has no checksum" in m for m in messages)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_truncated_or_garbled_store_file_is_recomputed_and_said(tmp_path, damage):
    path, split = computed_once(tmp_path)
    payload = bytearray(path.read_bytes())
    if damage == "truncate":
        payload = payload[: len(payload) // 2]
    elif damage == "flip":  # inside the logits' bytes, size unchanged
        start = bytes(payload).index(teacher_logits(split.images[:1]).tobytes()[:16])
        payload[start : start + 64] = bytes(255 - b for b in payload[start : start + 64])
    else:
        payload = bytearray()
    path.write_bytes(bytes(payload))
    teacher, messages = CountingTeacher(), []
    logits = load_or_compute(
        path, split, teacher_fingerprint="t", compute_logits=teacher, log=messages.append
    )
    assert teacher.calls == [len(split)]
    assert_aligned(logits, split, expected_by_id(split))
    assert any(str(path) in m and ("unreadable" in m or "damaged" in m) for m in messages)


def test_a_full_disk_leaves_the_previous_store_intact(tmp_path, monkeypatch):
    import errno

    from kdjax.distill import soft_targets
    from kdjax.store.integrity import WorkdirError

    path, split = computed_once(tmp_path)
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_disk_full(file, **arrays):
        real_savez(file, **arrays)  # a partial temporary file, as a real full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(soft_targets.np, "savez", savez_then_disk_full)
    with pytest.raises(WorkdirError, match=r"no space left .*needed") as error:
        load_or_compute(
            path, split, teacher_fingerprint="other", compute_logits=teacher_logits, log=quiet
        )
    assert str(path) in str(error.value) and "previous store, if any, is intact" in str(error.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "train.npz"]


# Computes a store slowly in its own process; prints how often its teacher ran.
STORE_WORKER = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_soft_targets import make_split, teacher_logits
from kdjax.distill.soft_targets import load_or_compute
calls = []
def slow_teacher(images):
    calls.append(len(images))
    time.sleep(1.5)
    return teacher_logits(images)
print("ready", flush=True)
sys.stdin.readline()  # both processes start together
logits = load_or_compute(sys.argv[1], make_split(), teacher_fingerprint="t",
                         compute_logits=slow_teacher, log=lambda m: print("log:", m, flush=True))
print("calls", len(calls), float(logits.sum()), flush=True)
"""


def test_two_processes_compute_one_store_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-c", STORE_WORKER, str(tmp_path / "train.npz"), str(root / "tests")]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    calls = sorted(
        int(line.split()[1])
        for out in outputs
        for line in out.splitlines()
        if line.startswith("calls")
    )
    assert calls == [0, 1], outputs
    sums = {
        line.split()[2] for out in outputs for line in out.splitlines() if line.startswith("calls")
    }
    assert sums == {str(float(teacher_logits(make_split().images).sum()))}
    waited = outputs[1] if "calls 0" in outputs[1] else outputs[0]
    assert "in use by process" in waited and "waiting" in waited
