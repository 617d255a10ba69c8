"""kdjax.store.locking.run_lock with real processes: fail fast or wait naming the holder's pid,
and a lock left by a ``kill -9`` never blocks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdjax.store import locking
from kdjax.store.integrity import WorkdirError
from kdjax.store.locking import LOCK_FILE, RunLockedError, run_lock

ROOT = Path(__file__).resolve().parents[1]

# Takes the lock, says so, then holds it until its stdin closes (or it is killed).
HOLDER = """
import sys
from kdjax.store.locking import run_lock
with run_lock(sys.argv[1], log=print):
    print("locked", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""

# Waits for the lock (timeout from argv), prints what it logged and when it got it.
WAITER = """
import sys, time
from kdjax.store.locking import run_lock, RunLockedError
timeout = None if sys.argv[2] == "none" else float(sys.argv[2])
try:
    with run_lock(sys.argv[1], timeout=timeout, log=lambda m: print("log:", m, flush=True)):
        print("acquired", time.time(), flush=True)
except RunLockedError as error:
    print("refused:", error, flush=True)
"""


def start(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def holder(tmp_path):
    process = start(HOLDER, str(tmp_path / "run"))
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_process_fails_fast_naming_the_holder_pid(tmp_path, holder):
    with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on ") as error:
        with run_lock(tmp_path / "run", timeout=0):
            pytest.fail("the lock was taken twice")
    assert str(tmp_path / "run") in str(error.value) and "\n" not in str(error.value)


def test_a_waiting_process_says_whom_it_waits_for_and_runs_after_release(tmp_path, holder):
    waiter = start(WAITER, str(tmp_path / "run"), "none")
    first = waiter.stdout.readline()
    assert first.startswith("log: ") and f"in use by process {holder.pid}" in first
    time.sleep(0.5)
    assert waiter.poll() is None  # still waiting
    released_at = time.time()
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"
    word, acquired_at = waiter.stdout.readline().split()
    waiter.wait(timeout=30)
    assert word == "acquired" and float(acquired_at) >= released_at


def test_a_waiting_process_gives_up_after_its_timeout(tmp_path, holder):
    waiter = start(WAITER, str(tmp_path / "run"), "0.6")
    output, _ = waiter.communicate(timeout=30)
    assert f"refused: {tmp_path / 'run'} is still in use by process {holder.pid}" in output
    assert "after 0.6 s" in output


def test_a_lock_left_by_kill_9_does_not_block(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / "run" / LOCK_FILE
    assert str(holder.pid) in lock_file.read_text()  # the stale pid is still written there
    with run_lock(tmp_path / "run", timeout=0) as path:
        assert path == lock_file.absolute()
        assert lock_file.read_text().startswith(f"{os.getpid()} on ")
    assert lock_file.read_text() == ""  # released: no pid left behind


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path, timeout=0):
        with run_lock(tmp_path, timeout=0):
            pass
        # Still held by the outer block: another process is refused.
        refused = start(WAITER, str(tmp_path), "0")
        output, _ = refused.communicate(timeout=30)
        assert f"in use by process {os.getpid()}" in output
    free = start(WAITER, str(tmp_path), "0")
    assert free.communicate(timeout=30)[0].startswith("acquired")


def test_an_unwritable_folder_is_a_workdir_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(locking.os, "open", read_only)
    with pytest.raises(WorkdirError, match=r"cannot create the lock file .*read-only"):
        with run_lock(tmp_path / "run"):
            pass
