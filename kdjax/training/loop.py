"""The epoch loop every run shares: build → resume → per epoch (feed → evaluate →
save → log) → result.

Deterministic per-epoch shuffling (a resumed run sees exactly the batches of an
uninterrupted one), orbax checkpoints, a non-finite loss stops the run naming the
step, one log line per epoch and a progress bar on a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from kdjax.store.checkpoints import RunCheckpoints
from kdjax.store.run_config import write_config
from kdjax.training.monitor import EpochRecord, describe, rounded
from kdjax.training.program import Program, build_program
from kdjax.training.records import Execution, FitResult, Plan, Run, Training, TrainingData
from kdjax.training.tensorboard import RunWriter


def fit(
    training: Training,
    data: TrainingData,
    plan: Plan,
    run: Run,
    execution: Execution | None = None,
    *,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains ``training`` on ``data`` for ``plan.epochs`` epochs in ``run.directory``,
    resuming from its newest checkpoint if it has one.

    ``run.config`` is written to ``config.json``; a directory that trained something
    else is refused. Re-running with more epochs continues the run; with as many, it
    reuses the finished one. A plan with folds trains every student on its own rows
    and scores it on its own test rows. ``on_epoch_end(epoch)`` runs after each
    epoch's checkpoint.
    """
    program = build_program(training, data, plan, execution or Execution())
    write_config(run.directory, dict(run.config))
    checkpoints = RunCheckpoints(run.directory, log=log)
    state, start_epoch, history, scored_on = _resume(
        checkpoints, program.state, plan.epochs, run.name, log
    )
    test_data = data.test.fingerprint()
    stale = start_epoch == plan.epochs and scored_on != test_data  # reused, other test set
    tensorboard = program.execution.tensorboard and jax.process_index() == 0
    writer = RunWriter(run.directory, run.config, enabled=tensorboard)
    train_seconds, feed = 0.0, None
    try:
        for epoch in range(start_epoch, plan.epochs):
            if feed is None:
                feed, (state, hyperparams, context) = program.feed(state, run.name, log)
            started = time.perf_counter()
            blocks = EpochRecord(
                run.name, epoch, plan.epochs, program.steps_per_epoch, checkpoints, writer, log=log
            )
            state = feed.run_epoch(state, program.order(epoch), hyperparams, context, blocks.record)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            blocks.close()
            entry = _epoch_entry(program, epoch, blocks, program.score(state), seconds)
            history.append(entry)
            writer.epoch(epoch + 1, entry, program.learning_rate(hyperparams, state))
            if (epoch + 1) % program.execution.checkpoint_every == 0 or epoch + 1 == plan.epochs:
                checkpoints.save(epoch + 1, state, {"history": history, "test_data": test_data})
            log(_epoch_line(run.name, plan.epochs, entry, seconds))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        checkpoints.close()
        writer.close()
    return FitResult(
        run_dir=run.directory,
        variables=program.variables(state),
        members=program.members,
        history=history,
        test_accuracy=_test_accuracy(program, state, history, stale, run.name, log),
        epochs_trained_now=plan.epochs - start_epoch,
        resumed_from_epoch=start_epoch,
        train_seconds=train_seconds,
        compile_seconds=None if feed is None else feed.compile_seconds,
        config=dict(run.config),
    )


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
        return state, 0, [], None
    state, meta = checkpoints.restore(start_epoch, state)
    verb = "Reusing finished" if start_epoch == epochs else "Resuming"
    log(f"{verb} {name} from {checkpoints.directory.parent} (epoch {start_epoch}/{epochs}).")
    return state, start_epoch, list(meta["history"]), meta.get("test_data")


def _test_accuracy(program: Program, state, history: list, stale: bool, name: str, log):
    """The run's final test accuracy: its last epoch's, or, when that was scored on other
    test data than the given (a finished run reused on a changed test set, or a
    checkpoint that does not say which), the final state scored on the given test set.
    A run's identity covers what trains it, not what it is scored on."""
    if history and not stale:
        return history[-1]["test_accuracy"]
    accuracy = program.score(state)
    if history:
        log(
            f"{name}'s checkpoint does not record these test data as the ones it was scored on: "
            f"scored again on them, {describe(accuracy)} (its history keeps the earlier scores)."
        )
    return accuracy


def _epoch_entry(
    program: Program, epoch: int, blocks: EpochRecord, test_accuracy: list, seconds: float
) -> dict:
    """One epoch's line of the history: per-student means of the step metrics, the
    test accuracy, and its speed."""
    examples = program.steps_per_epoch * program.plan.batch_size
    return {
        "epoch": epoch + 1,
        **{
            f"train_{key}": rounded(program.members.per_member(value))
            for key, value in blocks.means().items()
        },
        "test_accuracy": test_accuracy,
        "seconds": round(seconds, 3),
        "examples_per_second": round(examples / seconds, 1),
    }


def _epoch_line(name: str, epochs: int, entry: dict, seconds: float) -> str:
    return (
        f"{name} epoch {entry['epoch']}/{epochs}: loss {describe(entry['train_loss'])} "
        f"train acc {describe(entry['train_accuracy'])} "
        f"test acc {describe(entry['test_accuracy'])} | "
        f"{entry['examples_per_second']:,.0f} examples/s, {seconds:.1f} s"
    )
