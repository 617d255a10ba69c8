"""The commands over several devices and processes: ``--multihost`` with its process
layout flags (checked before any work), ``experiments.mnist_kd`` as two processes of
two simulated CPU devices each over gloo (like one process of four devices; only
process 0 writes results, plots and logs; a rerun resumes from the orbax
checkpoints in both processes), and a population command (``mnist_sweep``) over
eight simulated devices like on one."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_experiments import read_json, run_command, write_tiny_mnist

from experiments import mnist_kd
from kdjax.runs.distributed import process_layout

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--teacher_epochs=1", "--batch_size=32", "--noscratch")
LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ", re.MULTILINE)

# Loaded in each command's process (as ``sitecustomize``): records, through Python's
# audit hooks, every file the process opens (for writing, or only reading) and every
# rename or folder it makes, and writes the lists to $KDJAX_TEST_FILES at exit.
RECORDER = """
import atexit, json, os, sys

_out = os.environ.get("KDJAX_TEST_FILES")
if _out:
    _files = {"written": set(), "read": set()}
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    _PATH = (str, bytes, os.PathLike)

    def _record(event, args):
        if event == "open" and isinstance(args[0], _PATH):
            mode, flags = args[1], args[2]
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            _files["written" if writing else "read"].add(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.replace") and isinstance(args[1], _PATH):
            _files["written"].add(os.fsdecode(args[1]))
        elif event == "os.mkdir" and isinstance(args[0], _PATH):
            _files["written"].add(os.fsdecode(args[0]))

    def _save():
        with open(_out, "w") as handle:
            json.dump({kind: sorted(paths) for kind, paths in _files.items()}, handle)

    sys.addaudithook(_record)
    atexit.register(_save)
"""


# --- The process layout: flags and environment variables, checked before any work ----


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"process_id": 1}, "--process_id needs --multihost"),
        ({"multihost": True, "num_processes": 2}, "--num_processes needs --coordinator_address"),
        (
            {"multihost": True, "coordinator_address": "localhost", "num_processes": 2,
             "process_id": 0},
            "--coordinator_address must be HOST:PORT (e.g. localhost:12355), got 'localhost'",
        ),
        (
            {"multihost": True, "coordinator_address": "localhost:99999", "num_processes": 2,
             "process_id": 0},
            "--coordinator_address must be HOST:PORT",
        ),
        (
            {"multihost": True, "coordinator_address": "localhost:1234", "num_processes": 2,
             "process_id": 2},
            "--process_id must be in 0..1 (--num_processes=2), got 2",
        ),
        (
            {"multihost": True, "coordinator_address": "h:1", "num_processes": 0,
             "process_id": 0},
            "--num_processes must be >= 1, got 0.",
        ),
    ],
)  # fmt: skip
def test_process_layout_flags_are_checked(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mnist_kd.Config(**fields)


def test_the_process_layout_comes_from_the_flags_or_the_environment():
    flags = mnist_kd.Config(
        multihost=True, coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3
    )
    layout = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert process_layout(flags, environ={}) == layout
    plain = mnist_kd.Config(multihost=True)
    variables = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                 "JAX_PROCESS_ID": "3"}  # fmt: skip
    assert process_layout(plain, environ=variables) == layout
    # The flags win; with neither, JAX detects the cluster (or reads the address alone).
    assert process_layout(flags, environ={**variables, "JAX_PROCESS_ID": "0"}) == layout
    assert process_layout(plain, environ={}) == {}
    assert process_layout(plain, environ={"JAX_COORDINATOR_ADDRESS": "h:1"}) == {}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is set but not JAX_COORDINATOR_ADD"):
        process_layout(plain, environ={"JAX_PROCESS_ID": "1"})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be a whole number, got 'two'"):
        process_layout(plain, environ={**variables, "JAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID must be in 0\.\.3"):
        process_layout(plain, environ={**variables, "JAX_PROCESS_ID": "4"})


def test_a_bad_process_layout_stops_the_command_with_one_line(tmp_path):
    workdir = tmp_path / "never"
    result = run_command(
        f"--workdir={workdir}", "--multihost", "--coordinator_address=localhost:1234",
        "--num_processes=2", "--process_id=5", timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --process_id must be in 0..1 (--num_processes=2), got 5")
    )
    assert not workdir.exists()


# --- One command, two processes ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("localhost", 0))
        return handle.getsockname()[1]


def _two_processes(tmp_path: Path, name: str, *flags: str) -> list[dict]:
    """``python -m experiments.mnist_kd --multihost FLAGS`` as processes 0 and 1 of two
    simulated CPU devices each, coordinated on localhost; each process's return code,
    output and the files it opened (see RECORDER)."""
    recorder = tmp_path / "recorder"
    recorder.mkdir(exist_ok=True)
    (recorder / "sitecustomize.py").write_text(RECORDER)
    address = f"--coordinator_address=localhost:{_free_port()}"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(recorder), str(ROOT)]),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.mnist_kd",
                "--multihost",
                address,
                "--num_processes=2",
                f"--process_id={index}",
                *flags,
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**environment, "KDJAX_TEST_FILES": str(tmp_path / f"{name}-{index}.json")},
        )  # fmt: skip
        for index in range(2)
    ]
    outcomes = []
    try:
        for index, process in enumerate(processes):
            stdout, stderr = process.communicate(timeout=600)
            files = read_json(tmp_path / f"{name}-{index}.json")
            outcomes.append({"code": process.returncode, "stdout": stdout, "stderr": stderr,
                             **files})  # fmt: skip
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for outcome in outcomes:
        assert outcome["code"] == 0, outcome["stderr"][-3000:]
    return outcomes


def _inside(paths: list[str], folder: Path) -> list[str]:
    return [path for path in paths if Path(path).is_relative_to(folder)]


def _assert_like(got: dict, expected: dict) -> None:
    """Same runs, epochs and accuracies; losses to float32 reassociation (the
    all-reduce of four devices' gradient sums, in two processes over gloo or in one)."""
    assert list(got["runs"]) == list(expected["runs"])
    for name, entry in expected["runs"].items():
        ours = got["runs"][name]
        assert [e["epoch"] for e in ours["history"]] == [e["epoch"] for e in entry["history"]]
        for mine, theirs in zip(ours["history"], entry["history"], strict=True):
            np.testing.assert_allclose(mine["train_loss"], theirs["train_loss"], rtol=1e-5)
            # 64 test images: parameters equal to ~1e-6 could flip at most a near tie.
            np.testing.assert_allclose(mine["test_accuracy"], theirs["test_accuracy"],
                                       atol=1 / 64 + 1e-9)  # fmt: skip


@pytest.mark.slow
def test_mnist_kd_in_two_processes_trains_like_one_process_of_four_devices(tmp_path):
    data = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "two"
    common = (*TINY, f"--data_dir={data}", f"--workdir={workdir}")
    first = _two_processes(tmp_path, "first", *common, "--epochs=1")

    # Only process 0 logs and writes results, plots and event files.
    main, other = first
    assert "data-parallel over 4 cpu devices in 2 process(es)" in main["stdout"]
    assert LOG_LINE.search(main["stdout"]) and "student_kd" in main["stdout"]
    assert not LOG_LINE.search(other["stdout"]) and "student_kd" not in other["stdout"]
    written = {index: _inside(outcome["written"], workdir) for index, outcome in enumerate(first)}
    for name in ("results.json", "learning_curves.png"):
        assert str(workdir / name) in written[0] and str(workdir / name) not in written[1]
    assert any("/tensorboard/" in path for path in written[0])
    # (The teacher's stored logits are written by whichever process takes their folder's
    # lock first; the other waits, then reads them.)
    reports = ("results", ".png", "/tensorboard", "kdjax_files.json")
    assert [path for path in written[1] if any(part in path for part in reports)] == []
    # Both processes save each checkpoint through orbax (process 1 its array metadata).
    for run in ("teacher", "student_kd"):
        saved = [path for path in written[1] if f"/{run}-" in path and "/checkpoints/" in path]
        assert any("process_1" in path for path in saved), saved
    results = read_json(workdir / "results.json")
    assert results["environment"]["device_count"] == 4
    assert results["environment"]["process_count"] == 2
    assert results["config"]["multihost"] and results["config"]["num_processes"] == 2

    # A second epoch: both processes restore the teacher and the student from orbax.
    second = _two_processes(tmp_path, "second", *common, "--epochs=2")
    assert "Reusing finished teacher" in second[0]["stdout"]
    assert "Resuming student_kd" in second[0]["stdout"]
    for outcome in second:
        restored = [p for p in _inside(outcome["read"], workdir) if "/checkpoints/" in p]
        assert any("/teacher-" in path for path in restored), outcome["read"]
        assert any("/student_kd-" in path for path in restored)
    resumed = read_json(workdir / "results.json")
    assert resumed["runs"]["student_kd"]["resumed_from_epoch"] == 1
    assert resumed["runs"]["teacher"]["resumed_from_epoch"] == 1  # reused
    assert resumed["runs"]["teacher"]["history"] == results["runs"]["teacher"]["history"]

    # The same command in one process of four devices, two epochs straight.
    one = run_command(*common[:-1], f"--workdir={tmp_path / 'one'}", "--epochs=2", devices=4)
    assert one.returncode == 0, one.stderr[-3000:]
    single = read_json(tmp_path / "one" / "results.json")
    assert single["environment"]["device_count"] == 4
    assert single["environment"]["process_count"] == 1
    _assert_like(resumed, single)


# --- A population over a mesh --------------------------------------------------------------


@pytest.mark.slow
def test_mnist_sweep_population_on_eight_devices_trains_like_on_one(tmp_path):
    """Four students trained together (two temperatures × two seeds) over 8 simulated
    devices and on one, from the same teacher (trained once, on one device)."""
    data = write_tiny_mnist(tmp_path / "mnist")
    flags = ("--teacher_epochs=1", "--epochs=1", "--batch_size=32", "--temperatures=1,4",
             "--alphas=0.5", "--seeds=2", "--noscratch", f"--data_dir={data}")  # fmt: skip
    module = "experiments.mnist_sweep"
    one = run_command(*flags, f"--workdir={tmp_path / 'one'}", "--devices=1", module=module,
                      devices=8)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    # The devices are not part of a run's identity: the second workdir gets only the
    # teacher, so its students train again, over every device.
    for teacher in (tmp_path / "one").glob("teacher-*"):
        shutil.copytree(teacher, tmp_path / "eight" / teacher.name)
    eight = run_command(*flags, f"--workdir={tmp_path / 'eight'}", module=module, devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    assert "Reusing finished teacher" in eight.stdout
    assert "data-parallel over 8 cpu devices" in eight.stdout
    single = read_json(tmp_path / "one" / "sweep" / "results.json")
    meshed = read_json(tmp_path / "eight" / "sweep" / "results.json")
    assert meshed["environment"]["device_count"] == 8 and meshed["config"]["devices"] == 0
    assert meshed["study"]["students_trained_together"] == 4
    _assert_like(meshed, single)
    assert meshed["study"]["cells"] == single["study"]["cells"]


@pytest.mark.slow
def test_biovid_folds_on_four_devices_train_like_on_one(tmp_path):
    """Students with their own rows (two cross-validation folds trained together):
    each fold's batches ``[folds, batch]`` are split over the devices along axis 1."""
    flags = ("--synthetic_subjects=2", "--synthetic_samples_per_class=2", "--cv=random",
             "--folds=2", "--epochs=2", "--batch_size=4", "--noholdout", "--noplots",
             f"--cache_dir={tmp_path / 'cache'}")  # fmt: skip
    module = "experiments.biovid_kd"
    one = run_command(*flags, f"--workdir={tmp_path / 'one'}", "--devices=1", module=module,
                      devices=4)  # fmt: skip
    four = run_command(*flags, f"--workdir={tmp_path / 'four'}", module=module, devices=4)
    assert one.returncode == 0 and four.returncode == 0, four.stderr[-3000:]
    assert "data-parallel over 4 cpu devices" in four.stdout
    single = read_json(tmp_path / "one" / "results.json")
    meshed = read_json(tmp_path / "four" / "results.json")
    assert meshed["environment"]["device_count"] == 4
    _assert_like(meshed, single)
    assert len(meshed["runs"]["cv_random"]["test_accuracy"]) == 2  # one student per fold
    folds = [document["study"]["cv"]["cv_random"]["per_fold"] for document in (meshed, single)]
    for ours, theirs in zip(*folds, strict=True):
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)
