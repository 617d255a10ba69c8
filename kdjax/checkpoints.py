"""Orbax checkpoints of training runs, and restoring a trained model.

A run directory holds ``config.json`` (what was trained: model name, objective,
hyperparameters, data and teacher fingerprints) and ``checkpoints/<epoch>/``
written by an orbax ``CheckpointManager`` with two items: ``state`` (the
:class:`kdjax.train.TrainState` pytree: step, params, optimizer state, dropout
key) and ``meta`` (JSON: the per-epoch history). The latest two epochs are kept.

Restoring a trained model for evaluation or logits::

    from kdjax.checkpoints import load_model
    model, params = load_model("runs/mnist_kd/student_kd-1a2b3c4d")
    logits = model.apply({"params": params}, images)["logits"]

or with orbax alone (no kdjax needed to read the arrays)::

    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager("runs/mnist_kd/student_kd-1a2b3c4d/checkpoints")
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    params = restored["state"]["params"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

CONFIG_FILE = "config.json"
_KEEP_LATEST = 2


class RunCheckpoints:
    """Epoch checkpoints of one run (a thin layer over ``ocp.CheckpointManager``)."""

    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True,
                preservation_policy=preservation_policy.LatestN(_KEEP_LATEST),
            ),
        )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, epoch: int, template_state: Any) -> tuple[Any, dict]:
        """Restores ``epoch`` into the structure, shapes and shardings of ``template_state``."""
        abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_config(run_dir: str | Path, config: dict) -> None:
    """Records what a run trains; refuses to reuse a directory that trained something else."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    # Compare in JSON form: tuples come back from the file as lists.
    config = json.loads(json.dumps(config, default=str))
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != config:
            changed = sorted(
                key for key in set(existing) | set(config) if existing.get(key) != config.get(key)
            )
            raise ValueError(
                f"{run_dir} holds a run with different settings ({', '.join(changed)}); "
                "use another --workdir or delete that folder."
            )
        return
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a kdjax run directory.")
    return json.loads(path.read_text())


def load_model(run_dir: str | Path, epoch: int | None = None):
    """The model and trained parameters of a run directory (latest epoch by default).

    Returns ``(model, params)``: ``model.apply({"params": params}, images)`` gives the
    outputs dict (``"logits"``, features). Images are float inputs, already
    normalised the way the run's ``config.json`` says (``input_mean``/``input_std``).
    """
    from kdjax.models import get_model

    config = read_config(run_dir)
    model = get_model(config["model"])
    manager = ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints")
    try:
        epoch = manager.latest_step() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet.")
        restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return model, restored["state"]["params"]
