"""Hinton-style MNIST MLPs distilled on a 10,000-image transfer set, as in the MLP notebook.

    python -m experiments.mnist_mlp_kd --data_dir=/path/to/mnist

Teacher 784–800–800–10 (ReLU, dropout 0.5 after each hidden layer) trained on
the full training split; student 784–200–200–10 without regularisation trained
on the *transfer set* (the first 10,000 training images) from scratch and with
KD (T=3, alpha=0.2: 0.2·CE + 0.8·T²·KL), Adam 1e-3, batch 32, 50 epochs, inputs
normalised with (0.1307, 0.3081). Each student arm is ``--seeds`` students
trained together in one compiled program; the table reports correct answers out
of the 10,000 test images as mean ± std beside the notebook's 9,833 / 9,621 / 9,710.
From Python::

    from experiments import mnist_mlp_kd
    results = mnist_mlp_kd.run(mnist_mlp_kd.Config(epochs=5, seeds=2))
"""

from __future__ import annotations

import dataclasses
import time

from experiments import mnist_setup, report
from experiments.mnist_setup import MnistConfig
from kdjax.runs.cli import (
    at_least_one,
    command,
    option,
    temperature_range,
    unit_interval,
)

# The MLP notebook's networks: registry model and settings.
PRESETS = {
    "mlp_800_dropout": ("mlp", {"hidden_sizes": (800, 800), "dropout": 0.5}),
    "mlp_200": ("mlp", {"hidden_sizes": (200, 200)}),
}
TEACHER, STUDENT = "mlp_800_dropout", "mlp_200"
# What the MLP notebook reports: correct answers out of the 10,000 test images.
MLP_NOTEBOOK_CORRECT = {"teacher": 9833, "student_scratch": 9621, "student_kd": 9710}


@dataclasses.dataclass(frozen=True)
class Config(MnistConfig):
    # The MLP notebook's settings, where they differ from the R MNIST notebook's.
    workdir: str = option("runs/mnist_mlp_kd", "Where checkpoints, soft targets and results go.")
    epochs: int = option(50, "Student training epochs (MLP notebook: 50).", check=at_least_one)
    teacher_epochs: int = option(
        10, "Teacher training epochs, when it is not in the workdir.", check=at_least_one
    )
    batch_size: int = option(32, "Student batch size (MLP notebook: 32).", check=at_least_one)
    temperature: float = option(
        3.0, "Softmax temperature (MLP notebook: 3).", check=temperature_range
    )
    alpha: float = option(
        0.2, "Weight of the hard-label CE (MLP notebook: 0.2).", check=unit_interval
    )
    seeds: int = option(3, "Students per arm, trained together.", check=at_least_one)
    transfer_size: int = option(
        10000, "Transfer set: the first N training images.", check=at_least_one
    )
    teacher_batch_size: int = option(
        128, "Teacher batch size (trained on all images).", check=at_least_one
    )


def run(config: Config) -> dict:
    started = time.perf_counter()
    dataset = mnist_setup.load_data(config)
    if config.transfer_size > len(dataset.train):
        raise ValueError(
            f"--transfer_size {config.transfer_size} exceeds the {len(dataset.train)} "
            "training images."
        )
    teacher, teacher_run = mnist_setup.trained_teacher(
        config, dataset, *PRESETS[TEACHER], batch_size=config.teacher_batch_size
    )
    # The students see only the transfer set; the teacher's logits are stored for it.
    transfer = dataclasses.replace(dataset, train=dataset.train.take(config.transfer_size))
    seeds = tuple(range(config.seeds))
    specs = {
        "teacher": teacher.spec,
        "student_scratch": mnist_setup.student_spec(
            config, "student_scratch", *PRESETS[STUDENT], seed=seeds
        ),
        "student_kd": mnist_setup.student_spec(
            config,
            "student_kd",
            *PRESETS[STUDENT],
            seed=seeds,
            **mnist_setup.kd_fields(config.temperature, config.alpha),
        ),
    }
    results = {
        "teacher": teacher_run,
        "student_scratch": report.train(config, specs["student_scratch"], transfer),
        "student_kd": report.train(config, specs["student_kd"], transfer, teacher=teacher),
    }

    test_size = len(dataset.test)
    correct = {
        name: report.count_summary(result.test_accuracy, test_size)
        for name, result in results.items()
    }
    runs = report.run_entries(specs, results, dataset.train.images.shape[1:])
    study = {
        "correct_out_of_test": correct,
        "test_examples": test_size,
        "transfer_examples": len(transfer.train),
        "mlp_notebook_reported": MLP_NOTEBOOK_CORRECT,
        "models": {"teacher": TEACHER, "student": STUDENT},
    }
    document = report.results_document("mnist_mlp_kd", config, dataset, runs, study, started)
    path = report.write_results(config.workdir, document)
    rows = [
        [
            name,
            f"{c['mean']:.1f} ± {c['std']:.1f}",
            str(len(c["each"])),
            f"{MLP_NOTEBOOK_CORRECT[name]:,}",
        ]
        for name, c in correct.items()
    ]
    report.print_report(
        ["run", f"correct / {test_size:,} (mean ± std)", "n", "MLP notebook"],
        rows,
        notes=report.data_notes(dataset),
        footer=f"Results: {path}  Wall time: {document['wall_seconds']} s",
    )
    return document


if __name__ == "__main__":
    command(Config, run)
