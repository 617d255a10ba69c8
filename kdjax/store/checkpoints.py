"""Orbax checkpoints of training runs, verified on every read, and restoring a trained model.

A run directory holds ``config.json`` (what was trained: model name, objective,
hyperparameters, data and teacher fingerprints) and ``checkpoints/<epoch>/``
written by an orbax ``CheckpointManager`` with two items: ``state`` (the
:class:`kdjax.training.TrainState` pytree: step, params, model state, optimizer
state, dropout key) and ``meta`` (JSON: the per-epoch history, plus ``kdjax_integrity``: a
BLAKE2b digest of every state leaf and of the rest of ``meta``). The latest two
epochs are kept. After each save reaches the disk, ``kdjax_latest.json`` in the run
directory records its epoch, so a reader that finds a newer epoch missing (deleted
after it was saved) says which epoch it restores instead.

Every read compares the restored arrays with those digests, so a checkpoint whose
bytes changed (a flipped block, a truncated or deleted file) is never trained on or
evaluated: :class:`RunCheckpoints` falls back to the newest epoch that verifies and
moves the damaged one aside to ``checkpoints/<epoch>.corrupt-<n>``;
:func:`load_state` skips it. Orbax and TensorStore errors become one line naming the
file. A full disk or an unwritable folder during a save is one
:class:`~kdjax.store.integrity.WorkdirError` line: while a :class:`RunCheckpoints` is
open, orbax's own log records of that failure are dropped, and so are the "Event loop
is closed" reports of TensorStore writes that finish after orbax gave up the save
(``sys.unraisablehook`` is wrapped to drop those alone, and stays so).

Restoring a trained model for evaluation or logits (model, variables and the run's
input normalisation)::

    from kdjax.runs import load_run
    run = load_run("runs/mnist_kd/student_kd-1a2b3c4d")
    logits = run.predict(uint8_images)

or with orbax alone (no kdjax needed to read the arrays, but nothing is verified)::

    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager("runs/mnist_kd/student_kd-1a2b3c4d/checkpoints")
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = restored["state"]["params"]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from kdjax.store.integrity import (
    DamagedFileError,
    check_file_manifest,
    leaf_digests,
    move_aside,
    tree_nbytes,
    workdir_error,
    write_file_manifest,
)
from kdjax.store.latest import say_missing, write_latest_record
from kdjax.store.orbax_reports import quiet_absl, quiet_orbax

INTEGRITY_KEY = "kdjax_integrity"
FILES_MANIFEST = "kdjax_files.json"
_KEEP_LATEST = 2
_TENSORSTORE_ARRAY = re.compile(r"'path': '([^']+?)/?'")


def _meta_digest(meta: dict) -> str:
    canonical = json.dumps(meta, sort_keys=True, default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def _describe(error: BaseException, step_dir: Path) -> str:
    """One line for an orbax/TensorStore read error: the file or array, and why."""
    text = str(error)
    files = re.findall(re.escape(str(step_dir)) + r"/[^\s\"']+", text)
    if files:
        where = files[-1].rstrip(":.,")
    else:
        array = _TENSORSTORE_ARRAY.search(text)
        where = f"{step_dir}/state (array {array.group(1)})" if array else str(step_dir)
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(reason) > 160 or "TensorStore" in reason:
        reason = type(error).__name__ if not reason else reason[:120] + " ..."
    return f"{where}: {type(error).__name__}: {reason}"


def _verify(state: Any, meta: dict, step_dir: Path) -> tuple[dict, str | None]:
    """``(meta without the digests, problem or None)``; checks leaves and meta."""
    meta = dict(meta)
    integrity = meta.pop(INTEGRITY_KEY, None)
    if integrity is None:
        return meta, None  # written before fingerprints existed; the caller logs it
    expected = integrity["state"]
    actual = leaf_digests(state)
    changed = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if changed:
        shown = ", ".join(changed[:3])
        if len(changed) > 3:
            shown += f" and {len(changed) - 3} more"
        return meta, (
            f"{step_dir}/state: array {shown} does not match the fingerprint saved with it "
            "(the checkpoint's files changed after they were written)"
        )
    if integrity["meta"] != _meta_digest(meta):
        return meta, f"{step_dir}/meta: the history does not match its fingerprint"
    return meta, None


def _read_verified(
    manager: ocp.CheckpointManager,
    epoch: int,
    abstract_state: Any = None,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict]:
    """Restores ``epoch`` (into ``abstract_state`` when given) and verifies it.

    Raises :class:`DamagedFileError` naming the file when it cannot be read or does not
    match its fingerprint.
    """
    step_dir = Path(manager.directory) / str(epoch)
    changed_file = check_file_manifest(step_dir, FILES_MANIFEST)
    if changed_file:
        raise DamagedFileError(changed_file)
    state_args = ocp.args.StandardRestore(abstract_state)
    try:
        restored = manager.restore(
            epoch, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
        )
    except Exception as error:  # orbax and TensorStore raise many types for one cause
        if abstract_state is not None:
            # Damaged files, or a template that does not fit? Read as saved to tell.
            _read_verified(manager, epoch, log=lambda _: None)
            raise
        raise DamagedFileError(_describe(error, step_dir)) from None
    state, meta = restored["state"], restored["meta"]
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        raise DamagedFileError(f"{step_dir}/meta: holds a JSON {kind}, not an object")
    try:
        meta, problem = _verify(state, meta, step_dir)
    except (KeyError, TypeError, AttributeError) as error:
        raise DamagedFileError(f"{step_dir}/meta: malformed fingerprints ({error!r})") from None
    if problem:
        raise DamagedFileError(problem)
    if INTEGRITY_KEY not in restored["meta"]:
        log(f"{step_dir} was saved without content fingerprints (older kdjax): not verified.")
    return state, meta


class RunCheckpoints:
    """Epoch checkpoints of one run, over ``ocp.CheckpointManager``, verified on every read.

    The contract a training loop relies on::

        checkpoints = RunCheckpoints(run_dir)
        start = checkpoints.latest_epoch() or 0         # newest epoch that VERIFIES
        if start:
            state, meta = checkpoints.restore(start, state)   # verified again
        ...
        checkpoints.save(epoch, state, {"history": history})
        checkpoints.close()

    * ``latest_epoch()`` is the newest epoch whose checkpoint restores and matches its
      fingerprint. Its first call checks the epochs newest first; each damaged one is
      logged (file and reason) and moved aside to ``checkpoints/<epoch>.corrupt-<n>``
      (kept for inspection, never deleted); None when none verifies (the log says the
      run starts over). When the newest epoch saved is gone (not damaged: deleted),
      one line says so and which epoch is restored. Later calls cost nothing; after
      ``save(e)`` it returns ``e``.
    * ``restore(epoch, template_state)`` returns only verified state: it raises
      :class:`~kdjax.store.integrity.DamagedFileError` rather than hand back other bytes.
    * ``save`` and ``close`` raise :class:`~kdjax.store.integrity.WorkdirError` (one line: the
      path, the bytes needed, which earlier epochs are intact) when the disk is full or
      the folder is not writable. A save is atomic: a crash leaves earlier epochs intact.

    Moving damaged checkpoints aside changes the folder, so only one process may hold a
    run's ``RunCheckpoints`` at a time (see :func:`kdjax.store.locking.run_lock`).
    """

    def __init__(self, run_dir: str | Path, *, log: Callable[[str], None] = print):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self._log = log
        self._latest: int | None = None
        self._checked = False
        self._save_bytes = 0
        self._unlisted: list[int] = []  # saved by this object, file list not yet written
        self._open = False
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    create=True,
                    preservation_policy=preservation_policy.LatestN(_KEEP_LATEST),
                ),
            )
        except Exception as error:
            failure = workdir_error(error, action="cannot create", path=self.directory)
            if failure is None:
                raise
            raise failure from None
        quiet_orbax(opening=True)
        self._open = True

    def latest_epoch(self) -> int | None:
        """The newest epoch whose checkpoint verifies (damaged newer ones set aside)."""
        if not self._checked:
            self._latest = self._newest_verified()
            self._checked = True
        return self._latest

    def _newest_verified(self) -> int | None:
        epochs = sorted(self._manager.all_steps(), reverse=True)
        damaged: set[int] = set()
        for epoch in epochs:
            try:
                _read_verified(self._manager, epoch, log=self._log)
                say_missing(self.directory, epoch, damaged, self._log, verb="restoring")
                return epoch
            except DamagedFileError as error:
                aside = move_aside(self.directory / str(epoch))
                self._manager.reload()
                damaged.add(epoch)
                self._log(
                    f"Checkpoint of epoch {epoch} is damaged ({error}); moved it to {aside} "
                    "and falling back to the previous epoch."
                )
        say_missing(self.directory, None, damaged, self._log, verb="restoring")
        if epochs:
            self._log(f"No checkpoint in {self.directory} verifies: training starts over.")
        return None

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        """Saves ``state`` and the JSON ``meta`` as ``epoch``, with their fingerprints."""
        meta = json.loads(json.dumps(meta, default=str))
        integrity = {"state": leaf_digests(state), "meta": _meta_digest(meta)}
        self._save_bytes = tree_nbytes(state)
        self._guard(self._list_finished_saves)
        # Fail before orbax starts its writer threads: after a failed folder creation
        # they wait minutes for a signal that never comes, holding up the exit.
        self._guard(self._probe_writable)
        self._guard(
            lambda: self._manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave({**meta, INTEGRITY_KEY: integrity}),
                ),
            )
        )
        self._unlisted.append(epoch)
        self._latest, self._checked = epoch, True

    def restore(self, epoch: int, template_state: Any) -> tuple[Any, dict]:
        """Restores ``epoch`` into the structure, shapes and shardings of ``template_state``.

        Raises :class:`~kdjax.store.integrity.DamagedFileError` naming the file when the
        checkpoint cannot be read or differs from its fingerprint.
        """
        abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        return _read_verified(self._manager, epoch, abstract_state, log=self._log)

    def close(self) -> None:
        """Waits for the last save to reach the disk (raising its error, if any)."""
        try:
            try:
                self._guard(self._list_finished_saves)
            except BaseException:
                with contextlib.suppress(Exception):  # orbax re-raises the same failed save
                    self._manager.close()
                raise
            self._guard(self._manager.close)
        finally:
            if self._open:
                self._open = False
                quiet_orbax(opening=False)

    def _probe_writable(self) -> None:
        probe = self.directory / f".write-probe-{jax.process_index()}-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()

    def _list_finished_saves(self) -> None:
        """Waits for the pending save, then writes each saved epoch's file list.

        The list (``<epoch>/kdjax_files.json``: size and digest of every file) lags the
        asynchronous save, so an epoch cut short by a crash right after orbax finalised
        it has none; it is then verified by its leaf digests alone.
        """
        self._manager.wait_until_finished()
        existing = set(self._manager.all_steps())
        saved = [epoch for epoch in self._unlisted if epoch in existing]
        if jax.process_index() == 0:
            for epoch in saved:  # not already removed by the preservation policy
                write_file_manifest(self.directory / str(epoch), FILES_MANIFEST)
            if self._unlisted:
                write_latest_record(self.directory, max(self._unlisted))
        self._unlisted = []

    def _guard(self, write: Callable[[], Any]) -> None:
        """Runs an orbax write; a full disk or unwritable folder becomes a WorkdirError."""
        try:
            write()
        except Exception as error:
            self._manager.reload()
            intact = sorted(self._manager.all_steps())
            failure = workdir_error(
                error,
                action="cannot save a checkpoint",
                path=self.directory,
                needed_bytes=self._save_bytes or None,
                intact=(
                    f"epochs {', '.join(map(str, intact))} in {self.directory} are intact"
                    if intact
                    else "no earlier epoch was saved"
                ),
            )
            if failure is None:
                raise
            raise failure from None


def load_state(
    run_dir: str | Path, epoch: int | None = None, *, log: Callable[[str], None] = print
) -> tuple[dict, int]:
    """A run directory's saved training state as plain nested dicts (``step``,
    ``params``, ``model_state``, ``opt_state``, ``dropout_key``), verified against
    its fingerprints, and the epoch it holds: the newest verifying epoch by default
    (damaged newer ones are skipped and logged, never moved — this function only
    reads, and never creates ``checkpoints/``, so it works on a read-only file system).
    When the newest epoch saved is gone, one line says so and which epoch is loaded.
    :func:`kdjax.runs.load_run` builds the usable model from it.

    Raises :class:`~kdjax.store.integrity.DamagedFileError` when the requested epoch (or,
    by default, every epoch) fails verification, and ``FileNotFoundError`` (one line)
    when the run has no checkpoint.
    """
    directory = Path(run_dir).absolute() / "checkpoints"
    if not directory.is_dir():  # read only: never create the folder
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet.")
    with quiet_absl():  # orbax warns that a read-only manager saves nothing: known
        manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True)
        )
    try:
        epochs = sorted(manager.all_steps(), reverse=True)
        if not epochs:
            say_missing(directory, None, set(), log, verb="loading")
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet.")
        all_epochs = list(epochs)
        if epoch is not None:
            if epoch not in epochs:
                raise FileNotFoundError(
                    f"{run_dir} has no checkpoint of epoch {epoch} (it has {sorted(epochs)})."
                )
            epochs = [epoch]
        problems = []
        for candidate in epochs:
            try:
                state, _ = _read_verified(manager, candidate, log=log)
                if epoch is None:
                    say_missing(directory, candidate, set(all_epochs), log, verb="loading")
                return state, candidate
            except DamagedFileError as error:
                if epoch is not None:
                    raise
                log(f"Skipping the damaged checkpoint of epoch {candidate}: {error}")
                problems.append(str(error))
        raise DamagedFileError(f"no checkpoint in {run_dir} verifies: {'; '.join(problems)}")
    finally:
        manager.close()
