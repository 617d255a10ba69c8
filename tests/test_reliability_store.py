"""Run folders and weight files: one line instead of a traceback.

* a full disk when the lock file's pid is written;
* a legacy Keras ``.h5`` that lists a weight it does not hold.
"""

from __future__ import annotations

import errno
import os

import h5py
import pytest
from test_pretrained import _perturbed_flax_variables

from kdjax.models import pretrained
from kdjax.models.pretrained import WeightFileError
from kdjax.store import locking
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
