"""The soft-target store: a frozen teacher's logits, computed once, keyed by example id.

Seed 000 keeps the teacher's outputs for all training images as arrays beside the
images and labels. kdjax does the same, with two corrections: it stores
**logits** (so any temperature can be applied later, to teacher and student
alike), and it stores the **example ids** with them, so a row is found by id, never
by position in a loader.

One ``.npz`` file per split holds ``logits [N, C]`` (``[N, shifts, C]`` in a
per-shift store, see :func:`kdjax.distill.teacher_outputs`), ``ids [N]``, ``labels [N]``
and two fingerprints — of the teacher's parameters and of the split's data. A
store whose fingerprints do not match the teacher and data at hand is stale: it
is recomputed, never silently used. Other teacher outputs (the flattened
features and the last conv map that cosine and hint objectives read) are stored
the same way, one file per output (:func:`load_or_compute_outputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from kdjax.data import Split


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


def _read_fresh(
    path: Path, name: str, split: Split, teacher_fingerprint: str, data_fingerprint: str, log
) -> np.ndarray | None:
    """The stored rows for ``split`` if ``path`` is fresh, else None (and says why)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            fresh = (
                str(stored["teacher_fingerprint"]) == teacher_fingerprint
                and str(stored["data_fingerprint"]) == data_fingerprint
            )
            if fresh:
                return lookup(stored["ids"], stored[name], split.ids)
        log(f"Soft-target store {path} is stale (teacher or data changed): recomputing.")
    except (OSError, ValueError, KeyError, StoreError) as error:
        log(f"Soft-target store {path} is unreadable ({error}): recomputing.")
    return None


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

    Fresh files are read; the missing or stale outputs are computed together in one
    pass, ``compute(images, names) -> {name: [N, ...] array}``, and written.
    """
    data_fingerprint = split.fingerprint()
    result: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        rows = _read_fresh(Path(path), name, split, teacher_fingerprint, data_fingerprint, log)
        if rows is not None:
            result[name] = rows
    missing = tuple(name for name in paths if name not in result)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp.npz")
        np.savez(
            temporary,
            ids=split.ids,
            labels=split.labels,
            teacher_fingerprint=np.asarray(teacher_fingerprint),
            data_fingerprint=np.asarray(data_fingerprint),
            **{name: values},
        )
        temporary.replace(path)  # atomic: a crash never leaves a half-written store
        log(f"Stored teacher {name} {values.shape[1:]} for {len(split)} examples in {path}.")
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
