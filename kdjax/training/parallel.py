"""Data parallelism with ``jax.jit`` and shardings: one code path from one device to
many processes.

The training state is replicated over a one-axis :class:`jax.sharding.Mesh` named
``"data"``; each batch is split along its batch axis over that axis. ``jit``
partitions the step (GSPMD): every device computes the loss of its rows, the
gradient mean becomes an all-reduce, and every device applies the same update.
Nothing in the step changes — the feeds (:mod:`kdjax.training.feeds`) only place
their inputs. A population of students (a leading student axis on the state) is
replicated the same way; when each student reads its own rows, the batches are
``[students, batch, ...]`` and split along axis 1.

Across processes (``jax.distributed.initialize``), every process computes the same
global example order (it depends only on the seed and the epoch). The host feed reads
and transfers **only its own rows** of each batch (:func:`local_rows`) and assembles
the global batch with ``jax.make_array_from_process_local_data``; the device feed
holds the training set on every device and splits each block's example indices
over the mesh (:func:`split_rows`), so each device gathers only its rows.

Launching:

* one host, all its devices: ``fit(..., execution=Execution(mesh=data_mesh()))``;
* several CPU "devices" on one host (for testing):
  ``XLA_FLAGS=--xla_force_host_platform_device_count=8``;
* several processes/hosts: run the same program in each, and call
  ``jax.distributed.initialize(coordinator, num_processes, process_id)`` before any
  JAX computation (on CPU set ``jax_cpu_collectives_implementation`` to
  ``"gloo"`` first); on Slurm, Open MPI and TPU pods the arguments are detected.
  The commands do this with ``--multihost`` (README.md).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: every global device)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Rows split over the mesh along ``axis``: 0 for a batch, 1 for the
    ``[students, batch, ...]`` batches of students that each read their own rows."""
    return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` (the same values in every process) on every device."""
    sharding = replicated(mesh)

    def place(leaf):
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)


def check_divides(batch_size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless ``batch_size`` divides evenly over the mesh's devices."""
    if batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} does not divide over {mesh.size} devices; "
            f"use a multiple of {mesh.size}."
        )


def local_rows(batch_size: int, mesh: Mesh) -> np.ndarray:
    """Positions, within a global batch, of the rows this process's devices hold.

    Raises if the batch does not divide evenly over the mesh's devices.
    """
    check_divides(batch_size, mesh)
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = sorted({row for (slice_,) in indices.values() for row in range(batch_size)[slice_]})
    return np.asarray(rows, np.int64)


def global_batch(local: dict[str, np.ndarray], batch_size: int, mesh: Mesh, axis: int = 0) -> dict:
    """The global batch from this process's rows (see :func:`local_rows`), which lie
    along ``axis`` (see :func:`batch_sharding`)."""
    sharding = batch_sharding(mesh, axis)

    def assemble(value: np.ndarray) -> jax.Array:
        shape = (*value.shape[:axis], batch_size, *value.shape[axis + 1 :])
        return jax.make_array_from_process_local_data(sharding, value, shape)

    return {key: assemble(value) for key, value in local.items()}


def split_rows(indices: np.ndarray, mesh: Mesh) -> jax.Array:
    """Example indices ``[..., batch]`` (the same in every process) split over the mesh
    along their last axis: each device gathers its own rows of every batch."""
    sharding = batch_sharding(mesh, indices.ndim - 1)
    return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


def to_host(value: Any) -> np.ndarray:
    """A (replicated) array as numpy, in any process."""
    if getattr(value, "is_fully_addressable", True):
        return np.asarray(value)
    return np.asarray(value.addressable_data(0))
