"""A command's results file: one schema for every command, what it was measured with, and
its writing (by process 0 of a multi-process run, atomically).

``results.json`` (written by :func:`write_results`)::

    {
      "schema": "kdjax.results/1",
      "command": "mnist_kd",               # the python -m experiments.<command>
      "command_line": "python -m experiments.mnist_kd --seeds=5",  # null when run() is
                                           # called from Python
      "date": "2026-12-06",                # the day the results were written
      "config": {...},                     # the whole config, every field
      "data": {...},                       # Dataset.summary(): source, sizes, fingerprints
      "environment": {...},                # package versions, backend, device kind and count
      "runs": {                            # every training run, by name
        "<name>": {"spec": {...}, "parameters": N, "seeds": [...],
                   "test_accuracy": [...one per student...], "epochs": E,
                   "history": [{"epoch": 1, "train_loss": [...], "test_accuracy": [...],
                                "seconds": s, ...}], ...}
      },
      "study": {...},                      # the command's own tables (cells, chains, counts)
      "wall_seconds": s, "peak_resident_memory_mib": m
    }
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import uuid
from pathlib import Path

from kdjax.runs import parameter_count
from kdjax.runs.spec import config_hash
from kdjax.store.integrity import WorkdirError

SCHEMA = "kdjax.results/1"
# The packages whose versions every results file names first.
KEY_PACKAGES = ("kdjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def is_main_process() -> bool:
    """Only process 0 of a multi-process run writes results, plots and logs."""
    import jax

    return jax.process_index() == 0


def log(message: str) -> None:
    """``[HH:MM:SS] message`` on standard output (process 0 only)."""
    if is_main_process():
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun`` in agreement: ``plural(1, "epoch")`` is ``"1 epoch"``,
    ``plural(3, "epoch")`` is ``"3 epochs"`` (``plural_form`` for irregular nouns)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def peak_resident_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024, 1)


def usable_cpu_cores() -> int | None:
    """The CPU cores this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def environment() -> dict:
    """Package versions, backend and devices: what a result was measured with."""
    from importlib import metadata

    import jax

    versions = {}
    for package in KEY_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    devices = jax.devices()
    installed = {dist.metadata["Name"].lower(): dist.version for dist in metadata.distributions()}
    return {
        "python": platform.python_version(),
        "packages": versions,
        "installed": dict(sorted(installed.items())),
        "differs_from_lock": lock_differences(installed),
        "backend": jax.default_backend(),
        "architecture": platform.machine(),
        "cpu_cores": usable_cpu_cores(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def lock_file() -> Path:
    """Where ``requirements.lock`` sits in a source checkout: beside the package."""
    return Path(__file__).resolve().parents[2] / "requirements.lock"


def lock_differences(installed: dict[str, str]) -> dict | None:
    """``{package: [locked, installed]}`` for every package of ``requirements.lock``
    installed at another version (or missing); ``None`` when the lock file is not
    beside the package (an install from a wheel)."""
    lock = lock_file()
    if not lock.is_file():
        return None
    differences = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, version = (part.strip() for part in line.split("==", 1))
        key = name.lower().replace("_", "-")
        found = installed.get(key) or installed.get(name.lower())
        if found != version:
            differences[name] = [version, found]
    return differences


def run_entry(spec, result, parameters: int | None = None) -> dict:
    """One run's entry in ``results.json``: its spec, summary and history."""
    entry = {"spec": spec.identity(), **result.summary(), "history": result.history}
    if parameters is not None:
        entry["parameters"] = parameters
    return entry


def run_entries(specs: dict, results: dict, image_shape: tuple[int, ...]) -> dict:
    """``{name: run_entry}`` for runs given by name as specs and their results, each
    with its parameter count for images of ``image_shape``."""
    return {
        name: run_entry(specs[name], result, parameter_count(specs[name], image_shape))
        for name, result in results.items()
    }


def command_line(command: str) -> str | None:
    """``python -m experiments.<command> <flags>`` as this process was started, or None
    when the process runs something else (a test calling ``run(config)``)."""
    if Path(sys.argv[0]).stem != command:
        return None
    return " ".join([f"python -m experiments.{command}", *map(shlex.quote, sys.argv[1:])])


def results_document(
    command: str, config, dataset, runs: dict, study: dict, started: float
) -> dict:
    """The one ``results.json`` layout (see the module docstring); ``started`` is the
    ``time.perf_counter()`` of the command's start."""
    return {
        "schema": SCHEMA,
        "command": command,
        "command_line": command_line(command),
        "date": time.strftime("%Y-%m-%d"),
        "config": dataclasses.asdict(config),
        "data": None if dataset is None else dataset.summary(),
        "environment": environment(),
        "runs": runs,
        "study": study,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


# Settings that change where and how a study is kept, not what it reports.
PLACE_FIELDS = ("workdir", "cache_dir", "tensorboard", "checkpoint_every")
STUDIES = "studies"


def study_name(results: dict) -> str:
    """``<command>-<8 hex digits of its settings>``: what names a study's results file."""
    settings = {k: v for k, v in (results.get("config") or {}).items() if k not in PLACE_FIELDS}
    return f"{results.get('command') or 'study'}-{config_hash(settings)}"


def write_json_atomically(path: Path, document) -> None:
    """Writes ``document`` to ``path`` through a temporary file of this writer's own, so
    that concurrent writers never share one and a reader sees the old file or the new."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise WorkdirError(
            f"cannot write {path}: {error.strerror or error}; free some space or pass "
            "another --workdir (the trained runs are kept: rerunning writes the results)"
        ) from None


def write_results(workdir: str | Path, results: dict, filename: str = "results.json") -> Path:
    """Writes ``results`` (plus the process's peak resident memory) as JSON, atomically
    (process 0 only), to ``<workdir>/<filename>`` and to the study's own file
    ``<workdir>/studies/<study_name>.json``, listed in ``studies/index.json``. Studies
    of other commands or settings in one workdir therefore coexist: when ``filename``
    held another study's results, they stay in its study file, and a line says so."""
    results = {**results, "peak_resident_memory_mib": peak_resident_mib()}
    path = Path(workdir) / filename
    if not is_main_process():
        return path
    studies = path.parent / STUDIES
    try:
        studies.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create {studies}: {error.strerror or error}") from None
    name = study_name(results)
    _keep_other_study(path, name, studies)
    write_json_atomically(studies / f"{name}.json", results)
    write_json_atomically(path, results)
    write_json_atomically(studies / "index.json", study_index(studies))
    return path


def _keep_other_study(path: Path, name: str, studies: Path) -> None:
    """Keeps the results ``path`` holds in their study file when they are another
    study's (files written before study files existed have none yet)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    other = study_name(previous)
    if other == name:
        return
    kept = studies / f"{other}.json"
    if not kept.exists():
        write_json_atomically(kept, previous)
    log(
        f"{path.name} now holds the results of {name}; those of {other} stay in {kept} "
        f"({studies / 'index.json'} lists every study of this workdir)."
    )


def study_index(studies: Path) -> dict:
    """``{study: {command, command_line, date, file}}`` over the study files present."""
    index = {}
    for file in sorted(studies.glob("*.json")):
        if file.name == "index.json":
            continue
        try:
            document = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        index[file.stem] = {
            "command": document.get("command"),
            "command_line": document.get("command_line"),
            "date": document.get("date"),
            "file": f"{STUDIES}/{file.name}",
        }
    return {"schema": "kdjax.studies/1", "studies": index}
