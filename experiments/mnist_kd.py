"""Seed 000: distil an MNIST CNN teacher into a small CNN student with stored soft targets.

    python -m experiments.mnist_kd --temperature=3 --alpha=0.7

Trains the teacher (or reuses it from the workdir), stores its logits for every
training and test example, then trains the student with the KD loss
``alpha·CE + (1−alpha)·T²·KL`` and, with the same seed, without a teacher (the
baseline). Prints a comparison table and writes ``results.json`` and
``learning_curves.png`` in the workdir. Re-running resumes any unfinished run.

Without ``--data_dir`` and without a TFDS copy of MNIST it uses the embedded
5,000-image sample, and says so. From Python::

    from experiments import mnist_kd
    results = mnist_kd.run(mnist_kd.Config(workdir="runs/x", epochs=1))
"""

from __future__ import annotations

import dataclasses
import time

from experiments import mnist_setup, report
from experiments.config import command, finite, non_negative, option, positive, unit_interval
from experiments.mnist_setup import MnistConfig
from kdjax.runs import parameter_count
from kdjax.training import accuracy

# Seed 000's networks: the teacher is the standard MNIST CNN (seed 000 loads one from
# a file), the student its "StudentNet".
TEACHER_MODEL = "conv_net"
STUDENT_MODEL = "small_conv_net"


@dataclasses.dataclass(frozen=True)
class Config(MnistConfig):
    temperature: float = option(
        3.0, "Softmax temperature T applied to teacher and student.", check=finite(positive)
    )
    alpha: float = option(
        0.7, "Weight of the hard-label CE; 1 - alpha weights T²·KL.", check=unit_interval
    )
    seed: int = option(
        42, "Seed of the students' initialisation, dropout and shuffling.", check=non_negative
    )
    scratch: bool = option(True, "Also train the student without a teacher (the baseline).")


def run(config: Config) -> dict:
    started = time.perf_counter()
    dataset = mnist_setup.load_data(config)
    teacher, teacher_run, logits = mnist_setup.teacher(config, dataset, TEACHER_MODEL)
    specs = {"teacher": teacher.spec}
    specs["student_kd"] = mnist_setup.student_spec(
        config,
        "student_kd",
        STUDENT_MODEL,
        seed=config.seed,
        **mnist_setup.kd_fields(config.temperature, config.alpha),
    )
    results = {"teacher": teacher_run}
    results["student_kd"] = mnist_setup.train(config, specs["student_kd"], dataset, teacher)
    if config.scratch:
        specs["student_scratch"] = mnist_setup.student_spec(
            config, "student_scratch", STUDENT_MODEL, seed=config.seed
        )
        results["student_scratch"] = mnist_setup.train(config, specs["student_scratch"], dataset)
    checked = min(1000, len(dataset.train))
    agreement = accuracy(logits["train"][:checked], dataset.train.labels[:checked])
    image_shape = dataset.train.images.shape[1:]
    runs = {
        name: report.run_entry(specs[name], result, parameter_count(specs[name], image_shape))
        for name, result in results.items()
    }
    study = {
        "test_accuracy": {name: result.test_accuracy[0] for name, result in results.items()},
        "teacher_first_1000_train_label_agreement": agreement,
        "teacher_fingerprint": teacher.fingerprint,
    }
    document = report.results_document("mnist_kd", config, dataset, runs, study, started)
    path = report.write_results(config.workdir, document)
    plot = report.plot_learning_curves(
        f"{config.workdir}/learning_curves.png",
        {name: report.mean_history(result.history) for name, result in results.items()},
        f"MNIST KD (T={config.temperature:g}, alpha={config.alpha:g}), {dataset.source}",
    )
    rows = [
        [
            name,
            runs[name]["spec"]["model"],
            f"{runs[name]['parameters']:,}",
            f"{100 * result.test_accuracy[0]:.2f}%",
            str(len(result.history)),
            f"{runs[name]['mean_epoch_seconds']}",
        ]
        for name, result in results.items()
    ]
    report.print_report(
        ["run", "model", "params", "test acc", "epochs", "s/epoch"],
        rows,
        notes=[
            f"\nThe teacher's top class matches the label for {round(agreement * checked)} of "
            f"the first {checked:,} training images (seed 000's sanity check; it reports "
            "988 of 1,000).",
            *report.data_notes(dataset),
        ],
        footer=f"Results: {path}  Plot: {plot}  Wall time: {document['wall_seconds']} s",
    )
    return document


if __name__ == "__main__":
    command(Config, run)
