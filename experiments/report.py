"""What the experiment commands print and draw after training: the closing table, the
comparison of methods over seeds, and learning curves.

The commands reach the library's results layer through this module too, under the
names they call (``report.train``, ``report.write_results``, ``report.mean_std``):
:mod:`kdjax.runs.execution` (how a command trains its runs), :mod:`kdjax.runs.results`
(the results file) and :mod:`kdjax.runs.statistics` (summaries over seeds).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from kdjax.runs.execution import execution, train
from kdjax.runs.results import (
    is_main_process,
    log,
    plural,
    results_document,
    run_entries,
    run_entry,
    write_results,
)
from kdjax.runs.statistics import (
    SPREAD_RULE,
    count_summary,
    format_mean_std,
    gains_over,
    mean_history,
    mean_std,
    step_costs,
)

__all__ = [
    "COMPARISON_HEADER",
    "SPREAD_RULE",
    "comparison_rows",
    "count_summary",
    "data_notes",
    "execution",
    "figure",
    "format_mean_std",
    "format_table",
    "gains_over",
    "is_main_process",
    "log",
    "mean_history",
    "mean_std",
    "plot_comparison",
    "plot_learning_curves",
    "plural",
    "print_report",
    "results_document",
    "run_entries",
    "run_entry",
    "save_figure",
    "step_costs",
    "train",
    "write_results",
]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def print_report(
    header: list[str], rows: list[list[str]], *, notes: list[str], footer: str
) -> None:
    """The closing table of a command, then its notes and where the results went
    (process 0 only)."""
    if not is_main_process():
        return
    print()
    print(format_table(header, rows))
    for note in notes:
        print(note)
    print(footer)


def data_notes(dataset) -> list[str]:
    """The data set's notice (a sample, a subset, synthetic data) as a report note."""
    return ["NOTE: " + dataset.notice] if dataset.notice else []


def figure(size: tuple[float, float]):
    """A matplotlib figure and axes drawn off-screen (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


# Characters of a 10-point title that fit one line per inch of figure width, with a margin.
TITLE_CHARACTERS_PER_INCH = 10


def wrapped(title: str, drawing) -> str:
    """``title`` broken into lines that fit the width of the figure ``drawing``."""
    width = drawing.get_figwidth() * TITLE_CHARACTERS_PER_INCH
    return textwrap.fill(title, int(width))


def save_figure(figure, path) -> Path:
    """Writes ``figure`` to ``path`` at 120 dpi and closes it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_learning_curves(path: str | Path, curves: dict[str, list[dict]], title: str) -> Path:
    """Test accuracy per epoch, one line per run: the mean over a population's students
    (:func:`mean_history`) with a band of ± one standard deviation around it where the
    curve has one (process 0 only). The title is wrapped to fit the figure."""
    if not is_main_process():
        return Path(path)
    from matplotlib.ticker import MaxNLocator

    drawing, axes = figure((6, 4))
    for label, history in curves.items():
        epochs = np.array([entry["epoch"] for entry in history])
        means = np.array([100 * entry["test_accuracy"] for entry in history])
        (line,) = axes.plot(epochs, means, marker="o", label=label)
        if history and all("test_accuracy_std" in entry for entry in history):
            spread = np.array([100 * entry["test_accuracy_std"] for entry in history])
            axes.fill_between(
                epochs, means - spread, means + spread, color=line.get_color(), alpha=0.2
            )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(wrapped(title, drawing), fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(drawing, path)


# The columns of :func:`comparison_rows`.
COMPARISON_HEADER = [
    "run",
    "params",
    "test acc %",
    "published %",
    "vs KD",
    "> spread",
    "train s",
    "ms/step",
    "extra vs CE",
]


def comparison_rows(rows: list[dict], runs: dict, over_kd: dict, costs: dict, labels: dict):
    """A comparison of methods over seeds, one line per method: parameters, accuracy,
    published, gain over KD and verdict, training time, time per step and extra cost
    over the baseline (CE). ``rows``: ``{"method", "run", "accuracy", "published"}``."""
    lines = []
    for row in rows:
        method, entry = row["method"], runs[row["run"]]
        verdict, cost = over_kd.get(method), costs.get(method, {})
        extra = cost.get("extra_over_baseline")
        step = cost.get("seconds_per_step")
        lines.append(
            [
                labels[method],
                f"{entry['parameters']:,}",
                format_mean_std(row["accuracy"]),
                "—" if row["published"] is None else f"{row['published']:.2f}",
                "—" if verdict is None else f"{100 * verdict['gain']:+.2f}",
                "—" if verdict is None else ("yes" if verdict["exceeds_spread"] else "no"),
                str(cost.get("train_seconds", "—")),
                "—"
                if step is None
                else f"{1000 * step:.1f}" + ("*" if cost["with_compile"] else ""),
                "—" if extra is None or extra == 0 else f"{100 * extra:+.0f}%",
            ]
        )
    return lines


def plot_comparison(path, rows: list[dict], labels: dict, title: str, published_label: str):
    """Bars of mean accuracy with ±std error bars, each seed's accuracy as a dot and
    the published value (where there is one) as a red bar (process 0 only)."""
    if not is_main_process():
        return path
    drawing, axes = figure((max(7, 0.7 * len(rows)), 4))
    positions = np.arange(len(rows))
    means = [100 * row["accuracy"]["mean"] for row in rows]
    stds = [100 * row["accuracy"]["std"] for row in rows]
    axes.bar(positions, means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8, label="kdjax")
    shown = []
    for position, row in zip(positions, rows, strict=True):
        for value in row["accuracy"]["each"]:
            axes.plot(position, 100 * value, "k.", markersize=4)
        if row["published"] is not None:
            axes.plot(position, row["published"], "r_", markersize=22, markeredgewidth=2)
            shown.append(row["published"])
    if shown:
        axes.plot([], [], "r_", markersize=12, markeredgewidth=2, label=published_label)
    axes.set_xticks(positions, [labels[row["method"]] for row in rows], rotation=45, ha="right")
    spread = max(stds + [0])
    low = min([min(means) - spread, *shown]) - 3
    high = max([max(means) + spread, *shown]) + 2
    axes.set_ylim(max(0, low), min(100, high))
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(wrapped(title, drawing), fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right")
    save_figure(drawing, path)
    return path
