"""A run that fails before writing anything leaves no folder behind (only its lock
file would be left), and a process waiting for that lock then takes the lock of the
folder that replaces it, never of the removed file."""

import multiprocessing
import time

import pytest

from kdjax.store.locking import LOCK_FILE, run_lock


def test_a_failure_in_a_new_folder_leaves_no_folder(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError, match="bad data"):
        with run_lock(folder):
            raise RuntimeError("bad data")
    assert not folder.exists()


def test_a_folder_that_holds_more_or_existed_before_stays(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_lock(folder):
            (folder / "config.json").write_text("{}")
            raise RuntimeError("diverged")
    assert (folder / "config.json").is_file()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with run_lock(existing):
            raise RuntimeError("bad data")
    assert existing.is_dir()


def _fail_after(folder, seconds, started):
    with run_lock(folder):
        started.set()
        time.sleep(seconds)
        raise SystemExit(1)  # fails before writing anything: the folder goes


def test_a_waiter_takes_the_lock_of_the_folder_that_replaces_a_removed_one(tmp_path):
    folder = tmp_path / "run"
    context = multiprocessing.get_context("fork")
    started = context.Event()
    holder = context.Process(target=_fail_after, args=(folder, 1.0, started))
    holder.start()
    assert started.wait(30)
    with run_lock(folder, log=lambda line: None) as lock_path:
        assert lock_path.is_file() and lock_path.name == LOCK_FILE
        assert folder.is_dir()
    holder.join(30)
    assert holder.exitcode == 1
