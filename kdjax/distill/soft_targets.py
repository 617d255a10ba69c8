"""The soft-target store: a frozen teacher's logits, computed once, keyed by example id.

The R MNIST notebook keeps the teacher's outputs for all training images as arrays
beside the images and labels. kdjax does the same, with two corrections: it stores
**logits** (so any temperature can be applied later, to teacher and student
alike), and it stores the **example ids** with them, so a row is found by id, never
by position in a loader.

One ``.npz`` file per split holds ``logits [N, C]`` (``[N, shifts, C]`` in a
per-shift store, see :meth:`kdjax.distill.teachers.Teacher.outputs`), ``ids [N]``, ``labels [N]``,
two fingerprints — of the teacher's parameters and of the split's data — and a
``checksum`` of all of these arrays' contents. A store whose fingerprints do not
match the teacher and data at hand is stale; one whose checksum does not match its
arrays (or that cannot be read at all: truncated, not a zip) is damaged. Either is
recomputed and the log says which and why; neither is ever used. Other teacher
outputs (the flattened features and the last conv map that cosine and hint
objectives read) are stored the same way, one file per output
(:func:`load_or_compute_outputs`).

Writes are atomic (temporary file, then rename) and made under the store folder's
lock (:func:`kdjax.store.locking.run_lock`): a second process computing the same store
waits, then reads what the first wrote. A full disk or read-only folder raises
:class:`~kdjax.store.integrity.WorkdirError`, leaving the previous store intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from kdjax.data import Split
from kdjax.store.integrity import arrays_checksum, workdir_error
from kdjax.store.locking import run_lock


class StoreError(Exception):
    """A stored soft target cannot serve the examples asked for."""


def params_fingerprint(params) -> str:
    """A short hash of a parameter pytree (structure, shapes, dtypes and values)."""
    digest = hashlib.blake2b(digest_size=8)
    leaves_with_paths = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves_with_paths:
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def lookup(store_ids: np.ndarray, store_rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``store_rows`` for the examples ``ids`` (any order), by id.

    Raises :class:`StoreError` naming the first id that the store lacks.
    """
    if len(store_ids) == 0:
        raise StoreError("the soft-target store is empty.")
    order = np.argsort(store_ids, kind="stable")
    sorted_ids = store_ids[order]
    positions = np.searchsorted(sorted_ids, ids)
    positions = np.clip(positions, 0, len(sorted_ids) - 1)
    found = sorted_ids[positions] == ids
    if not np.all(found):
        missing = ids[np.flatnonzero(~found)[0]]
        raise StoreError(f"example id {missing} has no stored teacher output.")
    return store_rows[order[positions]]


def store_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """The checksum a store file carries: :func:`kdjax.store.integrity.arrays_checksum` of
    every other array in it (rows, ids, labels and both fingerprints)."""
    return arrays_checksum({key: value for key, value in arrays.items() if key != "checksum"})


def _read_fresh(
    path: Path, name: str, split: Split, teacher_fingerprint: str, data_fingerprint: str, log
) -> np.ndarray | None:
    """The stored rows for ``split`` if ``path`` is fresh and intact, else None (and says why)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        log(f"Soft-target store {path} is unreadable ({error}): recomputing.")
        return None
    if "checksum" not in arrays:
        log(f"Soft-target store {path} has no checksum (older kdjax or foreign file): recomputing.")
        return None
    if str(arrays["checksum"]) != store_checksum(arrays):
        log(f"Soft-target store {path} is damaged (its checksum does not match): recomputing.")
        return None
    try:
        fresh = (
            str(arrays["teacher_fingerprint"]) == teacher_fingerprint
            and str(arrays["data_fingerprint"]) == data_fingerprint
        )
        if fresh:
            return lookup(arrays["ids"], arrays[name], split.ids)
        log(f"Soft-target store {path} is stale (teacher or data changed): recomputing.")
    except (KeyError, StoreError) as error:
        log(f"Soft-target store {path} does not fit ({error}): recomputing.")
    return None


def _write_store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` plus their checksum to ``path`` atomically."""
    temporary = path.with_suffix(".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(temporary, checksum=np.asarray(store_checksum(arrays)), **arrays)
        temporary.replace(path)  # atomic: a crash never leaves a half-written store
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        failure = workdir_error(
            error,
            action="cannot write the soft-target store",
            path=path,
            needed_bytes=sum(value.nbytes for value in arrays.values()),
            intact="the previous store, if any, is intact",
        )
        if failure is None:
            raise
        raise failure from None


def load_or_compute_outputs(
    paths: Mapping[str, str | Path],
    split: Split,
    *,
    teacher_fingerprint: str,
    compute: Callable[[np.ndarray, tuple[str, ...]], Mapping[str, np.ndarray]],
    log: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """Several named teacher outputs for ``split`` (logits, features, feature maps),
    one store file each, all aligned with ``split`` by id.

    Fresh, intact files are read; the missing, stale or damaged outputs are computed
    together in one pass, ``compute(images, names) -> {name: [N, ...] array}``, and
    written under the lock of each store's folder (a second process waits, then
    reads them instead of computing them again).
    """
    data_fingerprint = split.fingerprint()

    def read_all(result: dict[str, np.ndarray], say) -> tuple[str, ...]:
        for name, path in paths.items():
            if name not in result:
                rows = _read_fresh(
                    Path(path), name, split, teacher_fingerprint, data_fingerprint, say
                )
                if rows is not None:
                    result[name] = rows
        return tuple(name for name in paths if name not in result)

    result: dict[str, np.ndarray] = {}
    if not read_all(result, lambda message: None):
        return result  # no lock needed: stores are replaced atomically, never edited
    with contextlib.ExitStack() as locks:
        for folder in sorted({Path(path).parent for path in paths.values()}):
            locks.enter_context(run_lock(folder, log=log))
        # Another process may have written them while this one waited.
        missing = read_all(result, log)
        if not missing:
            return result
        computed = compute(split.images, missing)
        for name in missing:
            values = np.asarray(computed[name], np.float32)
            if values.ndim < 2 or values.shape[0] != len(split):
                raise StoreError(
                    f"teacher returned {name} of shape {values.shape} for {len(split)} examples."
                )
            path = Path(paths[name])
            _write_store(
                path,
                {
                    "ids": split.ids,
                    "labels": split.labels,
                    "teacher_fingerprint": np.asarray(teacher_fingerprint),
                    "data_fingerprint": np.asarray(data_fingerprint),
                    name: values,
                },
            )
            shape = "×".join(str(size) for size in values.shape)
            log(f"Stored the teacher's {name} ({shape}: one row per example) in {path}.")
            result[name] = values
    return result


def load_or_compute(
    path: str | Path,
    split: Split,
    *,
    teacher_fingerprint: str,
    compute_logits: Callable[[np.ndarray], np.ndarray],
    log: Callable[[str], None] = print,
) -> np.ndarray:
    """The teacher's logits for ``split``, aligned with ``split`` (row i ↔ ``split.ids[i]``).

    Reads ``path`` when its fingerprints match ``teacher_fingerprint`` and the split's
    data; otherwise (missing or stale) computes them with ``compute_logits(images)``
    and rewrites ``path``.
    """
    stored = load_or_compute_outputs(
        {"logits": path},
        split,
        teacher_fingerprint=teacher_fingerprint,
        compute=lambda images, names: {"logits": compute_logits(images)},
        log=log,
    )
    return stored["logits"]
