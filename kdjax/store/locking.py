"""One process at a time per run directory: an advisory lock with the holder's pid.

Two copies of a command pointed at one workdir would otherwise both train the same
run, both move damaged checkpoints aside and both rewrite the same soft-target store.
:func:`run_lock` takes an exclusive ``fcntl.flock`` on ``<directory>/.kdjax.lock``
and writes the holder's pid and host into it. A second process either waits,
saying which pid it waits for, or (``timeout=0``) stops at once with
:class:`RunLockedError` naming that pid.

The operating system drops a ``flock`` when its process dies, even by ``kill -9``,
so a stale lock never blocks: the file stays, the lock does not. Within one process
the lock is re-entrant (nested ``run_lock`` of one directory is a no-op). POSIX only
(``fcntl``); on network file systems it is as reliable as their ``flock``.

Example::

    with run_lock("runs/mnist_kd/teacher-1a2b", log=print):
        ...  # train, save checkpoints, write stores
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kdjax.store.integrity import workdir_error

LOCK_FILE = ".kdjax.lock"

_held: dict[Path, int] = {}  # lock file -> nesting depth in this process
_held_guard = threading.Lock()


class RunLockedError(Exception):
    """Another live process holds the run directory's lock; the message names its pid."""


def _holder(lock_path: Path, patience: float = 1.0) -> str:
    """Who holds the lock, from the pid it writes just after taking it: read again
    for up to ``patience`` seconds while the file is still empty (the moment between
    the holder's flock and its write)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            text = lock_path.read_text().strip()
        except OSError:
            text = ""
        if text or time.monotonic() >= deadline:
            return f"process {text}" if text else "another process"
        time.sleep(0.02)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open(directory: Path, lock_path: Path) -> int:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        failure = workdir_error(error, action="cannot create the lock file", path=lock_path)
        if failure is None:
            raise
        raise failure from None


def _still_there(descriptor: int, lock_path: Path) -> bool:
    """Whether the locked file is still the one at ``lock_path`` (a holder that failed
    before writing anything removes its folder, lock file included)."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
    except OSError:
        return False


def _acquire(directory: Path, lock_path: Path, timeout, log, poll_seconds: float) -> int:
    """A descriptor of ``lock_path`` holding its flock, waiting as :func:`run_lock` says."""
    descriptor = _open(directory, lock_path)
    try:
        if not _try_lock(descriptor):
            holder = _holder(lock_path)
            if timeout is not None and timeout <= 0:
                raise RunLockedError(
                    f"{directory} is in use by {holder} (lock {lock_path}); wait for it to "
                    "finish, stop it, or use another run folder (--workdir)."
                )
            log(f"{directory} is in use by {holder}: waiting for it to finish ...")
            deadline = None if timeout is None else time.monotonic() + timeout
            while not _try_lock(descriptor):
                if deadline is not None and time.monotonic() >= deadline:
                    raise RunLockedError(
                        f"{directory} is still in use by {_holder(lock_path)} after "
                        f"{timeout:g} s of waiting (lock {lock_path})."
                    )
                time.sleep(poll_seconds)
    except BaseException:
        os.close(descriptor)
        raise
    if _still_there(descriptor, lock_path):
        return descriptor
    os.close(descriptor)  # the folder went with a failed holder: lock the new one
    remaining = None if timeout is None else max(0.0, timeout)
    return _acquire(directory, lock_path, remaining, log, poll_seconds)


def _remove_if_only_the_lock(directory: Path, lock_path: Path) -> None:
    """Removes ``directory`` when it holds nothing but ``lock_path`` (still locked)."""
    with contextlib.suppress(OSError):
        if [entry.name for entry in directory.iterdir()] == [lock_path.name]:
            lock_path.unlink()
            directory.rmdir()


def _lock_name(per_process: bool) -> str:
    if not per_process:
        return LOCK_FILE
    import jax

    index = jax.process_index()
    return LOCK_FILE if index == 0 else f"{LOCK_FILE}.{index}"


@contextlib.contextmanager
def run_lock(
    directory: str | os.PathLike,
    *,
    timeout: float | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 0.2,
    per_process: bool = False,
) -> Iterator[Path]:
    """Holds ``directory``'s lock for the ``with`` block (creating the folder if needed).

    Args:
      directory: the run directory (or a store folder) to own.
      timeout: seconds to wait for another holder; ``None`` waits as long as it
        takes (saying once which pid it waits for); ``0`` fails at once.
      log: where the waiting message goes.
      poll_seconds: how often a waiting process retries.
      per_process: the processes of one multi-process JAX job use the directory
        together (they train one run, each its share of every batch): each takes its
        own lock, ``.kdjax.lock`` for process 0 and ``.kdjax.lock.<i>`` for process
        *i*, so they never wait for each other, while process *i* of a second job
        still waits for process *i* of the first.

    Yields the lock file's path. Raises :class:`RunLockedError` (naming the holder's
    pid and host) when the lock is not free within ``timeout``, and
    :class:`~kdjax.store.integrity.WorkdirError` (one line) when the folder or the lock
    file cannot be written (read-only, disk full); the lock is then not held.
    """
    directory = Path(directory)
    lock_path = (directory / _lock_name(per_process)).absolute()
    with _held_guard:
        depth = _held.get(lock_path, 0)
        if depth:
            _held[lock_path] = depth + 1
    if depth:
        try:
            yield lock_path
        finally:
            with _held_guard:
                _held[lock_path] -= 1
        return

    created = not directory.exists()
    descriptor = _acquire(directory, lock_path, timeout, log, poll_seconds)
    try:
        holder = f"{os.getpid()} on {socket.gethostname()}\n".encode()
        try:
            os.pwrite(descriptor, holder, 0)  # then cut what a longer earlier text left
            os.ftruncate(descriptor, len(holder))
        except OSError as error:  # closing the descriptor below releases the lock
            failure = workdir_error(error, action="cannot write the lock file", path=lock_path)
            if failure is None:
                raise
            raise failure from None
        with _held_guard:
            _held[lock_path] = 1
        try:
            yield lock_path
        except BaseException:
            if created:  # a run that failed before writing anything leaves no folder
                _remove_if_only_the_lock(directory, lock_path)
            raise
        finally:
            with _held_guard:
                del _held[lock_path]
            with contextlib.suppress(OSError):  # the pid is a hint; the unlock matters
                os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
