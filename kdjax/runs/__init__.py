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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kdjax.data import Dataset, Split
from kdjax.distill import soft_targets
from kdjax.distill.teachers import Teacher, check_stored_outputs
from kdjax.models import count_params
from kdjax.models.heads import deployed_variables
from kdjax.runs.spec import RunSpec, config_hash
from kdjax.store.checkpoints import load_state
from kdjax.store.locking import run_lock
from kdjax.store.run_config import read_config
from kdjax.training import (
    Execution,
    FitResult,
    Folds,
    Plan,
    Run,
    TrainingData,
    evaluate,
    fit,
    predict,
)
from kdjax.training.recipe import (
    check_settings,
    hyperparams_of,
    model_of,
    objective_of,
    preprocess_of,
    training_of,
)


def run_directory(workdir: str | Path, spec: RunSpec, identity: dict) -> Path:
    return Path(workdir) / f"{spec.role}-{config_hash(identity)}"


def run_identity(spec: RunSpec, dataset: Dataset, teacher: Teacher | None) -> dict:
    """What names the run: the spec's identity, the training data and the teacher, and
    the revision of any method whose definition changed (kdjax.distill.methods)."""
    identity = {
        **spec.identity(),
        "image_shape": list(dataset.train.images.shape[1:]),
        "data": dataset.train.fingerprint(),
        "teacher": None if teacher is None else teacher.fingerprint,
    }
    revisions = {m.name: m.revision for m, _ in objective_of(spec).terms if m.revision}
    if revisions:
        identity["method_revisions"] = revisions
    return identity


def train_run(
    spec: RunSpec,
    dataset: Dataset,
    workdir: str | Path,
    *,
    teacher: Teacher | None = None,
    teacher_outputs: Mapping[str, np.ndarray] | None = None,
    folds: Folds | None = None,
    initial_variables: Any = None,
    execution: Execution | None = None,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains (or resumes, or reuses) the run ``spec`` describes: one student, or a
    population trained together (:attr:`RunSpec.population`), the folds of a
    cross-validation included (``folds``: each student's training and test rows;
    they join the run's identity).

    An objective that reads teacher outputs needs ``teacher``; with
    ``spec.teacher_mode == "stored"`` its outputs are read from (or written to) its
    store, or taken from ``teacher_outputs`` (``{name: rows aligned with
    dataset.train}``) when the caller computes them, e.g. each fold's teacher on its
    own inputs; with ``"online"`` it runs inside the step (a teacher trained as a
    population: one per student). ``initial_variables`` (e.g. pretrained weights)
    start the model; their fingerprint joins the run's identity. An objective with an
    initialisation stage (:func:`init_stage`: AB, FSP, FT, FitNets' two-stage option)
    trains it first as a run of its own (role ``<role>_init``), and the main run
    starts from its variables.
    """
    check_settings(spec)  # refused before any work
    reads_teacher = bool(objective_of(spec).teacher_outputs)
    first = init_stage(spec)
    if (reads_teacher or first is not None) and teacher is None:
        raise ValueError(f"objective {spec.objective!r} needs a teacher.")
    initial_per_member = False
    if first is not None:  # the methods' initialisation stage, then the main run from it
        if initial_variables is not None:
            raise ValueError(
                f"run {spec.role!r}: its objective starts from its own initialisation stage; "
                "initial_variables would be overwritten."
            )
        log(f"{spec.role}: initialisation stage first ({first.epochs} epochs: {first.role}).")
        initialised = train_run(first, dataset, workdir, teacher=teacher, folds=folds,
                                execution=execution, log=log)  # fmt: skip
        initial_variables, initial_per_member = initialised.variables, bool(spec.population)
    extras, online = _teacher_inputs(spec, dataset, teacher, teacher_outputs, log)
    identity = run_identity(spec, dataset, teacher if reads_teacher else None)
    if initial_variables is not None:  # a run from other starting weights is another run
        identity["initial_variables"] = soft_targets.params_fingerprint(initial_variables)
    if folds is not None:
        identity["folds"] = folds.fingerprint()
    training = training_of(
        spec,
        len(dataset.train),
        teacher=online,
        initial_variables=initial_variables,
        train_labels=dataset.train.labels,
        initial_per_member=initial_per_member,
    )
    plan = Plan(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=list(spec.seed) if spec.population else spec.seed,
        hyperparams=hyperparams_of(spec),
        folds=folds,
    )
    run = Run(spec.role, run_directory(workdir, spec, identity), identity)
    settings = ", ".join(
        f"{key}={value}" for key, value in spec.identity().items() if key != "role"
    )
    epochs = f"{spec.epochs} epoch{'' if spec.epochs == 1 else 's'}"
    log(f"{spec.role}: {settings}; {epochs} → {run.directory}")
    # A second command on the same run waits here (naming the holder), then reuses
    # or resumes what the first one trained; the processes of one multi-process job
    # train it together.
    with run_lock(run.directory, log=log, per_process=True):
        data = TrainingData(dataset.train, dataset.test, extras)
        return fit(training, data, plan, run, execution, log=log, on_epoch_end=on_epoch_end)


def init_stage(spec: RunSpec) -> RunSpec | None:
    """The initialisation stage a spec's objective trains first (its methods'
    ``init_epochs``, at least one epoch, at a constant learning rate), or None."""
    if spec.phase == "init":
        return None
    epochs = objective_of(spec).init_epochs
    if not epochs:
        return None
    return dataclasses.replace(
        spec,
        role=f"{spec.role}_init",
        phase="init",
        epochs=max(1, round(epochs)),
        lr_schedule="constant",
        lr_decay_epochs=(),
    )


def _teacher_inputs(spec: RunSpec, dataset: Dataset, teacher, given, log):
    """``(stored outputs as batch entries, online teacher)`` for the spec's objective."""
    names = objective_of(spec).teacher_outputs
    if given is not None and (not names or spec.teacher_mode == "online"):
        raise ValueError(
            f"run {spec.role!r}: teacher_outputs are stored outputs, for an objective that "
            "reads a teacher with teacher_mode='stored'."
        )
    if not names:
        return {}, None
    if spec.teacher_mode == "online":
        return {}, teacher.online()
    if given is None:
        shifts = spec.translate_pixels if spec.consistent_jitter else 0
        stored = teacher.outputs(dataset, names, splits=("train",), train_shifts=shifts, log=log)
        given = {name: rows["train"] for name, rows in stored.items()}
    extras = {f"teacher_{name}": given[name] for name in names}
    check_stored_outputs(spec, extras)
    return extras, None


def parameter_count(spec: RunSpec, image_shape: tuple[int, ...]) -> int:
    """Trainable and frozen parameters of ``spec``'s model for images of this shape."""
    model, preprocess = model_of(spec), preprocess_of(spec)
    sample = np.zeros((1, *image_shape), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), preprocess(sample))["params"])
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
        return model_of(self.spec)

    @property
    def preprocess(self):
        """Raw inputs to model inputs, as the run trained."""
        return preprocess_of(self.spec)

    def predict(self, images: np.ndarray, *, outputs=("logits",), batch_size=1000):
        """Model outputs for raw images (as stored in the data set: MNIST's uint8
        pixels, say), with the run's own normalisation applied. One output name gives
        its array; several give a dict."""
        result = predict(
            self.model,
            self.variables,
            np.asarray(images),
            preprocess=self.preprocess,
            batch_size=batch_size,
            output_names=tuple(outputs),
        )
        return result[outputs[0]] if len(outputs) == 1 else result

    def accuracy(self, split: Split) -> float:
        return evaluate(self.model, self.variables, split, preprocess=self.preprocess)

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
    if objective_of(spec).head is not None:  # deploy the student alone
        variables = deployed_variables(variables)
    if spec.population is not None:
        if not 0 <= member < spec.population:
            raise ValueError(f"{run_dir} holds {spec.population} students; member {member}?")
        variables = jax.tree.map(lambda leaf: leaf[member], variables)
    if "epochs" not in config:  # a constant learning rate leaves it out of the identity
        spec = dataclasses.replace(spec, epochs=epoch)
    return TrainedRun(spec=spec, config=config, variables=variables, epoch=epoch)
