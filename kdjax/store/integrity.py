"""Content fingerprints of what kdjax writes, and one-line errors when a write or a read fails.

Three things every stored file of kdjax needs, kept in one place:

* **Fingerprints of contents.** :func:`leaf_digests` gives a digest per leaf of a pytree
  (checkpoints store them and compare on restore); :func:`arrays_checksum` gives one
  digest over named arrays (soft-target stores carry it). Both hash dtype, shape and
  bytes with BLAKE2b, so any changed value, shape or dtype changes the digest.
* **Damaged files are set aside, never deleted.** :func:`move_aside` renames
  ``x`` to ``x.corrupt-<n>`` so a person can look at it later.
* **Failed writes say what happened.** :func:`workdir_error` turns the ``OSError`` of a
  full disk or a read-only folder (raised directly, or wrapped by orbax/TensorStore as
  text) into a :class:`WorkdirError` whose message names the path, the bytes needed and
  what is still intact.

Example::

    digests = leaf_digests({"w": np.ones(3)})   # {"w": "5c1f..."}
    checksum = arrays_checksum({"logits": logits, "ids": ids})
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# The errors of a full disk or an unwritable folder: the user can fix these.
_WORKDIR_ERRNOS = {
    errno_codes.ENOSPC: "no space left on the device",
    errno_codes.EDQUOT: "the disk quota is exceeded",
    errno_codes.EROFS: "the file system is read-only",
    errno_codes.EACCES: "permission denied",
    errno_codes.EPERM: "operation not permitted",
}
# TensorStore (under orbax) reports an OS error as text: "... [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_OS_ERROR_TEXT = {
    "No space left on device": errno_codes.ENOSPC,
    "Disk quota exceeded": errno_codes.EDQUOT,
    "Read-only file system": errno_codes.EROFS,
    "Permission denied": errno_codes.EACCES,
}


class DamagedFileError(Exception):
    """A file kdjax wrote earlier is unreadable or fails its content fingerprint.

    The message names the file and says what to do; nothing was trained or scored on it.
    """


class WorkdirError(OSError):
    """A file could not be written (disk full, read-only or unwritable folder).

    Subclasses ``OSError`` (``errno`` and ``filename`` are set) but prints as one line
    that names the path, the space needed when known and what is still intact.
    """

    def __init__(self, message: str, *, code: int | None = None, path: str | Path | None = None):
        super().__init__(message)
        self.errno = code
        self.filename = None if path is None else str(path)

    def __str__(self) -> str:
        return str(self.args[0])


def _host_array(leaf: Any) -> np.ndarray:
    """A leaf as numpy; a replicated array spread over processes gives its local copy."""
    import jax

    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
    return np.asarray(leaf)


def _array_digest(array: np.ndarray) -> hashlib.blake2b:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest


def _key_name(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def leaf_digests(tree: Any) -> dict[str, str]:
    """``{leaf path: digest}`` of a pytree, the path written ``params/Dense_0/kernel``.

    Paths use the bare key names, so a dataclass (``state.params``), the dict orbax
    restores without a template (``state["params"]``) and a tuple's list form give the
    same path. The digest is BLAKE2b-64 of dtype, shape and bytes.

    >>> leaf_digests({"b": np.zeros(2, np.float32)}) == leaf_digests({"b": np.zeros(2)})
    False
    """
    import jax

    return {
        "/".join(_key_name(entry) for entry in path): _array_digest(_host_array(leaf)).hexdigest()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def arrays_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """One BLAKE2b-128 digest of named arrays (names, dtypes, shapes and bytes), order-free.

    >>> arrays_checksum({"a": np.arange(3)}) == arrays_checksum({"a": np.arange(3)})
    True
    """
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        digest.update(name.encode() + b"\0")
        digest.update(_array_digest(np.asarray(arrays[name])).digest())
    return digest.hexdigest()


def tree_nbytes(tree: Any) -> int:
    """Bytes of all array leaves of a pytree (what a write of it needs, before compression)."""
    import jax

    return sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(tree))


def write_file_manifest(directory: str | Path, name: str) -> Path:
    """Writes ``directory/name``: ``{relative path: [size, BLAKE2b-128]}`` of every file
    under ``directory`` (atomically: temp file, then rename)."""
    directory = Path(directory)
    manifest = {
        path.relative_to(directory).as_posix(): [path.stat().st_size, _file_digest(path)]
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != name
    }
    target = directory / name
    temporary = directory / f"{name}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    temporary.replace(target)
    return target


def check_file_manifest(directory: str | Path, name: str) -> str | None:
    """What differs from ``directory/name`` (see :func:`write_file_manifest`): a missing,
    resized or changed file, named; None when all match or there is no manifest."""
    directory = Path(directory)
    path = directory / name
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        entries = [(name, int(size), str(digest)) for name, (size, digest) in manifest.items()]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as error:
        return f"{path}: the file list is garbled ({error})"
    for relative_name, size, digest in entries:
        file = directory / relative_name
        if not file.is_file():
            return f"{file} is missing"
        actual_size = file.stat().st_size
        if actual_size != size:
            return f"{file} is {actual_size:,} bytes, {size:,} were written"
        if _file_digest(file) != digest:
            return f"{file} changed after it was written (its content fingerprint differs)"
    return None


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def move_aside(path: str | Path) -> Path:
    """Renames a damaged ``path`` to ``<path>.corrupt-<n>`` (first free n) and returns it."""
    path = Path(path)
    number = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{number}")).exists():
        number += 1
    path.rename(aside)
    return aside


def _workdir_errno(error: BaseException) -> int | None:
    """The errno of a full-disk / unwritable-folder error anywhere in ``error``'s chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WORKDIR_ERRNOS:
            return error.errno
        text = str(error)
        match = _OS_ERROR_CODE.search(text)
        if match and int(match.group(1)) in _WORKDIR_ERRNOS:
            return int(match.group(1))
        for phrase, code in _OS_ERROR_TEXT.items():
            if phrase in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def is_workdir_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an error in its chain, or its text) is a full disk or an
    unwritable folder, the failures :func:`workdir_error` turns into one line."""
    return _workdir_errno(error) is not None


def _size(count: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def workdir_error(
    error: BaseException,
    *,
    action: str,
    path: str | Path,
    needed_bytes: int | None = None,
    intact: str | None = None,
) -> WorkdirError | None:
    """A :class:`WorkdirError` for ``error`` if it is a full disk or an unwritable folder,
    else None (the caller re-raises ``error`` unchanged).

    ``action`` says what failed ("cannot save checkpoint epoch 3"), ``intact`` what is
    untouched ("epochs 1, 2 in runs/a/checkpoints are intact").
    """
    code = _workdir_errno(error)
    if code is None:
        return None
    path = Path(path)
    parts = [f"{action} to {path}: {_WORKDIR_ERRNOS[code]}"]
    if code in (errno_codes.ENOSPC, errno_codes.EDQUOT):
        free = _free_bytes(path)
        need = f"about {_size(needed_bytes)} needed" if needed_bytes else None
        have = None if free is None else f"{_size(free)} free"
        if need or have:
            parts[0] += f" ({', '.join(p for p in (need, have) if p)})"
    else:
        parts[0] += f" (check that {os.fspath(path.parent)} is writable)"
    if intact:
        parts.append(intact)
    return WorkdirError("; ".join(parts) + ".", code=code, path=path)
