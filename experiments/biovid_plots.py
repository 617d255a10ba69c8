"""The BioVid command's scores, tables and plots: each fold's metrics and their mean
± std, the distillation gain, the results entries and closing table, and the plots
(the confusion matrix, accuracy per fold, and a few windows per class, raw beside
preprocessed)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from experiments import report
from kdjax.data.signals import level_errors, read_channels
from kdjax.models import count_params
from kdjax.training import metrics, predict

# The closing table's metrics: (key, scale).
TABLE_METRICS = (("accuracy", 100), ("macro_f1", 100), ("mae", 1), ("rmse", 1))


def fold_scores(arm: dict, num_classes: int, preprocess) -> dict:
    """Per-fold accuracy, macro-F1, MAE, RMSE of an arm (each fold's student on its
    own test windows); their mean ± std; the confusion matrix summed over folds."""
    per_fold, confusion = [], np.zeros((num_classes,) * 2, np.int64)
    for index, (_, test) in enumerate(arm["folds"]):
        variables = arm["result"].member_variables(index)
        images = arm["split"].images[test]
        logits = predict(arm["model"], variables, images, preprocess=preprocess)["logits"]
        labels, predicted = arm["split"].labels[test], np.argmax(logits, -1)
        per_fold.append({
            "test_examples": len(test),
            "accuracy": metrics.accuracy(labels, predicted),
            "macro_f1": metrics.f1_score(labels, predicted, average="macro"),
            **level_errors(labels, predicted),
        })  # fmt: skip
        confusion += metrics.confusion_matrix(labels, predicted, num_classes)
    summary = {key: report.mean_std([fold[key] for fold in per_fold])
               for key, _ in TABLE_METRICS}  # fmt: skip
    return {"per_fold": per_fold, **summary, "confusion_matrix": confusion.tolist()}


def difference(distilled: dict, scratch: dict) -> dict:
    """Per-fold accuracy of the distilled student minus the scratch one (same folds)."""
    pairs = zip(distilled["per_fold"], scratch["per_fold"], strict=True)
    gains = [ours["accuracy"] - theirs["accuracy"] for ours, theirs in pairs]
    return {"accuracy": report.mean_std(gains)}


def print_table(arms: dict, notice: str | None, footer: str) -> None:
    """The closing table: every arm's model, folds and mean ± std metrics."""
    rows = [
        [name, arm["spec"].model, str(len(arm["folds"])),
         *(report.format_mean_std(arm["scores"][key], scale) for key, scale in TABLE_METRICS)]
        for name, arm in arms.items()
    ]  # fmt: skip
    report.print_report(
        ["run", "model", "folds", "accuracy %", "macro-F1 %", "MAE", "RMSE"], rows,
        notes=["NOTE: " + notice] if notice else [], footer=footer,
    )  # fmt: skip


def run_entry(arm: dict) -> dict:
    """An arm's entry in ``results.json``: its run's identity (``spec``, with the
    channels its model reads), summary, history, parameter count and scores."""
    sample = arm["split"].images[:1]
    shapes = jax.eval_shape(lambda: arm["model"].init(jax.random.PRNGKey(0), sample)["params"])
    return {"spec": arm["identity"], **arm["result"].summary(), "history": arm["result"].history,
            "parameters": count_params(shapes), "scores": arm["scores"]}  # fmt: skip


def write_plots(workdir: Path, arms: dict, data) -> None:
    """``confusion.png`` (the first arm, summed over folds), ``fold_accuracy.png``
    (every arm) and ``signals.png`` (two windows per class, raw beside preprocessed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = data.signals
    name, arm = next(iter(arms.items()))
    confusion = np.asarray(arm["scores"]["confusion_matrix"])
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.imshow(confusion, cmap="Blues")
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=8)
    ticks = range(len(signals.class_names))
    axes.set_xticks(ticks, signals.class_names)
    axes.set_yticks(ticks, signals.class_names)
    axes.set(xlabel="predicted", ylabel="true", title=f"{name}: summed over folds")
    _save(figure, workdir / "confusion.png")

    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(arms)
    for offset, (name, arm) in enumerate(arms.items()):
        accuracies = [100 * fold["accuracy"] for fold in arm["scores"]["per_fold"]]
        axes.bar(np.arange(len(accuracies)) + offset * width, accuracies, width, label=name)
    axes.axhline(100 / len(signals.class_names), color="grey", linestyle=":", label="chance")
    where = "synthetic stand-in" if data.notice else data.location
    axes.set(xlabel="fold", ylabel="test accuracy (%)", title=f"Accuracy per fold ({where})")
    axes.legend(fontsize=7, loc="lower right")
    _save(figure, workdir / "fold_accuracy.png")

    gsr = signals.channels.index("gsr") if "gsr" in signals.channels else 0
    channel = signals.channels[gsr]
    figure, grid = plt.subplots(len(ticks), 2, figsize=(9, 1.6 * len(ticks)), squeeze=False)
    for label in ticks:
        for row in np.flatnonzero(signals.labels == label)[:2]:
            raw = read_channels(Path(data.location) / str(signals.names[row]), (channel,))[:, 0]
            grid[label, 0].plot(raw, linewidth=0.7)
            grid[label, 1].plot(signals.signals[row, :, gsr], linewidth=0.7)
        grid[label, 0].set_ylabel(signals.class_names[label])
    grid[0, 0].set_title(f"raw {channel}")
    grid[0, 1].set_title("preprocessed (smoothed, outliers out, min-max)")
    _save(figure, workdir / "signals.png")


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
