"""kdjax.store.checkpoints: fingerprints verified on restore, fallback past damaged epochs,
one-line errors for full disks, read-only folders and garbled config files.

The damage is done the way it happens: bytes flipped inside a data file (size kept),
files truncated, deleted or emptied. The state's values at each epoch are known
(``make_state(epoch)``), so every restore is compared with an independent reference.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from kdjax.store.checkpoints import (
    FILES_MANIFEST,
    INTEGRITY_KEY,
    RunCheckpoints,
    load_state,
)
from kdjax.store.integrity import DamagedFileError, WorkdirError
from kdjax.store.run_config import read_config, write_config


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, images, train: bool = False):
        hidden = nn.relu(nn.Dense(32)(images.reshape(len(images), -1)))
        return {"logits": nn.Dense(10)(hidden)}


class State(struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: tuple
    dropout_key: jax.Array


def make_state(epoch: int) -> State:
    """A train-state-like pytree whose values depend on ``epoch``."""
    params = TinyNet().init(jax.random.PRNGKey(epoch), np.zeros((1, 8, 8, 1)))["params"]
    optimizer = optax.adam(1e-3)
    return State(
        step=jnp.asarray(epoch * 10, jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        dropout_key=jax.random.PRNGKey(100 + epoch),
    )


def assert_same(restored, expected) -> None:
    leaves, expected_leaves = jax.tree.leaves(restored), jax.tree.leaves(expected)
    assert len(leaves) == len(expected_leaves)
    for got, want in zip(leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def save_epochs(run_dir: Path, epochs=(1, 2, 3)) -> None:
    checkpoints = RunCheckpoints(run_dir, log=lambda _: None)
    for epoch in epochs:
        checkpoints.save(epoch, make_state(epoch), {"history": list(range(1, epoch + 1))})
    checkpoints.close()


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(path: Path, offset: int, count: int = 64) -> None:
    payload = bytearray(path.read_bytes())
    payload[offset : offset + count] = bytes(255 - b for b in payload[offset : offset + count])
    path.write_bytes(bytes(payload))


def test_save_then_restore_gives_the_saved_values_and_meta(tmp_path):
    save_epochs(tmp_path)
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)
    assert checkpoints.latest_epoch() == 3
    state, meta = checkpoints.restore(3, make_state(0))
    checkpoints.close()
    assert_same(state, make_state(3))
    assert meta == {"history": [1, 2, 3]}  # the fingerprints stay inside
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]


@pytest.mark.parametrize("offset", ["start", "middle", "end"])
def test_flipped_bytes_in_a_data_file_fall_back_to_the_previous_epoch(tmp_path, offset):
    save_epochs(tmp_path)
    data_file = largest_file(tmp_path / "checkpoints" / "3")
    size = data_file.stat().st_size
    flip_bytes(data_file, {"start": 200, "middle": size // 2, "end": size - 200}[offset])
    assert data_file.stat().st_size == size

    messages = []
    checkpoints = RunCheckpoints(tmp_path, log=messages.append)
    assert checkpoints.latest_epoch() == 2
    state, meta = checkpoints.restore(2, make_state(0))
    checkpoints.close()
    assert_same(state, make_state(2))
    assert meta == {"history": [1, 2]}
    (message,) = messages
    assert "epoch 3 is damaged" in message and "3.corrupt-1" in message
    assert f"{data_file} changed after it was written" in message
    aside = tmp_path / "checkpoints" / "3.corrupt-1"
    assert aside.is_dir() and not (tmp_path / "checkpoints" / "3").exists()
    assert (aside / data_file.relative_to(tmp_path / "checkpoints" / "3")).stat().st_size == size


def _truncate(step: Path) -> None:
    os.truncate(largest_file(step), 1000)


def _delete(step: Path) -> None:
    largest_file(step).unlink()


def _empty_metadata(step: Path) -> None:
    (step / "state" / "_METADATA").write_text("")


def _garble_meta(step: Path) -> None:
    (step / "meta" / "metadata").write_bytes(b"\xe9\x00garbage")


def _delete_state(step: Path) -> None:
    shutil.rmtree(step / "state")


def _rewrite_history(step: Path) -> None:  # valid JSON, other numbers
    path = step / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta["history"][0] = 99
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [_truncate, _delete, _empty_metadata, _garble_meta, _delete_state, _rewrite_history],
    ids=lambda damage: damage.__name__.strip("_"),
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_named(tmp_path, damage):
    save_epochs(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    messages = []
    checkpoints = RunCheckpoints(tmp_path, log=messages.append)
    assert checkpoints.latest_epoch() == 2
    assert_same(checkpoints.restore(2, make_state(0))[0], make_state(2))
    # Training goes on: epoch 3 is written afresh beside the damaged copy.
    checkpoints.save(3, make_state(3), {"history": [1, 2, 3]})
    checkpoints.close()
    assert str(tmp_path / "checkpoints" / "3") in messages[0]
    assert "\n" not in messages[0] and len(messages[0]) < 600
    again = RunCheckpoints(tmp_path, log=lambda _: None)
    assert again.latest_epoch() == 3
    assert_same(again.restore(3, make_state(0))[0], make_state(3))
    again.close()
    assert (tmp_path / "checkpoints" / "3.corrupt-1").is_dir()


def test_when_no_epoch_verifies_training_starts_over(tmp_path):
    save_epochs(tmp_path, epochs=(1, 2))
    for epoch in (1, 2):
        flip_bytes(largest_file(tmp_path / "checkpoints" / str(epoch)), 300)
    messages = []
    checkpoints = RunCheckpoints(tmp_path, log=messages.append)
    assert checkpoints.latest_epoch() is None
    checkpoints.close()
    assert "starts over" in messages[-1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "1.corrupt-1",
        "2.corrupt-1",
    ]


def test_restoring_a_damaged_epoch_directly_is_a_one_line_error(tmp_path):
    save_epochs(tmp_path)
    # Epoch 3 as a crash right after orbax finalised it leaves it: no file list yet,
    # so its leaf digests alone must catch the flipped bytes.
    (tmp_path / "checkpoints" / "3" / FILES_MANIFEST).unlink()
    flip_bytes(largest_file(tmp_path / "checkpoints" / "3"), 300)
    deleted = largest_file(tmp_path / "checkpoints" / "2")
    deleted.unlink()
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)
    with pytest.raises(DamagedFileError, match=r"checkpoints/3/state: array .* fingerprint"):
        checkpoints.restore(3, make_state(0))
    with pytest.raises(DamagedFileError, match=f"{deleted} is missing") as error:
        checkpoints.restore(2, make_state(0))
    checkpoints.close()
    assert "\n" not in str(error.value)
    assert error.value.__cause__ is None


def test_orbax_read_errors_become_one_line_naming_the_file(tmp_path):
    save_epochs(tmp_path, epochs=(1,))
    step = tmp_path / "checkpoints" / "1"
    (step / FILES_MANIFEST).unlink()
    (step / "meta" / "metadata").unlink()
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)
    with pytest.raises(DamagedFileError, match=f"{step}/meta/metadata: FileNotFoundError"):
        checkpoints.restore(1, make_state(0))
    checkpoints.close()


def test_a_template_that_does_not_fit_is_not_called_damage(tmp_path):
    save_epochs(tmp_path, epochs=(1,))
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)
    other = make_state(0).replace(params={"Dense_0": {"kernel": jnp.zeros((3, 3))}})
    with pytest.raises(Exception) as error:
        checkpoints.restore(1, other)
    checkpoints.close()
    assert not isinstance(error.value, DamagedFileError)


def test_a_checkpoint_without_fingerprints_is_restored_and_said_unverified(tmp_path):
    # What an older kdjax wrote: the same two items, no digests in meta.
    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    manager.save(
        4,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(make_state(4)), meta=ocp.args.JsonSave({"history": [4]})
        ),
    )
    manager.wait_until_finished()
    manager.close()
    messages = []
    checkpoints = RunCheckpoints(tmp_path, log=messages.append)
    assert checkpoints.latest_epoch() == 4
    state, meta = checkpoints.restore(4, make_state(0))
    checkpoints.close()
    assert_same(state, make_state(4))
    assert meta == {"history": [4]}
    assert any("not verified" in m for m in messages)


def test_saved_meta_carries_a_digest_per_state_leaf(tmp_path):
    save_epochs(tmp_path, epochs=(1,))
    stored = json.loads((tmp_path / "checkpoints" / "1" / "meta" / "metadata").read_text())
    digests = stored[INTEGRITY_KEY]["state"]
    assert "params/Dense_0/kernel" in digests and "opt_state/0/mu/Dense_1/bias" in digests
    assert len(digests) == len(jax.tree.leaves(make_state(1)))


# --- Writes that fail ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.ENOSPC, r"no space left .*KB needed"), (errno.EROFS, r"read-only")],
)
def test_a_failed_save_names_the_path_and_the_intact_epochs(tmp_path, monkeypatch, code, expected):
    save_epochs(tmp_path, epochs=(1, 2))
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)

    def failing_save(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoints._manager, "save", failing_save)
    with pytest.raises(WorkdirError, match=expected) as error:
        checkpoints.save(3, make_state(3), {"history": [1, 2, 3]})
    message = str(error.value)
    assert str(tmp_path / "checkpoints") in message
    assert "epochs 1, 2 in" in message and "are intact" in message
    assert error.value.errno == code and "\n" not in message
    monkeypatch.undo()
    checkpoints.close()


def test_tensorstore_text_errors_are_recognised(tmp_path, monkeypatch):
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)

    def failing_save(*args, **kwargs):  # how orbax reports ENOSPC from TensorStore
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write '
            "1635 bytes to file 6: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(checkpoints._manager, "save", failing_save)
    with pytest.raises(WorkdirError, match="no earlier epoch was saved") as error:
        checkpoints.save(1, make_state(1), {"history": [1]})
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    checkpoints.close()


def test_other_save_errors_are_not_disguised(tmp_path, monkeypatch):
    checkpoints = RunCheckpoints(tmp_path, log=lambda _: None)
    monkeypatch.setattr(
        checkpoints._manager, "save", lambda *a, **k: (_ for _ in ()).throw(KeyError("x"))
    )
    with pytest.raises(KeyError):
        checkpoints.save(1, make_state(1), {"history": [1]})
    monkeypatch.undo()
    checkpoints.close()


def _mount_tmpfs(directory: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    directory.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
    )
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (root only: real ENOSPC and EROFS, no simulation)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):
        pytest.skip("needs root and a mountable tmpfs")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Writes a file that takes every free byte of ``disk``."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while handle.write(b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_full_disk_is_one_line_and_earlier_epochs_stay_intact(small_disk):
    run = small_disk / "run"
    save_epochs(run, epochs=(1,))
    filler = fill(small_disk)
    checkpoints = RunCheckpoints(run, log=lambda _: None)
    with pytest.raises(WorkdirError, match="no space left on the device") as error:
        try:
            checkpoints.save(2, make_state(2), {"history": [1, 2]})
        finally:
            checkpoints.close()
    message = str(error.value)
    assert "\n" not in message and f"epochs 1 in {run / 'checkpoints'} are intact" in message
    assert re.search(r"about [0-9.]+ KB needed, [0-9]+ bytes free", message)
    filler.unlink()
    reopened = RunCheckpoints(run, log=lambda _: None)
    assert reopened.latest_epoch() == 1
    assert_same(reopened.restore(1, make_state(0))[0], make_state(1))
    reopened.close()


def test_a_read_only_folder_is_one_line(small_disk):
    save_epochs(small_disk / "run", epochs=(1,))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    checkpoints = RunCheckpoints(small_disk / "run", log=lambda _: None)
    with pytest.raises(WorkdirError, match="read-only.*epochs 1 in .* are intact"):
        try:
            checkpoints.save(2, make_state(2), {"history": [1, 2]})
        finally:
            checkpoints.close()
    with pytest.raises(WorkdirError, match=r"cannot write .*config\.json: the file system is"):
        write_config(small_disk / "other", {"model": "x"})


# --- config.json and load_state ------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b'{"model": "tiny"', b"\xff\xfe"], ids=str)
def test_a_garbled_config_is_a_one_line_error_naming_the_file(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    for call in (lambda: read_config(tmp_path), lambda: write_config(tmp_path, {"model": "x"})):
        with pytest.raises(DamagedFileError, match=r"config\.json is damaged") as error:
            call()
        assert str(tmp_path / "config.json") in str(error.value)
        assert "\n" not in str(error.value)
    if not content:
        assert "empty" in str(error.value)


def test_write_config_is_atomic_and_refuses_other_settings(tmp_path):
    write_config(tmp_path / "run", {"model": "tiny", "epochs": (1, 2)})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]
    write_config(tmp_path / "run", {"model": "tiny", "epochs": [1, 2]})  # same in JSON
    with pytest.raises(ValueError, match=r"different settings \(epochs\)"):
        write_config(tmp_path / "run", {"model": "tiny", "epochs": 3})
    assert read_config(tmp_path / "run") == {"model": "tiny", "epochs": [1, 2]}


def test_load_state_verifies_and_skips_a_damaged_newest_epoch(tmp_path):
    save_epochs(tmp_path)
    state, epoch = load_state(tmp_path, log=lambda _: None)
    assert epoch == 3
    assert_same(state["params"], make_state(3).params)

    flip_bytes(largest_file(tmp_path / "checkpoints" / "3"), 500)
    messages = []
    state, epoch = load_state(tmp_path, log=messages.append)
    assert epoch == 2
    assert_same(state["params"], make_state(2).params)
    assert "damaged checkpoint of epoch 3" in messages[0]
    assert (tmp_path / "checkpoints" / "3").is_dir()  # load_state only reads
    with pytest.raises(DamagedFileError, match="checkpoints/3/state"):
        load_state(tmp_path, epoch=3, log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint of epoch 7"):
        load_state(tmp_path, epoch=7, log=lambda _: None)


def test_load_state_when_nothing_verifies(tmp_path):
    save_epochs(tmp_path, epochs=(1,))
    largest_file(tmp_path / "checkpoints" / "1").unlink()
    with pytest.raises(DamagedFileError, match="no checkpoint in .* verifies"):
        load_state(tmp_path, log=lambda _: None)
