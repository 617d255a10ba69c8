"""The pieces of ``experiments.mhist_kd`` that are not the study itself: the backbones in
the model registry, augmentations by name, training a run with image augmentation,
pretrained starting weights, scoring a finished run, model costs, plots and the
seed-protocol table.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import jax
import numpy as np

from experiments import report
from kdjax.models import count_params, get_model
from kdjax.models.costs import forward_flops
from kdjax.models.freezing import count_trainable
from kdjax.runs import load_run, train_run
from kdjax.training import Execution, FitResult
from kdjax.training.metrics import classification_report

# Keras' scaling for both backbones, x/127.5 − 1, as RunSpec's normalisation
# (x/255 − mean)/std.
INPUT_SCALING = {"input_mean": 0.5, "input_std": 0.5}

# --augment → RunSpec.image_augment (kdjax.data.image_augment.PRESETS; "" for none).
AUGMENTS = {"seed": "seed003", "symmetries": "symmetries", "none": ""}


def execution(config) -> Execution:
    """The common execution flags (devices, feed, TensorBoard, ...) and the config's
    inference batch size."""
    return dataclasses.replace(report.execution(config), eval_batch_size=config.eval_batch_size)


def train(config, spec, dataset, *, teacher=None, initial_variables=None) -> FitResult:
    """Trains (or resumes, or reuses) ``spec`` in the config's workdir."""
    return train_run(
        spec,
        dataset,
        config.workdir,
        teacher=teacher,
        initial_variables=initial_variables,
        execution=execution(config),
        log=report.log,
    )


def pretrained_start(weights) -> dict | None:
    """The variables a run starts from: the loaded backbone (``weights`` = ``(path,
    load_keras_weights(...))``, or None: no pretrained start). The core replaces the
    freshly drawn layers these name and keeps the new head's own draw, per seed."""
    return None if weights is None else weights[1]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate_run(run_dir, dataset, config) -> list[dict]:
    """Test-set metrics of every member of the finished run in ``run_dir``, each loaded
    back from its checkpoint and scored from its probabilities."""
    first = load_run(run_dir)
    count = first.spec.population or 1
    reports = []
    for member in range(count):
        trained = first if member == 0 else load_run(run_dir, member=member)
        logits = trained.predict(dataset.test.images, batch_size=config.eval_batch_size)
        reports.append(classification_report(dataset.test.labels, softmax(logits)))
    return reports


def model_costs(specs: dict, image_shape, *, flops: bool = True) -> list[dict]:
    """Parameters (Keras' count: params and BatchNorm statistics), trainable parameters
    and forward FLOPs per image of each distinct (model, trainable layers)."""
    costs, seen = [], set()
    for name, spec in specs.items():
        key = (spec.model, tuple(spec.model_settings.get("trainable", ())))
        if key in seen:
            continue
        seen.add(key)
        model = get_model(spec.model, **spec.model_settings)
        sample = np.zeros((1, *image_shape), np.float32)
        variables = jax.jit(lambda model=model, sample=sample: model.init(
            jax.random.PRNGKey(0), sample))()  # fmt: skip
        costs.append({
            "name": name.rsplit("_seed", 1)[0],
            "model": spec.model,
            "parameters": count_params(variables),
            "trainable_parameters": count_trainable(
                variables["params"], spec.model_settings.get("trainable", ("*",))
            ),
            "flops_per_example": forward_flops(model, variables, image_shape, batch_size=1)
            if flops else None,
        })  # fmt: skip
    return costs


def plot_sweep(path: Path, values, summaries: list[dict], kind: str, title: str) -> Path:
    """F1 and ROC AUC (mean ± std over seeds) against the swept value (process 0 only)."""
    if not report.is_main_process():
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def seed_protocol_rows(config) -> list[list[str]]:
    """Seed 003's Task 2 protocol beside this command's settings."""
    kd = f"alpha {config.alpha:g}, T {config.temperature:g}"
    return [
        ["teacher", "ResNet50V2 ImageNet, layers[:185] frozen, last 5 trainable",
         f"ResNet50V2, trains {', '.join(config.teacher_trainable)}"],
        ["student", "MobileNetV2 ImageNet, base frozen, dense head",
         f"MobileNetV2, trains the head + last {config.student_trainable_blocks} blocks"],
        ["optimiser", "Adam 1e-4 (teacher), 1e-3 (students), batch 32, 25 epochs",
         f"Adam {config.teacher_learning_rate:g} / {config.learning_rate:g}, batch "
         f"{config.batch_size}, {config.teacher_epochs} / {config.epochs} epochs"],
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


__all__ = [
    "AUGMENTS",
    "INPUT_SCALING",
    "evaluate_run",
    "execution",
    "model_costs",
    "plot_sweep",
    "pretrained_start",
    "seed_protocol_rows",
    "softmax",
    "train",
]
