"""The BioVid command's plots: the confusion matrix, accuracy per fold, and a few
windows per class, raw beside preprocessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdjax.data.signals import read_channels


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
