"""What ``experiments.mhist_kd`` trains and reports besides the study itself: the runs'
specs (the teacher, the MobileNetV2 students, the KD weights), augmentations by name,
pretrained starting weights, the F1/ROC AUC sweep plots and the printed tables.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from experiments import report
from kdjax.distill.objectives import alpha_weights
from kdjax.models.freezing import LayerSelection, frozen_patterns
from kdjax.runs.spec import RunSpec

# Keras' scaling for both backbones, x/127.5 − 1, as RunSpec's normalisation
# (x/255 − mean)/std.
INPUT_SCALING = {"input_mean": 0.5, "input_std": 0.5}

# --augment → RunSpec.image_augment (kdjax.data.image_augment.PRESETS; "" for none).
AUGMENTS = {"notebook": "tf_notebook", "symmetries": "symmetries", "none": ""}
TEACHER_SEED = 42
# The test metrics summarised over seeds, and those the closing table shows.
METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall")
SHOWN_METRICS = ("f1", "roc_auc", "accuracy", "balanced_accuracy")


def teacher_spec(config) -> RunSpec:
    """ResNet50V2 training ``--teacher_trainable`` layers (the rest frozen)."""
    selection = LayerSelection(tuple(config.teacher_trainable))
    return RunSpec(
        role="teacher",
        model="resnet50v2",
        model_settings={"num_classes": 2, "trainable": selection.patterns},
        epochs=config.teacher_epochs,
        batch_size=config.batch_size,
        learning_rate=config.teacher_learning_rate,
        seed=TEACHER_SEED,
        image_augment=AUGMENTS[config.augment],
        frozen=frozen_patterns(selection),
        **INPUT_SCALING,
    )


def student_spec(config, role, seed, *, selection, **fields) -> RunSpec:
    """A MobileNetV2 student (or a population of them: tuples in ``fields``)."""
    settings = {"num_classes": 2, "trainable": selection.patterns}
    count = max((len(v) for v in fields.values() if isinstance(v, tuple)), default=0)
    return RunSpec(
        role=role,
        model="mobilenetv2",
        model_settings=settings,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=(seed,) * count if count else seed,
        teacher_mode=config.teacher_mode,
        image_augment=AUGMENTS[config.augment],
        frozen=frozen_patterns(selection),
        **INPUT_SCALING,
        **fields,
    )


def kd_fields(temperature, alpha) -> dict:
    """RunSpec fields of ``alpha·CE + (1 − alpha)·T²·KL`` (tuples: one per student)."""
    if isinstance(alpha, tuple):
        weights = {"hard_weight": alpha, "soft_weight": tuple(1.0 - a for a in alpha)}
    else:
        weights = alpha_weights(alpha)
    return {"objective": "kd", "temperature": temperature, **weights}


def pretrained_start(weights) -> dict | None:
    """The variables a run starts from: the loaded backbone (``weights`` = ``(path,
    load_keras_weights(...))``, or None: no pretrained start). The core replaces the
    freshly drawn layers these name and keeps the new head's own draw, per seed."""
    return None if weights is None else weights[1]


def summarise(cells: dict[str, list[dict]]) -> dict:
    """Every metric of every cell (a run, or one setting of a sweep) as mean ± std over
    its seeds."""
    return {
        name: {metric: report.mean_std([r[metric] for r in scores]) for metric in METRICS}
        for name, scores in cells.items()
    }


def plot_sweep(path: Path, values, summaries: list[dict], kind: str, title: str) -> Path:
    """F1 and ROC AUC (mean ± std over seeds) against the swept value (process 0 only)."""
    if not report.is_main_process():
        return path
    figure, axes = report.figure((6.5, 4))
    for metric, label in (("f1", "F1 (SSA positive)"), ("roc_auc", "ROC AUC")):
        means = [100 * s[metric]["mean"] for s in summaries]
        stds = [100 * s[metric]["std"] for s in summaries]
        axes.errorbar(values, means, yerr=stds, marker="o", capsize=4, label=label)
    if kind == "temperature":
        axes.set_xscale("log", base=2)
    axes.set_xticks(list(values), [f"{v:g}" for v in values])
    axes.set_xlabel("temperature T" if kind == "temperature" else "alpha (weight of CE)")
    axes.set_ylabel("test score (%)")
    axes.set_title(textwrap.fill(title, 80), fontsize=9)  # stand-in labels are long
    axes.grid(alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    report.save_figure(figure, path)
    return path


def notebook_protocol_rows(config) -> list[list[str]]:
    """The TensorFlow notebook's Task 2 protocol beside this command's settings."""
    kd = f"alpha {config.alpha:g}, T {config.temperature:g}"
    return [
        ["teacher", "ResNet50V2 ImageNet, layers[:185] frozen, last 5 trainable",
         f"ResNet50V2, trains {', '.join(config.teacher_trainable)}"],
        ["student", "MobileNetV2 ImageNet, base frozen, dense head",
         f"MobileNetV2, trains the head + last {config.student_trainable_blocks} blocks"],
        ["optimiser", "Adam 1e-4 (teacher), 1e-3 (students), batch 32, 25 epochs",
         f"Adam {config.teacher_learning_rate:g} / {config.learning_rate:g}, batch "
         f"{config.batch_size}, {config.teacher_epochs} / {config.epochs} "
         + ("epoch" if config.teacher_epochs == config.epochs == 1 else "epochs")],
        ["inputs", "x/255 (Keras' backbones expect x/127.5 − 1)", "x/127.5 − 1"],
        ["augmentation", "drawn once per image before training, test images too",
         f"'{config.augment}', per step in the compiled step, training batches only"],
        ["teacher outputs", "Keras model in the step", f"{config.teacher_mode} teacher"],
        ["KD loss", "softmax applied to softmax outputs (heads end in softmax)",
         f"alpha·CE + (1−alpha)·T²·KL on logits; {kd}"],
        ["sweeps", "T ∈ {1,2,4,16,32,64} (alpha 0.5); alpha ∈ {0.1…0.9} (T 2); one run each",
         f"T ∈ {{{','.join(f'{t:g}' for t in config.temperatures)}}}; alpha ∈ "
         f"{{{','.join(f'{a:g}' for a in config.alphas)}}} (T "
         f"{config.alpha_sweep_temperature:g}); {config.seeds} seeds, populations"],
        ["'from scratch'", "the frozen-base student trained with CE",
         "student_transfer; student_scratch is random weights, all layers trained"],
        ["TA chain", "defines a MobileNetV2 TA, trains a frozen ResNet50V2 one",
         f"MobileNetV2 assistant training its last {config.assistant_trainable_blocks} "
         "block(s) + head"],
        ["ROC AUC", "from argmax labels", "from probabilities"],
        ["seeds", "1", str(config.seeds)],
    ]  # fmt: skip


def print_tables(config, title: str, summary: dict, costs: list[dict], footer: str) -> None:
    """The run beside the TensorFlow notebook's protocol, the test metrics over seeds and
    the models' costs (process 0 only)."""
    if report.is_main_process():
        print(f"\n{title}: the run beside the TensorFlow notebook's protocol")
        header = ["", "TensorFlow notebook", "here"]
        print(report.format_table(header, notebook_protocol_rows(config)))
    rows = [
        [name, *(report.format_mean_std(summary[name][m]) for m in SHOWN_METRICS)]
        for name in summary
    ]
    cost_rows = [
        [c["name"], c["model"], f"{c['parameters']:,}", f"{c['trainable_parameters']:,}",
         "-" if c["flops_per_example"] is None else f"{c['flops_per_example'] / 1e9:.3f}"]
        for c in costs
    ]  # fmt: skip
    if report.is_main_process():
        print(f"\n{title}: test metrics (%, SSA positive; mean ± std over seeds)")
    report.print_report(
        ["run", "F1", "ROC AUC", "accuracy", "balanced acc"],
        rows,
        notes=["", report.format_table(
            ["run", "model", "params", "trainable", "GFLOPs/image"], cost_rows)],
        footer=footer,
    )  # fmt: skip
