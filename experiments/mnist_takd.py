"""Teacher-assistant knowledge distillation (TAKD, Mirzadeh et al. 2020) on MNIST, as in
the TensorFlow notebook.

    python -m experiments.mnist_takd --data_dir=/path/to/mnist

``--chain`` lists networks (names of :data:`PRESETS`) from the teacher to the
student (default: the TensorFlow notebook's CNN teacher → its teacher assistant →
the 784–784–784–10 MLP student). The first network is trained on the labels; every
later one is distilled from the one before it with ``alpha·CE + (1 − alpha)·T²·KL``
(alpha 0.5, T 4 as in the notebook; the notebook's soft term is the soft-target
cross-entropy, whose gradient is the same). Intermediate networks are trained once
(seed 42) and their logits stored. The student is then trained three ways,
``--seeds`` students each, trained together: from scratch, distilled directly from
the teacher, and distilled through the chain. Assistants and students train for
``--epochs``, the teacher for ``--teacher_epochs``. The notebook reports 99.26 % for its
student through the TA; it does not show its epoch count or batch size (the
defaults here: 5 and 256). From Python::

    from experiments import mnist_takd
    results = mnist_takd.run(mnist_takd.Config(chain=("mlp_800_dropout", "mlp_784", "mlp_200")))
"""

from __future__ import annotations

import dataclasses
import time

from experiments import mnist_mlp_kd, mnist_setup, report
from experiments.mnist_setup import MnistConfig
from kdjax.distill.teachers import Teacher
from kdjax.runs.cli import (
    at_least_one,
    command,
    option,
    temperature_range,
    unit_interval,
)

# The networks a chain may name: registry model and settings. The TensorFlow notebook's
# three, and the MLP notebook's two MLPs (a quick all-MLP chain).
PRESETS = {
    "tf_notebook_teacher": ("overlap_pool_conv_net", {}),
    "tf_notebook_assistant": ("conv_mlp", {}),
    "mlp_784": ("mlp", {"hidden_sizes": (784, 784)}),
    **mnist_mlp_kd.PRESETS,
}
# The TensorFlow notebook's student through its teacher assistant (test accuracy).
TF_NOTEBOOK_STUDENT_THROUGH_TA = 0.9926


@dataclasses.dataclass(frozen=True)
class Config(MnistConfig):
    workdir: str = option("runs/mnist_takd", "Where checkpoints, soft targets and results go.")
    epochs: int = option(5, "Assistant and student training epochs.", check=at_least_one)
    batch_size: int = option(256, "Training batch size.", check=at_least_one)
    chain: tuple[str, ...] = option(
        ("tf_notebook_teacher", "tf_notebook_assistant", "mlp_784"),
        "Networks from the teacher to the student; each learns from the previous. "
        f"Any of: {', '.join(PRESETS)}.",
        check=(
            lambda names: len(names) >= 2 and set(names) <= set(PRESETS),
            f"must list at least two models among {', '.join(PRESETS)}",
        ),
    )
    temperature: float = option(
        4.0, "Softmax temperature (TensorFlow notebook: 4).", check=temperature_range
    )
    alpha: float = option(
        0.5, "Weight of the hard-label CE (TensorFlow notebook: 0.5).", check=unit_interval
    )
    seeds: int = option(3, "Students per arm, trained together.", check=at_least_one)


def run(config: Config) -> dict:
    started = time.perf_counter()
    dataset = mnist_setup.load_data(config)
    *mentors, student = config.chain
    kd = mnist_setup.kd_fields(config.temperature, config.alpha)
    teacher, teacher_run = mnist_setup.trained_teacher(config, dataset, *PRESETS[mentors[0]])
    specs, results = {"teacher": teacher.spec}, {"teacher": teacher_run}
    chain = [{"position": 0, "network": mentors[0], "run": "teacher"}]
    mentor = teacher
    for position, network in enumerate(mentors[1:], start=1):
        name = f"assistant{position}"
        specs[name] = mnist_setup.student_spec(
            config, name, *PRESETS[network], seed=mnist_setup.TEACHER_SEED, **kd
        )
        results[name] = report.train(config, specs[name], dataset, teacher=mentor)
        mentor = Teacher(specs[name], results[name].variables, results[name].run_dir)
        chain.append({"position": position, "network": network, "run": name})

    seeds = tuple(range(config.seeds))
    arms = {"student_scratch": (None, {}), "student_from_teacher": (teacher, kd)}
    if len(mentors) > 1:
        arms["student_through_chain"] = (mentor, kd)
    for arm, (arm_teacher, fields) in arms.items():
        specs[arm] = mnist_setup.student_spec(config, arm, *PRESETS[student], seed=seeds, **fields)
        results[arm] = report.train(config, specs[arm], dataset, teacher=arm_teacher)

    for link in chain:
        link["test_accuracy"] = results[link["run"]].test_accuracy[0]
    accuracy = {arm: report.mean_std(results[arm].test_accuracy) for arm in arms}
    runs = report.run_entries(specs, results, dataset.train.images.shape[1:])
    study = {
        "chain": chain,
        "student": student,
        "accuracy": accuracy,
        "tf_notebook_reported": {"student_through_chain": TF_NOTEBOOK_STUDENT_THROUGH_TA},
    }
    document = report.results_document("mnist_takd", config, dataset, runs, study, started)
    path = report.write_results(config.workdir, document)
    rows = [
        [f"{link['position']}:{link['network']}", "1", f"{100 * link['test_accuracy']:.2f}", ""]
        for link in chain
    ]
    for arm, summary in accuracy.items():
        rows.append(
            [
                f"{arm} ({student})",
                str(len(summary["each"])),
                f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}",
                f"{100 * TF_NOTEBOOK_STUDENT_THROUGH_TA:.2f}"
                if arm == "student_through_chain"
                else "",
            ]
        )
    report.print_report(
        ["run", "n", "test acc % (mean ± std)", "TensorFlow notebook"],
        rows,
        notes=report.data_notes(dataset),
        footer=f"Results: {path}  Wall time: {document['wall_seconds']} s",
    )
    return document


if __name__ == "__main__":
    command(Config, run)
