"""Data parallelism: 8 simulated devices and 2 processes equal one device (1e-5), for
single students and populations (shared batches, or each student's own rows), with
either feed."""

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


def _worker(out: Path, mode: str) -> Path:
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out), mode],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp("single"), "single")


@pytest.fixture(scope="module")
def populations(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp("populations"), "populations")


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["host", "device"])
def test_eight_devices_give_the_parameters_of_one(single_process, feed):
    _assert_same_params(
        single_process / "one_device.npz", single_process / f"eight_devices_{feed}.npz"
    )
    # The runs really trained (and differ from initialisation by more than the tolerance).
    with np.load(single_process / "one_device.npz") as trained:
        assert all(np.isfinite(trained[name]).all() for name in trained.files)


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["host", "device"])
@pytest.mark.parametrize("population", ["population", "folds"])
def test_populations_on_eight_devices_give_the_parameters_of_one(populations, population, feed):
    """Three students sharing batches (one temperature each), and two students each
    reading its own rows (batches ``[students, batch]`` split along axis 1)."""
    one = populations / f"{population}_one_device.npz"
    _assert_same_params(one, populations / f"{population}_eight_devices_{feed}.npz")
    with np.load(one) as trained:
        students = {trained[name].shape[0] for name in trained.files}
        assert students == {3 if population == "population" else 2}


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("localhost", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_parameters_and_read_only_their_rows(
    single_process, populations, tmp_path
):
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
        for feed in ("host", "device"):  # students with their own rows, over processes
            _assert_same_params(
                populations / "folds_one_device.npz", tmp_path / f"process{pid}_folds_{feed}.npz"
            )

    rows = [json.loads((tmp_path / f"process{pid}_rows.json").read_text()) for pid in range(2)]
    assert len(rows[0]) == len(rows[1]) == 6  # 2 epochs × 3 steps
    for step, (first, second) in enumerate(zip(*rows, strict=True)):
        epoch, index = divmod(step, 3)
        batch = epoch_permutation(0, epoch, 96)[index * 32 : (index + 1) * 32]
        assert len(first) == len(second) == 16
        assert not set(first) & set(second)  # no process reads another's examples
        np.testing.assert_array_equal(first + second, batch)  # together: the global batch
