"""Command lines made from config dataclasses: one absl flag per field, every value
checked before any work, and the run started (JAX's distributed runtime first, with
``--multihost``).

Each command is a frozen dataclass of settings (its defaults are the protocol it
reproduces), an importable ``run(config) -> dict`` and a one-line ``main``::

    @dataclasses.dataclass(frozen=True)
    class Config(CommonConfig):
        temperature: float = option(3.0, "Softmax temperature T.", check=temperature_range)

    if __name__ == "__main__":
        command(Config, run)

:func:`command` defines one flag per field (help from :func:`option`), builds the
config from the parsed flags and runs it; a config refuses bad values when it is
built (``__post_init__``), so every check happens before any work, in the command
line and in Python alike. Nothing is defined at import time: tests build configs
directly and call ``run`` in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from kdjax.data import DataError
from kdjax.distill.soft_targets import StoreError
from kdjax.losses import MAX_TEMPERATURE
from kdjax.runs.distributed import (
    FLAG_NAMES,
    PROCESS_FLAGS,
    process_layout_problems,
    start_distributed,
)
from kdjax.store.integrity import DamagedFileError, WorkdirError
from kdjax.store.locking import RunLockedError
from kdjax.training import NonFiniteLossError

FEEDS = ("auto", "host", "device")
POPULATION_STRATEGIES = ("auto", "vmap", "map", "unroll")
# The flags defined here belong to the command that imports this module, so that
# ``--help`` lists them (absl files flags under the module that defines them).
flags.disclaim_key_flags()


def option(default: Any, help: str, *, check=None, choices=None) -> Any:  # noqa: A002
    """A config field: its default, its flag's help text, an optional check
    ``(predicate, "must be ...")`` or tuple of them (the first that fails is
    reported) and, for strings, the allowed values."""
    metadata = {"help": help, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for a sequence default")
    return dataclasses.field(default=default, metadata=metadata)


# Checks shared by many fields: (predicate, message).
positive = (lambda value: value > 0, "must be > 0")
at_least_one = (lambda value: value >= 1, "must be >= 1")
non_negative = (lambda value: value >= 0, "must be >= 0")
unit_interval = (lambda value: 0.0 <= value <= 1.0, "must be in [0, 1]")


def finite(check):
    """A check that also refuses NaN and ±inf (``--temperature=inf``)."""
    predicate, message = check
    return (lambda value: value == value and abs(value) != float("inf") and predicate(value),
            f"{message} and finite")  # fmt: skip


def at_most(maximum, reason: str):
    """A check that refuses values above ``maximum``, saying why."""
    return (lambda value: value <= maximum, f"must be <= {maximum:g} ({reason})")


def each(check):
    """The check applied to every element of a tuple (and the tuple non-empty); a
    tuple of checks gives the tuple of each."""
    if isinstance(check[0], tuple):
        return tuple(each(one) for one in check)
    predicate, message = check
    return (
        lambda values: len(values) > 0 and all(predicate(v) for v in values),
        f"must list values that each {message.removeprefix('must ').replace('be ', 'are ', 1)}",
    )


# Every temperature flag: finite, > 0 and within what the losses support.
temperature_range = (
    finite(positive),
    at_most(
        MAX_TEMPERATURE,
        "kdjax.losses.MAX_TEMPERATURE: the float32 losses are tested up to it, and "
        "T²·KL is at its T → ∞ limit long before; see docs/losses.md",
    ),
)


def failed_check(check, value) -> str | None:
    """The message of the first of ``check`` (one check or a tuple of them) that
    ``value`` fails, else None."""
    for predicate, message in check if isinstance(check[0], tuple) else (check,):
        if not predicate(value):
            return message
    return None


def existing_path(value) -> bool:
    return value is None or os.path.exists(value)


@dataclasses.dataclass(frozen=True)
class CommonConfig:
    """Settings every training command shares: where results go and how (not what)
    it trains."""

    workdir: str = option("runs/experiment", "Where checkpoints, stores and results go.")
    feed: str = option(
        "auto",
        "How batches reach the train step: 'device' (the training set on the device, "
        "blocks of steps as one compiled scan), 'host' (gathered on the host and sent "
        "per step) or 'auto' (device; host when the data would take over half of an "
        "accelerator's memory).",
        choices=FEEDS,
    )
    checkpoint_every: int = option(
        1, "Save a checkpoint every N epochs (and always after the last).", check=at_least_one
    )
    devices: int = option(
        0,
        "Train data-parallel over this many devices (0: every device JAX sees; with "
        "--multihost, every device of every process).",
        check=non_negative,
    )
    multihost: bool = option(
        False,
        "Start JAX's distributed runtime (jax.distributed.initialize) and train over the "
        "devices of every process: the process layout is detected on Slurm, Open MPI and "
        "TPU pods, else taken from --coordinator_address, --num_processes and --process_id "
        "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Only process 0 "
        "writes results, plots and logs.",
    )
    coordinator_address: str | None = option(
        None,
        "With --multihost where no cluster is detected (e.g. several processes on one "
        "machine): HOST:PORT where process 0 serves the coordinator, the same in every "
        "process; with --num_processes and --process_id.",
    )
    num_processes: int | None = option(
        None, "With --coordinator_address: how many processes take part.", check=at_least_one
    )
    process_id: int | None = option(
        None,
        "With --coordinator_address: this process's index, 0 to --num_processes - 1 "
        "(process 0 hosts the coordinator).",
        check=non_negative,
    )
    tensorboard: bool = option(
        True, "Write TensorBoard event files in each run directory (tensorboard/)."
    )
    population_strategy: str = option(
        "auto",
        "How the students of a population (seeds, sweeps, folds) share one compiled step: "
        "'vmap' (batched: GPU/TPU), 'map' (a lax.map loop, one after another), 'unroll' "
        "(written out one after another; on the CPU often faster than 'map' for a few "
        "large students, compiles longer) or 'auto' (on the CPU map for convolutional "
        "networks and vmap for others; vmap elsewhere).",
        choices=POPULATION_STRATEGIES,
    )
    compute_dtype: str = option(
        "float32",
        "Activations and matmuls in this dtype; parameters, optimizer state and losses "
        "stay float32.",
        choices=("float32", "bfloat16"),
    )

    def __post_init__(self) -> None:
        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            check, choices = field.metadata.get("check"), field.metadata.get("choices")
            if choices and value is not None and value not in choices:
                problems.append(f"--{field.name} must be one of {', '.join(choices)}")
            elif check and value is not None and (message := failed_check(check, value)):
                problems.append(f"--{field.name} {message}, got {_show(value)}")
        if not str(self.workdir).strip():
            problems.append("--workdir must name a folder (it is empty)")
        else:
            problems += _workdir_problems(str(self.workdir))
        problems += self._process_layout_problems()
        problems += self.problems()
        if problems:
            raise ValueError("; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """Checks across fields, for subclasses; each a sentence naming the flags."""
        return []

    def _process_layout_problems(self) -> list[str]:
        given = [name for name in PROCESS_FLAGS if getattr(self, name) is not None]
        if not given:
            return []
        if not self.multihost:
            return [f"--{given[0]} needs --multihost"]
        if len(given) < len(PROCESS_FLAGS):
            missing = ", ".join(f"--{name}" for name in PROCESS_FLAGS if name not in given)
            return [f"--{given[0]} needs {missing} too (all three, or none)"]
        if self.num_processes < 1 or self.process_id < 0:
            return []  # said by the fields' own checks
        return process_layout_problems(
            self.coordinator_address, self.num_processes, self.process_id, FLAG_NAMES
        )


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _base_type(annotation):
    """``(python type, optional)`` of a field annotation like ``float | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])[0], True
    return annotation, False


def define_flags(config_class: type) -> None:
    """One absl flag per field of ``config_class``."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind, _ = _base_type(hints[field.name])
        help_text = field.metadata.get("help", field.name)
        default, name = field.default, field.name
        if typing.get_origin(kind) is tuple:
            shown = None if default is None else [str(v) for v in default]
            flags.DEFINE_list(name, shown, help_text)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text)
        elif field.metadata.get("choices"):
            flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text)
        else:
            flags.DEFINE_string(name, default, help_text)


def config_from_flags(config_class: type):
    """The config the parsed flags describe (list flags converted to typed tuples)."""
    hints = typing.get_type_hints(config_class)
    values = {}
    for field in dataclasses.fields(config_class):
        value = flags.FLAGS[field.name].value
        kind, _ = _base_type(hints[field.name])
        if typing.get_origin(kind) is tuple and value is not None:
            element = typing.get_args(kind)[0]
            try:
                value = tuple(element(item) for item in value)
            except ValueError:
                raise ValueError(
                    f"--{field.name} must be a comma-separated list of {element.__name__}s, "
                    f"got {','.join(value)}."
                ) from None
        values[field.name] = value
    return config_class(**values)


# Errors a user can cause (bad flags or data, a workdir from other settings, divergence):
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


def _workdir_problems(workdir: str) -> list[str]:
    """A workdir, or a folder above it, that exists as something other than a folder."""
    path = Path(workdir).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if folder.is_dir():
                return []
            return [f"--workdir must name a folder, but {folder} is a file, got {workdir!r}"]
    return []


def command(config_class: type, run: Callable, user_errors: tuple = ()) -> None:
    """Defines the flags of ``config_class``, parses them and runs ``run(config)``.

    User errors (bad flags, bad data, a diverged run, a workdir of other settings)
    print ``error: <one line>`` and exit 1, without a traceback; Ctrl-C prints one line
    and exits 130 at once.
    """
    define_flags(config_class)
    errors = (*USER_ERRORS, *user_errors)

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}; flags look like --name=value.")
        # orbax and absl log every checkpoint at INFO; kdjax prints its own progress.
        logging.set_verbosity(logging.WARNING)
        try:
            config = config_from_flags(config_class)
            if getattr(config, "multihost", False):
                start_distributed(config)
            run(config)
        except errors as error:
            sys.exit(f"error: {error}")
        except KeyboardInterrupt:
            # XLA may still be compiling on a thread of its own, and tearing the
            # interpreter down under it crashes (a segmentation fault; docs/reliability.md).
            # Checkpoints, stores and results are written atomically and a lock held by a
            # dead process is taken over, so leaving at once loses nothing a rerun needs.
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)

    app.run(functools.partial(main))
