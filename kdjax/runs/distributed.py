"""The process layout of a multi-process command (``--multihost``) and JAX's distributed
start-up.

The layout is the flags ``--coordinator_address``, ``--num_processes`` and
``--process_id``, else the variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, else none (JAX then detects Slurm,
Open MPI or a TPU pod). Every problem with it is found before any work and named
after the flag or variable that holds it.
"""

from __future__ import annotations

import os

# The explicit process layout of --multihost, as flags and as environment variables.
PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")
FLAG_NAMES = tuple(f"--{name}" for name in PROCESS_FLAGS)
PROCESS_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def process_layout_problems(address: str, count: int, index: int, names=FLAG_NAMES) -> list[str]:
    """What is wrong with a coordinator address, process count and process index (each
    problem naming the flag or variable ``names`` gives it)."""
    problems = []
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        problems.append(f"{names[0]} must be HOST:PORT (e.g. localhost:12355), got {address!r}")
    if count < 1:
        problems.append(f"{names[1]} must be >= 1, got {count}")
    elif not 0 <= index < count:
        problems.append(f"{names[2]} must be in 0..{count - 1} ({names[1]}={count}), got {index}")
    return problems


def process_layout(config, environ=os.environ) -> dict:
    """The arguments of ``jax.distributed.initialize`` for ``config``: its
    --coordinator_address, --num_processes and --process_id, else the variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, else none (JAX then
    detects Slurm, Open MPI or a TPU pod, and reads JAX_COORDINATOR_ADDRESS alone).

    Raises ``ValueError`` naming the variable when only some are set or one is malformed.
    """
    if getattr(config, "coordinator_address", None) is not None:
        return {name: getattr(config, name) for name in PROCESS_FLAGS}
    address, count, index = (environ.get(name, "").strip() for name in PROCESS_VARIABLES)
    if not count and not index:
        return {}  # JAX reads JAX_COORDINATOR_ADDRESS itself, beside a detected cluster
    given = [name for name in PROCESS_VARIABLES if environ.get(name, "").strip()]
    if len(given) < len(PROCESS_VARIABLES):
        raise ValueError(
            f"--multihost: {', '.join(given)} is set but not "
            f"{', '.join(name for name in PROCESS_VARIABLES if name not in given)}; set all "
            "three, or use --coordinator_address, --num_processes and --process_id."
        )
    numbers = []
    for name, value in zip(PROCESS_VARIABLES[1:], (count, index), strict=True):
        if not value.isdigit():
            raise ValueError(f"--multihost: {name} must be a whole number, got {value!r}.")
        numbers.append(int(value))
    problems = process_layout_problems(address, *numbers, names=PROCESS_VARIABLES)
    if problems:
        raise ValueError("--multihost: " + "; ".join(problems) + ".")
    return dict(zip(PROCESS_FLAGS, (address, *numbers), strict=True))


def start_distributed(config=None) -> None:
    """``jax.distributed.initialize`` with :func:`process_layout`; on the CPU,
    collectives between processes go over gloo (unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise)."""
    import jax

    arguments = process_layout(config)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**arguments)
    except ValueError as error:
        if arguments:
            raise
        raise ValueError(
            f"--multihost found no process layout ({error}): no Slurm, Open MPI or TPU pod "
            "was detected; give --coordinator_address=HOST:PORT, --num_processes=N and "
            "--process_id=I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."
        ) from None
