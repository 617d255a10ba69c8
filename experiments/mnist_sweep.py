"""The temperature and alpha studies of the R MNIST notebook and the TensorFlow notebook,
done with error bars: every (temperature, alpha, seed) student is trained **together**
in one vmapped program.

    python -m experiments.mnist_sweep --temperatures=1,2,4,16,32,64 --alphas=0.5 --seeds=5

Reuses (or trains) the teacher from the workdir it shares with
``experiments.mnist_kd``, then trains the grid of distilled students — all on
the same batches, one compiled step — and, as the baseline, the same number of
students from scratch. Writes ``sweep/results.json``, ``sweep/results.csv`` and
plots of test accuracy (mean ± std over seeds) versus temperature and versus
alpha in the workdir. From Python::

    from experiments import mnist_sweep
    results = mnist_sweep.run(mnist_sweep.Config(temperatures=(1.0, 4.0), seeds=2))
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import time
from pathlib import Path

from experiments import mnist_setup, report
from experiments.mnist_kd import STUDENT_MODEL, TEACHER_MODEL
from experiments.mnist_setup import MnistConfig
from kdjax.runs.cli import (
    at_least_one,
    command,
    each,
    non_negative,
    option,
    temperature_range,
    unit_interval,
)


@dataclasses.dataclass(frozen=True)
class Config(MnistConfig):
    temperatures: tuple[float, ...] = option(
        (1.0, 2.0, 4.0, 16.0, 32.0, 64.0),
        "Temperatures to sweep.",
        check=each(temperature_range),
    )
    alphas: tuple[float, ...] = option(
        (0.5,),
        "Hard-label weights alpha to sweep (1 - alpha: soft term).",
        check=each(unit_interval),
    )
    seeds: int = option(3, "Students (seeds) per (temperature, alpha) cell.", check=at_least_one)
    first_seed: int = option(0, "Seeds are first_seed, first_seed + 1, ...", check=non_negative)
    scratch: bool = option(True, "Also train `seeds` students without a teacher.")


def cell_summaries(accuracies: list[float], grid: list[tuple]) -> list[dict]:
    """One row per (temperature, alpha) cell of ``grid`` (``(T, alpha, seed)`` per
    student, in the order of ``accuracies``): mean, sample std and every accuracy."""
    grouped: dict = {}
    for accuracy, (temperature, alpha, _) in zip(accuracies, grid, strict=True):
        grouped.setdefault((temperature, alpha), []).append(accuracy)
    return [
        {"temperature": temperature, "alpha": alpha, **_summary(values)}
        for (temperature, alpha), values in grouped.items()
    ]


def _summary(accuracies: list[float]) -> dict:
    summary = report.mean_std(accuracies)
    return {
        "mean": summary["mean"],
        "std": summary["std"],
        "n": len(accuracies),
        "accuracies": list(accuracies),
    }


def plot_sweep(path, rows: list[dict], x_key: str, line_key: str, scratch: dict | None, title: str):
    """Mean ± std test accuracy against ``x_key``, one line per ``line_key`` (process 0
    only)."""
    if not report.is_main_process():
        return
    figure, axes = report.figure((6.5, 4.2))
    for line_value in sorted({row[line_key] for row in rows}):
        line = sorted((r for r in rows if r[line_key] == line_value), key=lambda r: r[x_key])
        axes.errorbar(
            [r[x_key] for r in line],
            [100 * r["mean"] for r in line],
            yerr=[100 * r["std"] for r in line],
            marker="o",
            capsize=4,
            label=f"KD, {line_key}={line_value:g}",
        )
    if scratch is not None:
        mean, std = 100 * scratch["mean"], 100 * scratch["std"]
        axes.axhline(mean, color="gray", linestyle="--", label="from scratch (mean ± std)")
        axes.axhspan(mean - std, mean + std, color="gray", alpha=0.2)
    if x_key == "temperature":
        axes.set_xscale("log", base=2)
    ticks = sorted({row[x_key] for row in rows})
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.set_xlabel(x_key)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    report.save_figure(figure, path)


def sweep_specs(config: Config, grid: list[tuple], seeds: list[int]) -> dict:
    """The grid's distilled students as one population and, with ``--scratch``, as
    many seeds trained from scratch."""
    specs = {
        "student_sweep": mnist_setup.student_spec(
            config,
            "student_sweep",
            STUDENT_MODEL,
            seed=tuple(seed for _, _, seed in grid),
            **mnist_setup.kd_fields(tuple(t for t, _, _ in grid), tuple(a for _, a, _ in grid)),
        )
    }
    if config.scratch:
        specs["student_scratch_seeds"] = mnist_setup.student_spec(
            config, "student_scratch_seeds", STUDENT_MODEL, seed=tuple(seeds)
        )
    return specs


def run(config: Config) -> dict:
    started = time.perf_counter()
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    dataset = mnist_setup.load_data(config)
    teacher, teacher_run = mnist_setup.trained_teacher(config, dataset, TEACHER_MODEL)
    grid = list(itertools.product(config.temperatures, config.alphas, seeds))
    report.log(
        f"Training {len(grid)} distilled students together ({len(config.temperatures)} "
        f"temperatures × {len(config.alphas)} alphas × {len(seeds)} seeds)."
    )
    specs = {"teacher": teacher.spec, **sweep_specs(config, grid, seeds)}
    results = {"teacher": teacher_run}
    results["student_sweep"] = report.train(
        config, specs["student_sweep"], dataset, teacher=teacher
    )
    scratch = None
    if config.scratch:
        results["student_scratch_seeds"] = report.train(
            config, specs["student_scratch_seeds"], dataset
        )
        scratch = _summary(results["student_scratch_seeds"].test_accuracy)
    cells = cell_summaries(results["student_sweep"].test_accuracy, grid)

    out = Path(config.workdir) / "sweep"
    runs = report.run_entries(specs, results, dataset.train.images.shape[1:])
    study = {"cells": cells, "scratch": scratch, "students_trained_together": len(grid)}
    document = report.results_document("mnist_sweep", config, dataset, runs, study, started)
    path = report.write_results(out, document)
    write_csv(out / "results.csv", cells)
    title = f"{STUDENT_MODEL} test accuracy vs {{}} ({len(seeds)} seeds, {dataset.source})"
    plot_sweep(out / "accuracy_vs_temperature.png", cells, "temperature", "alpha", scratch,
               title.format("T"))  # fmt: skip
    if len(config.alphas) > 1:
        plot_sweep(out / "accuracy_vs_alpha.png", cells, "alpha", "temperature", scratch,
                   title.format("alpha"))  # fmt: skip
    report.print_report(
        ["T", "alpha", "test acc % (mean ± std)", "n"],
        table(cells, scratch),
        notes=report.data_notes(dataset),
        footer=f"Results: {path}  Plots: {out}/  Wall time: {document['wall_seconds']} s",
    )
    return document


def table(cells: list[dict], scratch: dict | None) -> list[list[str]]:
    """One line per (T, alpha) cell, then the scratch students."""
    rows = [
        [
            f"{cell['temperature']:g}",
            f"{cell['alpha']:g}",
            f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}",
            str(cell["n"]),
        ]
        for cell in cells
    ]
    if scratch:
        mean_std = f"{100 * scratch['mean']:.2f} ± {100 * scratch['std']:.2f}"
        rows.append(["scratch", "-", mean_std, str(scratch["n"])])
    return rows


def write_csv(path: Path, cells: list[dict]) -> None:
    if not report.is_main_process():
        return
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["temperature", "alpha", "mean_accuracy", "std_accuracy", "n"])
        for cell in cells:
            writer.writerow(
                [
                    cell["temperature"],
                    cell["alpha"],
                    f"{cell['mean']:.6f}",
                    f"{cell['std']:.6f}",
                    cell["n"],
                ]
            )


if __name__ == "__main__":
    command(Config, run)
