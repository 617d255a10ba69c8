"""The epoch loop every run shares: build → resume → per epoch (feed → evaluate →
save → log) → result.

Deterministic per-epoch shuffling (a resumed run sees exactly the batches of an
uninterrupted one), orbax checkpoints, a non-finite loss stops the run naming the
step, one log line per epoch and a progress bar on a terminal.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from kdjax.data import Split
from kdjax.distill.objectives import Objective
from kdjax.store.checkpoints import RunCheckpoints, write_config
from kdjax.training import parallel
from kdjax.training.evaluation import split_accuracy
from kdjax.training.feeds import epoch_orders, make_feed
from kdjax.training.members import Members
from kdjax.training.monitor import (
    EpochRecord,
    describe,
    rounded,
)
from kdjax.training.state import trainable_mask
from kdjax.training.step import (
    OnlineTeacher,
    head_inputs_of,
    make_train_step,
    with_teacher_outputs,
)
from kdjax.training.tensorboard import RunWriter
from kdjax.types import Augment, Constraint, Hyperparams, Preprocess, Schedule


@dataclasses.dataclass(frozen=True)
class Training:
    """What is trained and how one step updates it.

    ``frozen`` lists parameter-path patterns that never change (use an optimizer
    from ``make_optimizer(frozen=...)`` with the same patterns, so they get no
    optimizer state); ``initial_variables`` start the model from given (e.g.
    pretrained) variables; ``teacher`` computes the teacher outputs inside the step.
    """

    model: nn.Module
    objective: Objective
    optimizer: optax.GradientTransformation
    preprocess: Preprocess
    augment: Augment | None = None
    constraint: Constraint | None = None
    schedule: Schedule | None = None
    teacher: OnlineTeacher | None = None
    frozen: tuple[str, ...] = ()
    initial_variables: Any = None


@dataclasses.dataclass(frozen=True)
class Execution:
    """How (not what) a run trains: none of it changes the result beyond
    floating-point reassociation, so a run may resume with other values.

    ``feed``: see :func:`kdjax.training.feeds.resolve_feed`; ``mesh``: data-parallel
    training (:func:`kdjax.training.parallel.data_mesh`); ``population_strategy``: see
    :func:`kdjax.training.step.population_step`; ``tensorboard``: write event files
    in ``<run_dir>/tensorboard`` (:mod:`kdjax.training.tensorboard`).
    """

    feed: str = "auto"
    mesh: jax.sharding.Mesh | None = None
    steps_per_call: int | None = None
    population_strategy: str = "auto"
    eval_batch_size: int = 1000
    checkpoint_every: int = 1
    tensorboard: bool = False


@dataclasses.dataclass
class FitResult:
    """What one training run produced. Per-epoch metrics and ``test_accuracy`` hold
    one value per student (a list of one for a single run); ``variables`` has a
    leading student axis for a population.

    ``compile_seconds``: with the host feed, the first step's wall time (compile plus
    one step); with the device feed, the ahead-of-time compiles of the block programs.
    Either way it is inside the first epoch's ``seconds``.
    """

    run_dir: Path
    variables: Any
    members: Members
    history: list[dict]
    test_accuracy: list[float]
    epochs_trained_now: int
    resumed_from_epoch: int
    train_seconds: float
    compile_seconds: float | None

    @property
    def params(self) -> Any:
        return self.variables["params"]

    def member_variables(self, index: int = 0) -> Any:
        return self.members.unstack(self.variables, index)

    def summary(self) -> dict:
        rates = [entry["examples_per_second"] for entry in self.history]
        seconds = [entry["seconds"] for entry in self.history]
        return {
            "run_dir": str(self.run_dir),
            "seeds": list(self.members.seeds),
            "test_accuracy": self.test_accuracy,
            "epochs": len(self.history),
            "resumed_from_epoch": self.resumed_from_epoch,
            "train_seconds_this_invocation": round(self.train_seconds, 3),
            "compile_seconds": None
            if self.compile_seconds is None
            else round(self.compile_seconds, 3),
            "mean_epoch_seconds": round(float(np.mean(seconds)), 3) if seconds else None,
            "examples_per_second": round(float(np.median(rates)), 1) if rates else None,
        }


def fit(
    training: Training,
    *,
    name: str,
    run_dir: str | Path,
    run_config: Mapping[str, Any],
    hyperparams: Hyperparams,
    train_split: Split,
    test_split: Split,
    epochs: int,
    batch_size: int,
    seed: int | Sequence[int],
    data_seed: int | None = None,
    train_extras: Mapping[str, np.ndarray] | None = None,
    member_rows: Sequence[np.ndarray] | None = None,
    member_test_rows: Sequence[np.ndarray] | None = None,
    execution: Execution | None = None,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains for ``epochs`` epochs, resuming from ``run_dir`` if it has checkpoints.

    ``seed`` initialises parameters and dropout; a list of seeds trains a population
    (:class:`kdjax.training.members.Members`). ``data_seed`` fixes the example order
    (default: the first seed). ``train_extras`` are arrays aligned with
    ``train_split`` (row ``i`` belongs to example ``train_split.ids[i]``), e.g. stored
    teacher logits, gathered with the same indices as the images. ``run_config`` is
    written to ``run_dir/config.json``; a directory that trained something else is
    refused. Re-running with more epochs continues the run.

    ``member_rows`` gives every student of a population its own training rows (row
    positions in ``train_split``; e.g. the training folds of a cross-validation, all
    trained in one program), and ``member_test_rows`` its own rows of
    ``test_split`` to be scored on (its held-out fold). Each student walks its rows
    in its own order; an epoch has as many steps as the smallest student's rows fill.
    """
    execution = execution or Execution()
    _check_arguments(train_split, test_split, train_extras or {}, batch_size, execution)
    members = Members.of(seed, execution.population_strategy, own_batches=member_rows is not None)
    member_masks = _member_masks(members, member_rows, member_test_rows, train_split, test_split)
    data_seed = members.seeds[0] if data_seed is None else data_seed
    run_dir = Path(run_dir)
    write_config(run_dir, dict(run_config))

    arrays = {
        "images": train_split.images,
        "labels": train_split.labels,
        "ids": train_split.ids,
        "rows": np.arange(len(train_split), dtype=np.int32),  # positions, for heads
        **(train_extras or {}),
    }
    # Build: the state, the lifted step and the evaluation counter.
    sample = training.preprocess(train_split.images[:1])
    state = members.init(
        training.model,
        training.optimizer,
        sample,
        training.initial_variables,
        init_inputs=_head_sample(training, arrays),
    )
    # Students sharing the batch (no augmentation, no rows of their own) share the
    # online teacher's pass over it: one per step, not one per student.
    per_member_teacher = training.teacher is not None and training.teacher.per_member
    if per_member_teacher:
        _check_member_teachers(training.teacher, members)
    shared_teacher = (
        training.teacher is not None
        and training.augment is None
        and not members.own_batches
        and not per_member_teacher
    )
    step = members.lift(
        _make_step(training, state, with_teacher=not shared_teacher),
        member_context=per_member_teacher,
    )
    if shared_teacher:
        step = with_teacher_outputs(step, training.teacher, training.objective.teacher_outputs)
    hyperparams = members.hyperparams(hyperparams)
    context = training.teacher.context() if training.teacher else {}
    counter = members.correct_counter(training.model, training.preprocess)

    def test_accuracy(state) -> list[float]:
        variables = {"params": state.params, **state.model_state}
        if execution.mesh is not None:  # every process scores the full test set
            variables = jax.tree.map(parallel.to_host, variables)
        accuracy = split_accuracy(
            counter, variables, test_split, execution.eval_batch_size, member_masks=member_masks
        )
        return rounded(members.per_member(accuracy))

    checkpoints = RunCheckpoints(run_dir, log=log)
    state, start_epoch, history = _resume(checkpoints, state, epochs, name, log)
    order_of = epoch_orders(data_seed, len(train_split), member_rows)
    steps_per_epoch = order_of(0).shape[-1] // batch_size
    train_seconds, feed = 0.0, None
    writer = RunWriter(
        run_dir, run_config, enabled=execution.tensorboard and jax.process_index() == 0
    )
    try:
        for epoch in range(start_epoch, epochs):
            if feed is None:  # only a run with epochs left puts data on the device
                feed = make_feed(
                    execution.feed,
                    step,
                    arrays,
                    batch_size=batch_size,
                    mesh=execution.mesh,
                    steps_per_call=execution.steps_per_call,
                    log=log,
                    name=name,
                )
                state, hyperparams, context = feed.place((state, hyperparams, context))
            epoch_start = time.perf_counter()
            blocks = EpochRecord(name, epoch, epochs, steps_per_epoch, checkpoints, writer, log=log)
            state = feed.run_epoch(state, order_of(epoch), hyperparams, context, blocks.record)
            seconds = time.perf_counter() - epoch_start
            train_seconds += seconds
            blocks.close()
            entry = {
                "epoch": epoch + 1,
                **{
                    f"train_{key}": rounded(members.per_member(value))
                    for key, value in blocks.means().items()
                },
                "test_accuracy": test_accuracy(state),
                "seconds": round(seconds, 3),
                "examples_per_second": round(steps_per_epoch * batch_size / seconds, 1),
            }
            history.append(entry)
            writer.epoch(epoch + 1, entry, _learning_rate(training, hyperparams, state))
            if (epoch + 1) % execution.checkpoint_every == 0 or epoch + 1 == epochs:
                checkpoints.save(epoch + 1, state, {"history": history})
            log(
                f"{name} epoch {epoch + 1}/{epochs}: loss {describe(entry['train_loss'])} "
                f"train acc {describe(entry['train_accuracy'])} "
                f"test acc {describe(entry['test_accuracy'])} | "
                f"{entry['examples_per_second']:,.0f} examples/s, {seconds:.1f} s"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        checkpoints.close()
        writer.close()

    variables = {"params": state.params, **state.model_state}
    if execution.mesh is not None:
        variables = jax.tree.map(parallel.to_host, variables)
    return FitResult(
        run_dir=run_dir,
        variables=variables,
        members=members,
        history=history,
        test_accuracy=history[-1]["test_accuracy"] if history else test_accuracy(state),
        epochs_trained_now=epochs - start_epoch,
        resumed_from_epoch=start_epoch,
        train_seconds=train_seconds,
        compile_seconds=None if feed is None else feed.compile_seconds,
    )


def _member_masks(members, member_rows, member_test_rows, train_split, test_split):
    """``[students, test examples]`` bools from each student's held-out rows."""
    if member_rows is not None and len(member_rows) != members.count:
        raise ValueError(
            f"member_rows has {len(member_rows)} entries for {members.count} students."
        )
    if member_test_rows is None:
        return None
    if len(member_test_rows) != members.count or not members.stacked:
        raise ValueError("member_test_rows needs one entry per student of a population.")
    masks = np.zeros((members.count, len(test_split)), bool)
    for index, rows in enumerate(member_test_rows):
        masks[index, np.asarray(rows)] = True
    if member_rows is not None and train_split is test_split:
        for index, rows in enumerate(member_rows):
            if masks[index, np.asarray(rows)].any():
                raise ValueError(f"student {index}'s training and test rows overlap.")
    return masks


def _resume(checkpoints: RunCheckpoints, state, epochs: int, name: str, log):
    """``(state, first epoch to train, history so far)`` from the newest checkpoint
    that verifies (or the fresh state)."""
    start_epoch = checkpoints.latest_epoch() or 0
    if start_epoch > epochs:
        checkpoints.close()
        raise ValueError(
            f"{checkpoints.directory.parent} already holds {start_epoch} epochs, more than "
            f"the {epochs} requested; ask for at least that many or use another --workdir."
        )
    if not start_epoch:
        return state, 0, []
    state, meta = checkpoints.restore(start_epoch, state)
    verb = "Reusing finished" if start_epoch == epochs else "Resuming"
    log(f"{verb} {name} from {checkpoints.directory.parent} (epoch {start_epoch}/{epochs}).")
    return state, start_epoch, list(meta["history"])


def _head_sample(training: Training, arrays: Mapping[str, np.ndarray]) -> dict:
    """One example's head inputs, for initialising a method's head."""
    if training.objective.head is None:
        return {}
    first = {key: array[:1] for key, array in arrays.items()}
    if training.teacher is not None:
        names = training.objective.teacher_outputs
        variables = training.teacher.variables
        if training.teacher.per_member:  # the heads' shapes: any one teacher will do
            variables = jax.tree.map(lambda leaf: leaf[0], variables)
        first.update(training.teacher.outputs(variables, first["images"], names))
    return head_inputs_of(training.objective, first)


def _check_member_teachers(teacher, members: Members) -> None:
    """A teacher per student needs a population with that many students."""
    leading = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(teacher.variables)}
    if not members.stacked or leading != {members.count}:
        raise ValueError(
            f"an online teacher with per_member=True needs a population (a list of seeds) and "
            f"teacher variables with a leading axis of one teacher per student; got "
            f"{members.count if members.stacked else 'a single'} student(s) and leading axes "
            f"{sorted(leading, key=str)}."
        )


def _make_step(training: Training, state, *, with_teacher: bool):
    trainable = None
    if training.frozen:
        params = state.params
        trainable = trainable_mask(params, training.frozen)
    return make_train_step(
        training.model,
        training.objective,
        training.optimizer,
        training.preprocess,
        augment=training.augment,
        constraint=training.constraint,
        schedule=training.schedule,
        teacher=training.teacher if with_teacher else None,
        trainable=trainable,
    )


def _check_arguments(train_split, test_split, train_extras, batch_size, execution) -> None:
    if train_split.images.shape[1:] != test_split.images.shape[1:]:
        raise ValueError(
            f"test inputs of shape {test_split.images.shape[1:]} differ from the training "
            f"inputs' {train_split.images.shape[1:]}."
        )
    if batch_size > len(train_split):
        raise ValueError(
            f"batch size {batch_size} is larger than the training set ({len(train_split)})."
        )
    for key, array in train_extras.items():
        if len(array) != len(train_split):
            raise ValueError(
                f"train_extras[{key!r}] has {len(array)} rows for "
                f"{len(train_split)} training examples."
            )
    if execution.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {execution.checkpoint_every}.")


def _learning_rate(training: Training, hyperparams, state) -> np.ndarray:
    """The learning rate the last step used (per student), schedule included."""
    rate = np.asarray(parallel.to_host(hyperparams["learning_rate"]), np.float64)
    if training.schedule is not None:
        step = np.asarray(parallel.to_host(state.step)) - 1
        rate = rate * np.asarray(jax.vmap(training.schedule)(np.atleast_1d(step)))
    return rate
