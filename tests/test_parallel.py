"""Data parallelism: 8 simulated devices and 2 processes equal one device (1e-5)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax.training import epoch_permutation

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"


def _environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _assert_same_params(expected: Path, got: Path) -> None:
    with np.load(expected) as a, np.load(got) as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out), "single"],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_eight_devices_give_the_parameters_of_one(single_process):
    _assert_same_params(single_process / "one_device.npz", single_process / "eight_devices.npz")
    # The runs really trained (and differ from initialisation by more than the tolerance).
    with np.load(single_process / "one_device.npz") as trained:
        assert all(np.isfinite(trained[name]).all() for name in trained.files)


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("localhost", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_parameters_and_read_only_their_rows(single_process, tmp_path):
    port = _free_port()
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), "multi", str(pid), "2", str(port)],
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    for worker in workers:
        try:
            _, stderr = worker.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        assert worker.returncode == 0, stderr[-3000:]
    for pid in range(2):
        _assert_same_params(single_process / "one_device.npz", tmp_path / f"process{pid}.npz")

    rows = [json.loads((tmp_path / f"process{pid}_rows.json").read_text()) for pid in range(2)]
    assert len(rows[0]) == len(rows[1]) == 6  # 2 epochs × 3 steps
    for step, (first, second) in enumerate(zip(*rows, strict=True)):
        epoch, index = divmod(step, 3)
        batch = epoch_permutation(0, epoch, 96)[index * 32 : (index + 1) * 32]
        assert len(first) == len(second) == 16
        assert not set(first) & set(second)  # no process reads another's examples
        np.testing.assert_array_equal(first + second, batch)  # together: the global batch
