"""What the MNIST commands share: their common flags, data loading, the teacher and
its stored soft targets. ``mnist_kd`` and ``mnist_sweep`` use the same workdir by
default, so a sweep reuses the teacher a single run trained (and vice versa);
``mnist_mlp_kd`` changes the defaults to seed 004's."""

from __future__ import annotations

from pathlib import Path

from absl import flags

from experiments import common
from kdjax.data import Dataset, load_mnist
from kdjax.distill import RunSpec, teacher_soft_targets, train_run
from kdjax.train import FitResult, accuracy

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 3, "Student training epochs (seed 000: 3).")
flags.DEFINE_integer("teacher_epochs", 5, "Teacher training epochs, when it is not in the workdir.")
flags.DEFINE_integer("batch_size", 128, "Training batch size (seed 000: 128).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (seed 000: 1e-3).")
flags.DEFINE_string("workdir", "runs/mnist_kd", "Where checkpoints, soft targets and results go.")
flags.DEFINE_string("data_dir", None, "MNIST IDX files or a prepared TFDS data dir.")
flags.DEFINE_bool("download", True, "Let TFDS download MNIST when no copy is found.")

common.validate("epochs", lambda n: n >= 1, "must be >= 1")
common.validate("teacher_epochs", lambda n: n >= 1, "must be >= 1")
common.validate("batch_size", lambda n: n >= 1, "must be >= 1")
common.validate("learning_rate", lambda lr: lr > 0, "must be > 0")
common.validate_data_dir()

SHARED_FLAGS = [
    "epochs",
    "teacher_epochs",
    "batch_size",
    "learning_rate",
    "workdir",
    "data_dir",
    "download",
]
TEACHER_MODEL = "mnist_cnn"
STUDENT_MODEL = "student_net"
# The teacher is trained once per workdir with this seed, whatever the students' seeds.
TEACHER_SEED = 42
# MNIST's pixel mean and standard deviation: inputs of unit scale (see BUILD_NOTES.md).
INPUT_NORMALISATION = {"input_mean": 0.1307, "input_std": 0.3081}


def load_data() -> Dataset:
    dataset = load_mnist(FLAGS.data_dir, download=FLAGS.download, log=common.log)
    common.log(
        f"Data: {dataset.name} from {dataset.source} ({dataset.location}): "
        f"{len(dataset.train)} train / {len(dataset.test)} test examples."
    )
    if dataset.notice:
        common.log("NOTE: " + dataset.notice)
    return dataset


def student_settings(model: str = STUDENT_MODEL) -> dict:
    """RunSpec fields every student of these commands shares."""
    return dict(
        model=model,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        **INPUT_NORMALISATION,
    )


def teacher(
    dataset: Dataset, *, model: str = TEACHER_MODEL, batch_size: int | None = None, **extra
) -> tuple[RunSpec, FitResult, dict, str]:
    """Trains or reuses the teacher; returns its spec, result, soft targets and fingerprint.

    ``extra`` are further :class:`RunSpec` fields (e.g. ``translate_pixels``, ``max_norm``).
    """
    spec = RunSpec(
        role="teacher",
        model=model,
        epochs=FLAGS.teacher_epochs,
        batch_size=batch_size or FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        seed=TEACHER_SEED,
        **INPUT_NORMALISATION,
        **extra,
    )
    result = train_run(spec, dataset, FLAGS.workdir, **common.run_options())
    logits, fingerprint = teacher_soft_targets(spec, result, dataset, log=common.log)
    return spec, result, logits, fingerprint


def train_label_agreement(logits: dict, dataset: Dataset, count: int = 1000) -> float:
    """Seed 000's check: how many of the first training labels the teacher's argmax matches."""
    return accuracy(logits["train"][:count], dataset.train.labels[:count])


def sweep_dir() -> Path:
    """Where ``mnist_sweep`` writes its tables and plots."""
    path = Path(FLAGS.workdir) / "sweep"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kd_student(
    role: str,
    dataset: Dataset,
    teacher_logits,
    teacher_fingerprint: str,
    *,
    temperature,
    alpha,
    **settings,
) -> tuple[RunSpec, FitResult]:
    """Trains (or reuses) a student distilled with ``alpha·CE + (1 − alpha)·T²·KL``.

    ``temperature`` and ``alpha`` are numbers, or tuples with one value per student
    when ``settings["seed"]`` is a tuple (a population).
    """
    soft_weight = tuple(1.0 - a for a in alpha) if isinstance(alpha, tuple) else 1.0 - alpha
    spec = RunSpec(
        role=role,
        objective="kd",
        temperature=temperature,
        hard_weight=alpha,
        soft_weight=soft_weight,
        **settings,
    )
    result = train_run(
        spec,
        dataset,
        FLAGS.workdir,
        teacher_logits=teacher_logits,
        teacher_fingerprint=teacher_fingerprint,
        **common.run_options(),
    )
    return spec, result
