"""Transfer learning and distillation on MHIST (ResNet50V2 → MobileNetV2), as in the
TensorFlow notebook's Task 2.

    python -m experiments.mhist_kd --data_dir=MHIST \\
        --teacher_weights=resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --student_weights=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 \\
        --seeds=3 --study=all

Runs (every student with each of ``--seeds`` seeds; the teacher once):

- ``teacher``: ResNet50V2 from the ImageNet weights, every layer frozen but the
  notebook's last five Keras layers (``conv5_block3_3_conv``, ``post_bn``; the Add and
  ReLU layers among them have no weights) and the new head; Adam 1e-4;
- ``student_scratch``: MobileNetV2 from random weights, everything trained; Adam 1e-3;
- ``student_transfer``: MobileNetV2 from the ImageNet weights, base frozen, head
  trained, cross-entropy only (what the notebook calls its student "from scratch");
- ``student_kd``: the same with ``alpha·CE + (1 − alpha)·T²·KL`` (alpha 0.5, T 1);
- ``--study=temperature`` / ``alpha``: one population per seed over T ∈ {1, 2, 4,
  16, 32, 64} (alpha 0.5), or over alpha ∈ {0.1, …, 0.9} (T 2, the notebook's);
- ``--study=chain``: ResNet50V2 → assistant (MobileNetV2, last block and head
  trained) → student (head only), each step with the KD loss.

Augmentation runs inside the compiled step on training batches only (``--augment``);
an online teacher sees the same augmented image; a stored teacher is allowed only
without augmentation (``--teacher_mode``). After training, each student is loaded
back (``load_run``) and scored on the test split from its probabilities: accuracy,
balanced accuracy, F1 and precision/recall with SSA positive, ROC AUC, confusion
matrix; mean ± std over seeds. Writes ``results.json``, F1/AUC plots against T and
alpha, and prints the results beside the notebook's protocol.

A folder written by ``experiments.mhist_standin`` (CIFAR-10 classes in MHIST's
format) carries a ``standin.json``; every table and figure then says "stand-in".
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from experiments import mhist_training, report
from experiments.mhist_training import AUGMENTS, kd_fields, pretrained_start, student_spec
from kdjax.data.mhist import load_mhist
from kdjax.distill.teachers import Teacher
from kdjax.models.backbones import trainable_last_blocks
from kdjax.models.freezing import LayerSelection
from kdjax.models.pretrained import WeightFileError, load_keras_weights
from kdjax.runs.cli import (
    CommonConfig,
    at_least_one,
    command,
    each,
    existing_path,
    finite,
    non_negative,
    option,
    positive,
    temperature_range,
    unit_interval,
)
from kdjax.runs.scoring import evaluate_run, model_costs

STUDIES = ("kd", "temperature", "alpha", "chain", "all")
# The TensorFlow notebook: ResNet50V2.layers[-5:] trainable (the weighted ones of them),
# plus the head.
NOTEBOOK_TEACHER_TRAINABLE = ("conv5_block3_3_conv", "post_bn", "head")


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/mhist_kd", "Where checkpoints, results and plots go.")
    data_dir: str | None = option(
        None,
        "The MHIST folder (annotations.csv and images/).",
        check=(existing_path, "must be an existing folder"),
    )
    teacher_weights: str | None = option(
        None,
        "Keras ResNet50V2 no-top weights (.h5); without it the teacher's frozen layers "
        "keep their random initialisation.",
        check=(existing_path, "must be an existing file"),
    )
    student_weights: str | None = option(
        None,
        "Keras MobileNetV2 1.0 no-top weights (.h5) for the transfer students and the "
        "assistant; without it their frozen base stays random.",
        check=(existing_path, "must be an existing file"),
    )
    study: str = option("kd", "Which runs: kd, temperature, alpha, chain or all.", choices=STUDIES)
    seeds: int = option(3, "Students per setting (seeds 0 … N−1).", check=at_least_one)
    image_size: int = option(224, "Images are resized to this square size.", check=at_least_one)
    epochs: int = option(25, "Student (and assistant) epochs (notebook: 25).", check=at_least_one)
    teacher_epochs: int = option(25, "Teacher epochs (notebook: 25).", check=at_least_one)
    batch_size: int = option(32, "Training batch size (Keras' default, the notebook's).",
                             check=at_least_one)  # fmt: skip
    teacher_learning_rate: float = option(1e-4, "Teacher's Adam rate.", check=finite(positive))
    learning_rate: float = option(1e-3, "Students' Adam rate.", check=finite(positive))
    temperature: float = option(1.0, "T of student_kd and the chain.", check=temperature_range)
    alpha: float = option(0.5, "Weight of the hard-label CE (1 − alpha: T²·KL).",
                          check=unit_interval)  # fmt: skip
    temperatures: tuple[float, ...] = option(
        (1.0, 2.0, 4.0, 16.0, 32.0, 64.0), "The temperature sweep.", check=each(temperature_range)
    )
    alphas: tuple[float, ...] = option(
        (0.1, 0.3, 0.5, 0.7, 0.9), "The alpha sweep.", check=each(unit_interval)
    )
    alpha_sweep_temperature: float = option(
        2.0, "T of the alpha sweep (notebook: 2).", check=temperature_range
    )
    teacher_trainable: tuple[str, ...] = option(
        NOTEBOOK_TEACHER_TRAINABLE, "Layer-name patterns the teacher trains (the rest is frozen)."
    )
    student_trainable_blocks: int = option(
        0, "Last MobileNetV2 blocks the transfer students train besides the head.",
        check=non_negative,
    )  # fmt: skip
    assistant_trainable_blocks: int = option(
        1, "Last MobileNetV2 blocks the chain's assistant trains besides the head.",
        check=non_negative,
    )  # fmt: skip
    augment: str = option(
        "notebook",
        "Training augmentation in the step: 'notebook' (the TensorFlow notebook's: flips, "
        "rotation ±180°, zoom 0.5–1, brightness 0.2–1), 'symmetries' (flips and 90° turns) "
        "or 'none'.",
        choices=tuple(AUGMENTS),
    )
    teacher_mode: str = option(
        "online",
        "'online': the teacher runs in the student's step on the same augmented batch; "
        "'stored': its logits are computed once (only with --augment=none).",
        choices=("online", "stored"),
    )
    eval_batch_size: int = option(128, "Batch size of test-set inference.", check=at_least_one)
    costs: bool = option(True, "Measure FLOPs (XLA cost analysis) of every model.")

    def problems(self) -> list[str]:
        problems = []
        if self.data_dir is None:
            problems.append("--data_dir must name the MHIST folder")
        if self.teacher_mode == "stored" and self.augment != "none":
            problems.append(
                "--teacher_mode=stored gives the student the teacher's outputs for the "
                "unaugmented image; use it with --augment=none, or --teacher_mode=online"
            )
        if self.image_size < 32:
            problems.append(f"--image_size must be >= 32, got {self.image_size}")
        return problems


def standin_label(data_dir: str) -> str | None:
    """The label of a stand-in folder (its ``standin.json``), None for real MHIST."""
    path = Path(data_dir) / "standin.json"
    return json.loads(path.read_text())["label"] if path.is_file() else None


class Students:
    """The runs of one invocation, trained in order and each scored as it finishes:
    ``runs`` (results.json entries), ``specs`` and ``cells`` (test metrics by cell: a
    run, or one setting of a sweep, over seeds)."""

    def __init__(self, config: Config, dataset, weights: dict):
        self.config, self.dataset, self.weights = config, dataset, weights
        self.runs, self.specs, self.cells = {}, {}, {}

    def train(self, name, spec, cell_names, *, teacher=None, start=None):
        """Trains ``spec`` and scores every member; ``cell_names[i]`` collects member i."""
        result = report.train(
            self.config, spec, self.dataset, teacher=teacher, initial_variables=start
        )
        self.runs[name], self.specs[name] = report.run_entry(spec, result), spec
        scores = evaluate_run(result.run_dir, self.dataset, self.config.eval_batch_size)
        for member, scored in enumerate(scores):
            self.cells.setdefault(cell_names[member], []).append(scored)
        return result

    def student(self, seed, role, selection, *, pretrained=True, teacher=None, names=None,
                **fields):  # fmt: skip
        """A MobileNetV2 student (``fields``: its objective; tuples: a population),
        named ``<role>_seed<seed>``; returns its result and spec."""
        spec = student_spec(self.config, role, seed, selection=selection, **fields)
        start = pretrained_start(self.weights["mobilenetv2"]) if pretrained else None
        result = self.train(
            f"{role}_seed{seed}", spec, names or [role], teacher=teacher, start=start
        )
        return result, spec


def sweeps(config: Config) -> dict:
    """``{kind: (values, cell names)}`` of the sweeps ``--study`` asks for."""
    found = {}
    if config.study in ("temperature", "all"):
        found["temperature"] = (config.temperatures, [f"T={t:g}" for t in config.temperatures])
    if config.study in ("alpha", "all"):
        found["alpha"] = (config.alphas, [f"alpha={a:g}" for a in config.alphas])
    return found


def train_seed(config: Config, students: Students, seed: int, teacher: Teacher) -> None:
    """Every student ``--study`` asks for, with one seed."""
    head_only = trainable_last_blocks("mobilenetv2", config.student_trainable_blocks)
    kd, swept = kd_fields(config.temperature, config.alpha), sweeps(config)
    if config.study in ("kd", "all"):
        students.student(seed, "student_scratch", LayerSelection(("*",)), pretrained=False)
        students.student(seed, "student_transfer", head_only)
        students.student(seed, "student_kd", head_only, teacher=teacher, **kd)
    if "temperature" in swept:
        fields = kd_fields(tuple(config.temperatures), config.alpha)
        students.student(seed, "sweep_temperature", head_only, teacher=teacher,
                         names=swept["temperature"][1], **fields)  # fmt: skip
    if "alpha" in swept:
        fields = kd_fields(config.alpha_sweep_temperature, tuple(config.alphas))
        students.student(seed, "sweep_alpha", head_only, teacher=teacher,
                         names=swept["alpha"][1], **fields)  # fmt: skip
    if config.study in ("chain", "all"):
        part = trainable_last_blocks("mobilenetv2", config.assistant_trainable_blocks)
        assistant, spec = students.student(seed, "assistant", part, teacher=teacher, **kd)
        mentor = Teacher(spec, assistant.variables, assistant.run_dir)
        students.student(seed, "student_chain", head_only, teacher=mentor, **kd)


def load_weights(config: Config) -> dict:
    """``{backbone: (path, variables) or None}``: the weight files, read before the data
    so that a wrong file stops the command before any training."""
    return {
        name: None if path is None else (path, load_keras_weights(path, name))
        for name, path in (
            ("resnet50v2", config.teacher_weights),
            ("mobilenetv2", config.student_weights),
        )
    }


def run(config: Config) -> dict:
    started = time.perf_counter()
    label = standin_label(config.data_dir)
    title = f"STAND-IN ({label})" if label else "MHIST"
    weights = load_weights(config)
    dataset = load_mhist(config.data_dir, image_size=config.image_size, log=report.log)
    report.log(
        f"Data: {title}, {len(dataset.train)} train / {len(dataset.test)} test images of "
        f"{config.image_size}²; SSA share {dataset.train.labels.mean():.2f} (train)."
    )
    for name, loaded in weights.items():
        if loaded is None:
            report.log(f"NOTE: no weight file for {name}: its frozen layers stay random.")
    students = Students(config, dataset, weights)
    spec = mhist_training.teacher_spec(config)
    start = pretrained_start(weights["resnet50v2"])
    result = students.train("teacher", spec, ["teacher"], start=start)
    teacher = Teacher(spec, result.variables, result.run_dir)
    for seed in range(config.seeds):
        train_seed(config, students, seed, teacher)

    summary = mhist_training.summarise(students.cells)
    image_shape = dataset.train.images.shape[1:]
    costs = model_costs(students.specs, image_shape, flops=config.costs)
    plots = [
        mhist_training.plot_sweep(
            Path(config.workdir) / f"f1_auc_vs_{kind}.png",
            values,
            [summary[name] for name in names],
            kind,
            f"{title}: student F1 / ROC AUC vs {kind} (mean ± std, {config.seeds} seeds)",
        )
        for kind, (values, names) in sweeps(config).items()
    ]
    study = {
        "data_label": title,
        "standin": label,
        "teacher_mode": config.teacher_mode,
        "augment": config.augment,
        "pretrained": {name: None if w is None else w[0] for name, w in weights.items()},
        "metrics": students.cells,
        "summary": summary,
        "costs": costs,
        "sweeps": {
            kind: dict(zip(names, values, strict=True))
            for kind, (values, names) in sweeps(config).items()
        },
        "plots": [str(path) for path in plots],
    }
    document = report.results_document("mhist_kd", config, dataset, students.runs, study, started)
    path = report.write_results(config.workdir, document)
    mhist_training.print_tables(
        config, title, summary, costs,
        footer=f"Results: {path}  Plots: {', '.join(map(str, plots)) or '-'}  "
        f"Wall time: {document['wall_seconds']} s",
    )  # fmt: skip
    return document


if __name__ == "__main__":
    command(Config, run, user_errors=(WeightFileError,))
