"""Caches of decoded data: one ``.npz`` per source and settings, rebuilt when damaged.

Decoding a data set (thousands of JPEGs or PNGs, thousands of CSV files) takes far
longer than reading its arrays back, so the loaders of image folders, MHIST and
BioVid keep the decoded arrays as one ``.npz`` named by a fingerprint of the source.
A cache is only ever a copy of what the source gives, so no damage to it stops a run:

* :func:`read` returns the arrays, or None when the file is absent. A cache that
  cannot be read (cut short, emptied, bytes changed — the zip CRC of every array is
  checked, as every array is read in full) or whose arrays do not fit the source
  (the caller's ``check``) also gives None, after one line naming the file and
  saying that it is rebuilt from the source.
* :func:`write` is atomic (a temporary file in the same folder, then a rename), so
  a crash never leaves a partial cache. When the folder cannot be created or
  written (disk full, read-only, permission denied), it removes its temporary file
  and says in one line that the run continues without the cache.

Example::

    arrays = npz_cache.read(path, what="decoded MHIST image", rebuild="decoding again",
                            log=print)
    if arrays is None:
        arrays = {"images": decode_everything()}
        npz_cache.write(path, arrays, what="decoded MHIST image", log=print)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

_REASON_LENGTH = 160


def _reason(error: BaseException) -> str:
    """``Type: message`` of an error on one line, shortened."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror  # the file name is said by the caller
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= _REASON_LENGTH else text[: _REASON_LENGTH - 4] + " ..."


def read(
    path: str | os.PathLike,
    *,
    what: str,
    rebuild: str,
    log: Callable[[str], None],
    check: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> dict[str, np.ndarray] | None:
    """Every array of the cache ``path``, or None: absent (silently), or unreadable or
    not fitting the source (one line: ``The <what> cache <path> ...: <rebuild>.``).

    Args:
      path: the ``.npz`` file.
      what: what the cache holds, for the message ("decoded-image").
      rebuild: what the caller does instead ("decoding again").
      log: where the line goes.
      check: given the arrays, returns why they do not fit the source
        ("does not match <source>") or None when they do.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Exception as error:  # any failure to read a copy means: make it again
        log(f"The {what} cache {path} is unreadable ({_reason(error)}): {rebuild}.")
        return None
    if not isinstance(arrays, dict) or not arrays:
        log(f"The {what} cache {path} holds no arrays: {rebuild}.")
        return None
    if check is not None:
        try:
            problem = check(arrays)
        except Exception as error:  # arrays of other shapes or types than written
            problem = f"does not match its source ({_reason(error)})"
        if problem:
            log(f"The {what} cache {path} {problem}: {rebuild}.")
            return None
    return arrays


def write(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    *,
    what: str,
    log: Callable[[str], None],
) -> bool:
    """Writes ``arrays`` to ``path`` atomically; True when written.

    A failed write (``OSError``: disk full, read-only or unwritable folder) removes
    its temporary file, says so in one line and returns False: only the next run's
    load is slower.
    """
    path = Path(path)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)
        temporary.replace(path)  # atomic: a crash never leaves a partial cache
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        log(
            f"Could not write the {what} cache {path} ({_reason(error)}); continuing without "
            f"it. To cache later runs, make {path.parent} writable or free space there."
        )
        return False
    return True
