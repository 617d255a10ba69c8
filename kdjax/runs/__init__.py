"""Runs on disk: train (or resume, or reuse) the run a :class:`RunSpec` describes in a
directory named after its identity, and load a finished run back for use.

Run directories are ``<workdir>/<role>-<hash of the identity>``. The identity is
the spec's (:meth:`RunSpec.identity`) plus the training data's fingerprint and the
teacher's, so changing the temperature starts a new run, asking for more epochs
continues the old one, and re-running the same command resumes after a crash or
reuses a finished run. A restored run carries its preprocessing::

    run = load_run("runs/mnist_kd/student_kd-1a2b3c4d")
    logits = run.predict(uint8_images)          # [N, 10], the run's normalisation applied
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kdjax.data import Dataset, Split
from kdjax.distill import soft_targets
from kdjax.distill.objectives import get_objective, make_hyperparams
from kdjax.distill.teachers import Teacher, check_stored_outputs
from kdjax.models import count_params, get_model
from kdjax.models.heads import StudentWithHead, deployed_variables
from kdjax.runs.spec import RunSpec, config_hash
from kdjax.store.checkpoints import load_state, read_config
from kdjax.store.locking import run_lock
from kdjax.training import (
    Execution,
    FitResult,
    Plan,
    Run,
    Training,
    TrainingData,
    evaluate,
    fit,
    make_optimizer,
    predict,
    with_compute_dtype,
)


def run_directory(workdir: str | Path, spec: RunSpec, identity: dict) -> Path:
    return Path(workdir) / f"{spec.role}-{config_hash(identity)}"


def run_identity(spec: RunSpec, dataset: Dataset, teacher: Teacher | None) -> dict:
    """What names the run: the spec's identity, the training data and the teacher."""
    return {
        **spec.identity(),
        "image_shape": list(dataset.train.images.shape[1:]),
        "data": dataset.train.fingerprint(),
        "teacher": None if teacher is None else teacher.fingerprint,
    }


def train_run(
    spec: RunSpec,
    dataset: Dataset,
    workdir: str | Path,
    *,
    teacher: Teacher | None = None,
    initial_variables: Any = None,
    execution: Execution | None = None,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains (or resumes, or reuses) the run ``spec`` describes: one student, or a
    population trained together (:attr:`RunSpec.population`).

    An objective that reads teacher outputs needs ``teacher``; with
    ``spec.teacher_mode == "stored"`` its outputs are read from (or written to) its
    store, with ``"online"`` it runs inside the step. ``initial_variables`` (e.g.
    pretrained weights) start the model; their fingerprint joins the run's identity.
    """
    objective = get_objective(spec.objective)
    if objective.teacher_outputs and teacher is None:
        raise ValueError(f"objective {spec.objective!r} needs a teacher.")
    extras, online = {}, None
    if objective.teacher_outputs and spec.teacher_mode == "online":
        online = teacher.online()
    elif objective.teacher_outputs:
        shifts = spec.translate_pixels if spec.consistent_jitter else 0
        stored = teacher.outputs(
            dataset, objective.teacher_outputs, splits=("train",), train_shifts=shifts, log=log
        )
        extras = {f"teacher_{name}": rows["train"] for name, rows in stored.items()}
        check_stored_outputs(spec, extras)
    identity = run_identity(spec, dataset, teacher if objective.teacher_outputs else None)
    if initial_variables is not None:  # a run from other starting weights is another run
        identity["initial_variables"] = soft_targets.params_fingerprint(initial_variables)
    model, frozen = get_model(spec.model, **spec.model_settings), spec.frozen
    if objective.head is not None:  # the method's trainable parts beside the student
        model = StudentWithHead(model, objective.head(len(dataset.train)))
        frozen = tuple(f"student/{pattern}" for pattern in frozen)
        if initial_variables is not None:
            initial_variables = {key: {"student": tree} for key, tree in initial_variables.items()}
    training = Training(
        model=with_compute_dtype(model, spec.compute_dtype),
        objective=objective,
        optimizer=make_optimizer(spec.optimizer, weight_decay=spec.weight_decay, frozen=frozen),
        preprocess=spec.preprocess(),
        augment=spec.augment(),
        constraint=spec.constraint(),
        schedule=spec.schedule(len(dataset.train)),
        teacher=online,
        frozen=frozen,
        initial_variables=initial_variables,
    )
    run_dir = run_directory(workdir, spec, identity)
    settings = ", ".join(
        f"{key}={value}" for key, value in spec.identity().items() if key not in ("role",)
    )
    log(f"{spec.role}: {settings}; {spec.epochs} epoch(s) → {run_dir}")
    # A second command on the same run waits here (naming the holder), then reuses
    # or resumes what the first one trained; the processes of one multi-process job
    # train it together.
    plan = Plan(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=list(spec.seed) if spec.population else spec.seed,
        hyperparams=make_hyperparams(
            learning_rate=spec.learning_rate,
            temperature=spec.temperature,
            hard_weight=spec.hard_weight,
            soft_weight=spec.soft_weight,
        ),
    )
    with run_lock(run_dir, log=log, per_process=True):
        data = TrainingData(dataset.train, dataset.test, extras)
        run = Run(spec.role, run_dir, identity)
        return fit(training, data, plan, run, execution, log=log, on_epoch_end=on_epoch_end)


def parameter_count(spec: RunSpec, image_shape: tuple[int, ...]) -> int:
    """Trainable and frozen parameters of ``spec``'s model for images of this shape."""
    model = get_model(spec.model, **spec.model_settings)
    sample = np.zeros((1, *image_shape), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    return count_params(shapes)


@dataclasses.dataclass
class TrainedRun:
    """A finished run, ready to use: its spec, model and variables (one student:
    ``member`` picks one of a population), and the preprocessing it trained with."""

    spec: RunSpec
    config: dict
    variables: Any
    epoch: int

    @property
    def model(self):
        return get_model(self.spec.model, **self.spec.model_settings)

    def predict(self, images: np.ndarray, *, outputs=("logits",), batch_size=1000):
        """Model outputs for raw images (as stored in the data set: MNIST's uint8
        pixels, say), with the run's own normalisation applied. One output name gives
        its array; several give a dict."""
        result = predict(
            self.model,
            self.variables,
            np.asarray(images),
            preprocess=self.spec.preprocess(),
            batch_size=batch_size,
            output_names=tuple(outputs),
        )
        return result[outputs[0]] if len(outputs) == 1 else result

    def accuracy(self, split: Split) -> float:
        return evaluate(self.model, self.variables, split, preprocess=self.spec.preprocess())

    def as_teacher(self, run_dir: str | Path) -> Teacher:
        return Teacher(self.spec, self.variables, Path(run_dir))


def load_run(
    run_dir: str | Path,
    *,
    epoch: int | None = None,
    member: int = 0,
    log: Callable[[str], None] = print,
) -> TrainedRun:
    """The trained run in ``run_dir`` (a path relative to the current directory or
    absolute; the newest epoch that verifies by default; ``member`` of a population),
    read without changing anything on disk."""
    run_dir = Path(run_dir).expanduser().absolute()
    config = read_config(run_dir)
    spec = RunSpec.from_identity(config)
    state, epoch = load_state(run_dir, epoch, log=log)
    variables = {"params": state["params"], **state.get("model_state", {})}
    if get_objective(spec.objective).head is not None:  # deploy the student alone
        variables = deployed_variables(variables)
    if spec.population is not None:
        if not 0 <= member < spec.population:
            raise ValueError(f"{run_dir} holds {spec.population} students; member {member}?")
        variables = jax.tree.map(lambda leaf: leaf[member], variables)
    if "epochs" not in config:  # a constant learning rate leaves it out of the identity
        spec = dataclasses.replace(spec, epochs=epoch)
    return TrainedRun(spec=spec, config=config, variables=variables, epoch=epoch)
