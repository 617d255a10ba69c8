"""What every experiment command shares after training: logging, the results file
(one schema for every command), tables and plots.

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

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from kdjax.data import DataError
from kdjax.distill.soft_targets import StoreError
from kdjax.store.integrity import DamagedFileError, WorkdirError
from kdjax.store.locking import RunLockedError
from kdjax.training import Execution, NonFiniteLossError

SCHEMA = "kdjax.results/1"
# Errors a user can cause (bad data, a workdir from other settings, divergence):
# reported as one line with a non-zero exit instead of a traceback.
USER_ERRORS = (
    DataError,
    StoreError,
    NonFiniteLossError,
    DamagedFileError,
    WorkdirError,
    RunLockedError,
    ValueError,
    FileNotFoundError,
)


def is_main_process() -> bool:
    """Only process 0 of a multi-process run writes results, plots and logs."""
    import jax

    return jax.process_index() == 0


def log(message: str) -> None:
    if is_main_process():
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# How each feed brings a data-parallel run its batches (for the log).
MESH_FEEDS = {
    "device": "every device holds the training set and gathers its share of each batch",
    "host": "each process gathers its devices' rows of each batch on the host and sends them",
}


def execution(config, batch_size: int | None = None) -> Execution:
    """How a command trains: its feed, checkpoint and population-strategy flags, and a
    data-parallel mesh over ``--devices`` devices (all by default, those of every
    process with --multihost) when there is more than one. ``batch_size``: the batch size, when
    it is not the config's ``batch_size``; one the devices do not divide is refused."""
    import jax

    from kdjax.training.parallel import data_mesh

    devices = jax.devices()
    count = config.devices or len(devices)
    if count > len(devices):
        raise ValueError(f"--devices={count}, but JAX sees {len(devices)} device(s).")
    if count < len(devices) and jax.process_count() > 1:
        raise ValueError(
            f"--devices={count} with --multihost: a multi-process run trains over every "
            f"device of every process ({len(devices)}); leave --devices at 0."
        )
    mesh = None
    if count > 1:
        batch_size = batch_size or getattr(config, "batch_size", None)
        if batch_size is not None and batch_size % count:
            raise ValueError(
                f"--batch_size={batch_size} does not divide over {count} devices; use a "
                f"multiple of {count} or --devices=N with N dividing it."
            )
        mesh = data_mesh(devices[:count])
        feed = "host" if config.feed == "host" else "device"
        log(
            f"Training data-parallel over {count} {devices[0].platform} devices in "
            f"{jax.process_count()} process(es) (mesh axis 'data'): each batch is split "
            f"over them; feed '{feed}' ({MESH_FEEDS[feed]})."
        )
    return Execution(
        feed=config.feed,
        checkpoint_every=config.checkpoint_every,
        mesh=mesh,
        tensorboard=config.tensorboard,
        population_strategy=config.population_strategy,
    )


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
    for package in ("kdjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
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


def lock_differences(installed: dict[str, str]) -> dict | None:
    """``{package: [locked, installed]}`` for every package of ``requirements.lock``
    installed at another version (or missing); ``None`` when the lock file is not
    beside the package (an install from a wheel)."""
    lock = Path(__file__).resolve().parents[1] / "requirements.lock"
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
    from kdjax.runs import parameter_count

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
    """The one ``results.json`` layout (see the module docstring)."""
    import dataclasses

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


def write_results(workdir: str | Path, results: dict, filename: str = "results.json") -> Path:
    """Writes ``results`` (plus the process's peak resident memory) as JSON, atomically
    (process 0 only)."""
    results = {**results, "peak_resident_memory_mib": peak_resident_mib()}
    path = Path(workdir) / filename
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    temporary.replace(path)
    return path


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def print_report(
    header: list[str], rows: list[list[str]], *, notes: list[str], footer: str
) -> None:
    """The closing table of a command, then its notes and where the results went
    (process 0 only)."""
    if not is_main_process():
        return
    print()
    print(format_table(header, rows))
    for note in notes:
        print(note)
    print(footer)


def data_notes(dataset) -> list[str]:
    return ["NOTE: " + dataset.notice] if dataset.notice else []


def mean_std(values) -> dict:
    """Mean, sample standard deviation (0 for one value) and every value."""
    import numpy as np

    array = np.atleast_1d(np.asarray(values, np.float64))
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "each": array.tolist(),
    }


def count_summary(accuracies, test_size: int, *, errors: bool = False) -> dict:
    """Correct answers (or, with ``errors``, mistakes) out of ``test_size`` per run, as
    mean, sample std and the whole counts of every run."""
    import numpy as np

    rates = np.atleast_1d(np.asarray(accuracies, np.float64))
    counts = np.round((1.0 - rates if errors else rates) * test_size).astype(int)
    return {**mean_std(counts), "each": counts.tolist()}


def mean_history(history: list[dict]) -> list[dict]:
    """Per-epoch test accuracy averaged over a population's students (a single run's
    history passes through unchanged)."""
    import numpy as np

    return [
        {"epoch": entry["epoch"], "test_accuracy": float(np.mean(entry["test_accuracy"]))}
        for entry in history
    ]


def format_mean_std(summary: dict, scale: float = 100.0, digits: int = 2) -> str:
    """``"70.41 ± 0.31 (n=3)"``, or just the value for one run."""
    count = len(summary["each"])
    if count == 1:
        return f"{scale * summary['mean']:.{digits}f}"
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f} (n={count})"


def plot_learning_curves(path: str | Path, curves: dict[str, list[dict]], title: str) -> Path:
    """Test accuracy per epoch, one line per run (process 0 only)."""
    if not is_main_process():
        return Path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, history in curves.items():
        axes.plot(
            [entry["epoch"] for entry in history],
            [100 * entry["test_accuracy"] for entry in history],
            marker="o",
            label=label,
        )
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
