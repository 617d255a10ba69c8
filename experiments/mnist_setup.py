"""What the MNIST commands share: their common settings, data loading and the
teacher with its stored soft targets. ``mnist_kd`` and ``mnist_sweep`` use the same
workdir by default, so a sweep reuses the teacher a single run trained (and vice
versa)."""

from __future__ import annotations

import dataclasses

from kdjax.data import Dataset, load_mnist
from kdjax.distill.objectives import alpha_weights
from kdjax.distill.teachers import Teacher
from kdjax.runs.cli import CommonConfig, at_least_one, existing_path, finite, option, positive
from kdjax.runs.execution import train
from kdjax.runs.results import log
from kdjax.runs.spec import RunSpec
from kdjax.training import FitResult

# The teacher is trained once per workdir with this seed, whatever the students' seeds.
TEACHER_SEED = 42
# MNIST's pixel mean and standard deviation: inputs of unit scale (see BUILD_NOTES.md).
INPUT_NORMALISATION = {"input_mean": 0.1307, "input_std": 0.3081}


@dataclasses.dataclass(frozen=True)
class MnistConfig(CommonConfig):
    workdir: str = option("runs/mnist_kd", "Where checkpoints, soft targets and results go.")
    epochs: int = option(3, "Student training epochs (R MNIST notebook: 3).", check=at_least_one)
    teacher_epochs: int = option(
        5, "Teacher training epochs, when it is not in the workdir.", check=at_least_one
    )
    batch_size: int = option(
        128, "Training batch size (R MNIST notebook: 128).", check=at_least_one
    )
    learning_rate: float = option(
        1e-3, "Adam learning rate (R MNIST notebook: 1e-3).", check=finite(positive)
    )
    data_dir: str | None = option(
        None,
        "MNIST IDX files or a prepared TFDS data dir.",
        check=(existing_path, "must be an existing folder"),
    )
    download: bool = option(True, "Let TFDS download MNIST when no copy is found.")


def load_data(config: MnistConfig) -> Dataset:
    dataset = load_mnist(config.data_dir, download=config.download, log=log)
    # The data set's notice (the embedded sample, say) is printed once, among the notes
    # after the results (report.data_notes); this line points to it.
    log(
        f"Data: {dataset.name} from {dataset.source} ({dataset.location}): "
        f"{len(dataset.train)} train / {len(dataset.test)} test examples"
        + ("; see the NOTE after the results." if dataset.notice else ".")
    )
    return dataset


def student_spec(config: MnistConfig, role: str, model: str, settings=None, **fields) -> RunSpec:
    """A student of these commands (the config's epochs, batch size and learning rate)."""
    return RunSpec(
        role=role,
        model=model,
        model_settings=dict(settings or {}),
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        compute_dtype=config.compute_dtype,
        **INPUT_NORMALISATION,
        **fields,
    )


def kd_fields(temperature, alpha) -> dict:
    """RunSpec fields of ``alpha·CE + (1 − alpha)·T²·KL`` (tuples: one per student)."""
    if isinstance(alpha, tuple):
        return {
            "objective": "kd",
            "temperature": temperature,
            "hard_weight": alpha,
            "soft_weight": tuple(alpha_weights(a)["soft_weight"] for a in alpha),
        }
    return {"objective": "kd", "temperature": temperature, **alpha_weights(alpha)}


def trained_teacher(
    config: MnistConfig,
    dataset: Dataset,
    model: str,
    settings=None,
    *,
    batch_size: int | None = None,
    **fields,
) -> tuple[Teacher, FitResult]:
    """Trains or reuses the teacher (seed :data:`TEACHER_SEED`, the config's teacher
    epochs); its outputs are stored when a student first needs them. ``fields`` are
    further :class:`RunSpec` fields."""
    spec = RunSpec(
        role="teacher",
        model=model,
        model_settings=dict(settings or {}),
        epochs=config.teacher_epochs,
        batch_size=batch_size or config.batch_size,
        learning_rate=config.learning_rate,
        seed=TEACHER_SEED,
        compute_dtype=config.compute_dtype,
        **INPUT_NORMALISATION,
        **fields,
    )
    result = train(config, spec, dataset)
    return Teacher(spec, result.variables, result.run_dir), result


def teacher(
    config: MnistConfig,
    dataset: Dataset,
    model: str,
    settings=None,
    *,
    batch_size: int | None = None,
    **fields,
) -> tuple[Teacher, FitResult, dict]:
    """Trains or reuses the teacher; returns it, its run and its stored logits
    (``{"train": ..., "test": ...}``). ``fields`` are further :class:`RunSpec` fields."""
    trained, result = trained_teacher(
        config, dataset, model, settings, batch_size=batch_size, **fields
    )
    logits = trained.outputs(dataset, ("logits",), log=log)["logits"]
    return trained, result, logits
