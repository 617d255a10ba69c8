"""Run folders and weight files: one line instead of a traceback, and nothing said too late.

* a full disk when the lock file's pid is written;
* a legacy Keras ``.h5`` that lists a weight it does not hold;
* reading a run (``load_state``, as ``load_run`` does) without checkpoints, or on a
  read-only file system: nothing is created, nothing is written;
* a disk that fills while orbax writes a checkpoint: one ``WorkdirError`` line, not
  hundreds of lines of orbax errors and "Event loop is closed" tracebacks;
* a run whose newest checkpoint was deleted: the epoch restored, and the one missing,
  are said.

Full disks and read-only file systems are simulated by monkeypatching (tests run as
root, whom ``chmod`` does not stop); where ``mount`` works, a real read-only mount too.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import itertools
import logging
import os
import shutil
import subprocess
import sys
import time

import h5py
import pytest
from test_checkpoints import assert_same, flip_bytes, largest_file, make_state, save_epochs
from test_pretrained import _perturbed_flax_variables

from kdjax.models import pretrained
from kdjax.models.pretrained import WeightFileError
from kdjax.store import locking
from kdjax.store.checkpoints import RunCheckpoints, load_state
from kdjax.store.integrity import WorkdirError
from kdjax.store.locking import run_lock


def one_line(error: BaseException) -> str:
    message = str(error.value if hasattr(error, "value") else error)
    assert "\n" not in message, message
    return message


# --- 3. a full disk at the lock file -----------------------------------------------------------


def test_a_full_disk_at_the_lock_file_is_one_line_and_leaves_it_free(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(locking.os, "pwrite", disk_full)
    with pytest.raises(WorkdirError) as caught:
        with run_lock(tmp_path / "run", timeout=0):
            pytest.fail("the block must not run without the lock recorded")
    message = one_line(caught)
    assert str(tmp_path / "run" / ".kdjax.lock") in message
    assert "no space left on the device" in message
    monkeypatch.undo()
    with run_lock(tmp_path / "run", timeout=0):  # nothing still holds it
        pass


# --- 3. a legacy .h5 without one of its datasets -----------------------------------------------


def test_a_legacy_h5_missing_a_dataset_names_file_layer_and_weight(tmp_path):
    path = tmp_path / "cut.h5"
    variables = _perturbed_flax_variables("mobilenetv2")
    pretrained.save_keras_weights(path, variables, "mobilenetv2")
    with h5py.File(path, "r+") as handle:
        del handle["block_3_project"]["block_3_project/kernel:0"]
    with pytest.raises(WeightFileError) as caught:
        pretrained.load_keras_weights(path, "mobilenetv2")
    message = one_line(caught)
    assert str(path) in message and "'block_3_project'" in message
    assert "'block_3_project/kernel:0'" in message


# --- 3. reading a run only reads -----------------------------------------------------------


def test_load_state_of_a_run_without_checkpoints_creates_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="has no checkpoint yet") as caught:
        load_state(run, log=lambda _: None)
    one_line(caught)
    assert list(run.iterdir()) == []


def test_load_run_of_a_run_without_checkpoints_is_one_line_and_creates_nothing(tmp_path):
    from kdjax.runs import load_run
    from kdjax.runs.spec import RunSpec
    from kdjax.store.run_config import write_config

    run = tmp_path / "run"
    write_config(run, {**RunSpec(role="teacher", model="mlp").identity(), "data": "abc"})
    with pytest.raises(FileNotFoundError, match="has no checkpoint yet") as caught:
        load_run(run, log=lambda _: None)
    one_line(caught)
    assert sorted(path.name for path in run.iterdir()) == ["config.json"]


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def read_only_file_system(monkeypatch):
    """Every write through Python's file system calls fails with EROFS; yields the list
    of attempted writes."""
    attempts: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            attempts.append(f"{name}{args[:2]}")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else None)

        return call

    for name in ("mkdir", "makedirs", "rename", "replace", "remove", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    original_open, original_os_open = io.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            return refuse("open")(file, mode)
        return original_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS:
            return refuse("os.open")(path, flags)
        return original_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(shutil, "rmtree", refuse("shutil.rmtree"))
    yield attempts
    monkeypatch.undo()


def test_load_state_on_a_read_only_file_system_reads_and_writes_nothing(tmp_path, monkeypatch):
    save_epochs(tmp_path / "run", epochs=(1, 2))
    (tmp_path / "empty").mkdir()
    with read_only_file_system(monkeypatch) as attempts:
        state, epoch = load_state(tmp_path / "run", log=lambda _: None)
        with pytest.raises(FileNotFoundError, match="has no checkpoint yet") as caught:
            load_state(tmp_path / "empty", log=lambda _: None)
    assert epoch == 2 and attempts == []
    assert_same(state["params"], make_state(2).params)
    one_line(caught)


def test_load_state_on_a_real_read_only_mount(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        save_epochs(disk / "run", epochs=(1,))
        (disk / "empty").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert load_state(disk / "run", log=lambda _: None)[1] == 1
        with pytest.raises(FileNotFoundError, match="has no checkpoint yet"):
            load_state(disk / "empty", log=lambda _: None)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- 5. a disk that fills while orbax writes: one line, no noise -----------------------------


def big_state(leaves: int = 24, size: int = 20_000) -> dict:
    import jax

    return {
        f"layer{i}": {"kernel": jax.random.normal(jax.random.PRNGKey(i), (size,))}
        for i in range(leaves)
    }


def test_a_disk_full_during_an_orbax_write_is_one_line_without_noise(
    tmp_path, monkeypatch, capfd, caplog
):
    """One array's TensorStore write fails with ENOSPC while the others are in flight:
    orbax then closes its event loop under them and logs its own errors."""
    from orbax.checkpoint._src.serialization import serialization

    run = tmp_path / "run"
    save_epochs(run, epochs=(1,))
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    original = serialization.async_serialize_from_host
    calls = itertools.count()

    async def fail_one(*args, **kwargs):
        if next(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(*args, **kwargs)

    monkeypatch.setattr(serialization, "async_serialize_from_host", fail_one)
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    checkpoints = RunCheckpoints(run, log=print)
    with pytest.raises(WorkdirError) as caught:
        try:
            checkpoints.save(2, big_state(), {"history": [1, 2]})
        finally:
            checkpoints.close()
    time.sleep(1.0)  # let late TensorStore callbacks arrive, as they would before exit
    message = one_line(caught)
    assert "no space left on the device" in message and "epochs 1 in" in message
    output = capfd.readouterr()
    printed = (output.out + output.err).splitlines()
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert unraisable == [], unraisable[:3]
    assert logged == [], [r.getMessage()[:200] for r in logged[:3]]
    assert len(printed) <= 2, printed[:10]
    assert not any("Traceback" in line or "Event loop" in line for line in printed)
    assert RunCheckpoints(run, log=lambda _: None).latest_epoch() == 1


# --- 6. a deleted newest checkpoint is said ---------------------------------------------------


def test_a_deleted_newest_checkpoint_is_said_when_the_one_before_is_restored(tmp_path):
    save_epochs(tmp_path, epochs=(1, 2, 3))
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    for read in (
        lambda log: RunCheckpoints(tmp_path, log=log).latest_epoch(),
        lambda log: load_state(tmp_path, log=log)[1],
    ):
        messages: list[str] = []
        assert read(messages.append) == 2
        said = [m for m in messages if "epoch 3" in m]
        assert len(said) == 1 and "\n" not in said[0], messages
        assert "missing" in said[0] and "epoch 2" in said[0]


def test_nothing_is_said_when_no_checkpoint_is_missing(tmp_path):
    save_epochs(tmp_path, epochs=(1, 2, 3))  # epoch 1 removed by the keep-2 policy
    messages: list[str] = []
    assert RunCheckpoints(tmp_path, log=messages.append).latest_epoch() == 3
    assert load_state(tmp_path, log=messages.append)[1] == 3
    assert messages == []
    # A damaged newest epoch is set aside and said once, not also called missing.
    flip_bytes(largest_file(tmp_path / "checkpoints" / "3"), 500)
    assert RunCheckpoints(tmp_path, log=messages.append).latest_epoch() == 2
    assert len(messages) == 1 and "damaged" in messages[0], messages
    # Once the resumed run saves epoch 3 again, nothing is missing.
    resumed = RunCheckpoints(tmp_path, log=messages.append)
    resumed.save(3, make_state(3), {"history": [1, 2, 3]})
    resumed.close()
    messages.clear()
    assert RunCheckpoints(tmp_path, log=messages.append).latest_epoch() == 3
    assert messages == []
