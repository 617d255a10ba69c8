"""How a command trains its runs: the :class:`~kdjax.training.Execution` its flags
describe (feed, checkpoints, TensorBoard, population strategy, a data-parallel mesh)
and :func:`train`, :func:`kdjax.runs.train_run` in the command's workdir with them.

``config`` is a :class:`kdjax.runs.cli.CommonConfig`; a config with a ``batch_size``
field has it checked against the device count, one with an ``eval_batch_size`` field
sets the batch size of test-set inference.
"""

from __future__ import annotations

import numpy as np

from kdjax.runs import train_run
from kdjax.runs.results import log
from kdjax.training import Execution, FitResult

# How each feed brings a data-parallel run its batches (for the log).
MESH_FEEDS = {
    "device": "every device holds the training set and gathers its share of each batch",
    "host": "each process gathers its devices' rows of each batch on the host and sends them",
}


def execution(config, batch_size: int | None = None) -> Execution:
    """How a command trains: its feed, checkpoint and population-strategy flags, its
    inference batch size, and a data-parallel mesh over ``--devices`` devices (all by
    default, those of every process with --multihost) when there is more than one.
    ``batch_size``: the batch size, when it is not the config's ``batch_size``; one the
    devices do not divide is refused."""
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
    inference = {}
    if getattr(config, "eval_batch_size", None) is not None:
        inference["eval_batch_size"] = config.eval_batch_size
    return Execution(
        feed=config.feed,
        checkpoint_every=config.checkpoint_every,
        mesh=mesh,
        tensorboard=config.tensorboard,
        population_strategy=config.population_strategy,
        **inference,
    )


def train(
    config,
    spec,
    dataset,
    *,
    teacher=None,
    initial_variables=None,
    prepared: Execution | None = None,
) -> FitResult:
    """Trains (or resumes, or reuses) ``spec`` in the config's workdir with the
    config's :func:`execution`, logging as the command does. ``prepared``: an
    execution built once for several runs (a data-parallel mesh is then announced
    once). A teacher that ends at chance is said (its students learn nothing from it)."""
    result = train_run(
        spec,
        dataset,
        config.workdir,
        teacher=teacher,
        initial_variables=initial_variables,
        execution=prepared or execution(config),
        log=log,
    )
    if "teacher" in spec.role:
        warn_at_chance(spec.role, result.test_accuracy, dataset.num_classes, log)
    return result


def warn_at_chance(name: str, test_accuracy, num_classes: int, log=log) -> bool:
    """Says so, and returns True, when every student of run ``name`` scores below 1.5×
    chance (``1 / num_classes``) on the test set: a run that learned nothing, e.g. from a
    learning rate far too large, which the loss check alone does not catch."""
    accuracies = np.atleast_1d(np.asarray(test_accuracy, dtype=float))
    chance = 1.0 / num_classes
    if num_classes < 2 or accuracies.max() >= 1.5 * chance:
        return False
    log(
        f"WARNING: {name} scores {100 * accuracies.max():.1f} % on the test set, about chance "
        f"({100 * chance:.0f} %): it learned nothing, and students distilled from it learn "
        "nothing from it. Check the learning rate (--learning_rate) and the data."
    )
    return True
