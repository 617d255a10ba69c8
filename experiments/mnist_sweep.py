"""Seed 000/003's temperature and alpha studies, done with error bars: every
(temperature, alpha, seed) student is trained **together** in one vmapped program.

    python -m experiments.mnist_sweep --temperatures=1,2,4,16,32,64 --alphas=0.5 --seeds=5

Reuses (or trains) the teacher and its stored soft targets from the workdir it
shares with ``experiments.mnist_kd``, then trains the grid of distilled
students — all on the same batches, one compiled step — and, as the baseline,
the same number of students from scratch. Writes ``sweep/results.json``,
``sweep/results.csv`` and plots of test accuracy (mean ± std over seeds) versus
temperature and versus alpha.
"""

from __future__ import annotations

import csv
import itertools
import time

import numpy as np
from absl import app, flags

from experiments import common, mnist_setup
from kdjax.distill import RunSpec, train_run

FLAGS = flags.FLAGS
flags.DEFINE_list("temperatures", ["1", "2", "4", "16", "32", "64"], "Temperatures to sweep.")
flags.DEFINE_list("alphas", ["0.5"], "Hard-label weights alpha to sweep (1 - alpha: soft term).")
flags.DEFINE_integer("seeds", 3, "Students (seeds) per (temperature, alpha) cell.")
flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, ...")
flags.DEFINE_bool("scratch", True, "Also train `seeds` students without a teacher.")


def _floats(values: list[str]) -> list[float]:
    try:
        return [float(value) for value in values]
    except ValueError:
        return []


common.validate(
    "temperatures",
    lambda v: bool(_floats(v)) and min(_floats(v)) > 0,
    "must be a comma-separated list of numbers > 0",
)
common.validate(
    "alphas",
    lambda v: bool(_floats(v)) and all(0 <= a <= 1 for a in _floats(v)),
    "must be a comma-separated list of numbers in [0, 1]",
)
common.validate("seeds", lambda n: n >= 1, "must be >= 1")


def _cells(values: list, axis: int, grid: list[tuple]) -> dict:
    """Mean and std of ``values`` grouped by one grid coordinate pair."""
    grouped: dict = {}
    for value, key in zip(values, grid, strict=True):
        grouped.setdefault(key[:axis], []).append(value)
    return grouped


def plot_sweep(path, rows: list[dict], x_key: str, line_key: str, scratch: dict | None, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.2))
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
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@common.exit_on_user_error
def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    temperatures, alphas = _floats(FLAGS.temperatures), _floats(FLAGS.alphas)
    seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
    dataset = mnist_setup.load_data()
    _, teacher, logits, fingerprint = mnist_setup.teacher(dataset)

    grid = list(itertools.product(temperatures, alphas, seeds))
    common.log(
        f"Training {len(grid)} distilled students together "
        f"({len(temperatures)} temperatures × {len(alphas)} alphas × {len(seeds)} seeds)."
    )
    settings = mnist_setup.student_settings()
    _, kd = mnist_setup.kd_student(
        "student_sweep",
        dataset,
        logits["train"],
        fingerprint,
        seed=tuple(seed for _, _, seed in grid),
        temperature=tuple(t for t, _, _ in grid),
        alpha=tuple(a for _, a, _ in grid),
        **settings,
    )
    scratch_summary = None
    scratch = None
    if FLAGS.scratch:
        scratch_spec = RunSpec(role="student_scratch_seeds", seed=tuple(seeds), **settings)
        scratch = train_run(scratch_spec, dataset, FLAGS.workdir, **common.run_options())
        scratch_summary = {
            "mean": float(np.mean(scratch.test_accuracy)),
            "std": float(np.std(scratch.test_accuracy, ddof=1)) if len(seeds) > 1 else 0.0,
            "n": len(seeds),
            "accuracies": scratch.test_accuracy,
        }

    rows = []
    for (temperature, alpha), accuracies in _cells(kd.test_accuracy, 2, grid).items():
        rows.append(
            {
                "temperature": temperature,
                "alpha": alpha,
                "mean": float(np.mean(accuracies)),
                "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
                "n": len(accuracies),
                "accuracies": accuracies,
            }
        )

    out = mnist_setup.sweep_dir()
    results = {
        "cells": rows,
        "scratch": scratch_summary,
        "teacher": {"test_accuracy": teacher.test_accuracy, "run_dir": str(teacher.run_dir)},
        "students_trained_together": len(grid),
        "student_sweep": kd.summary(),
        "student_scratch": None if scratch is None else scratch.summary(),
        "data": dataset.summary(),
        "config": common.flag_values(
            ["temperatures", "alphas", "seeds", "first_seed", "scratch", *mnist_setup.SHARED_FLAGS]
        ),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = common.write_results(out, results)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["temperature", "alpha", "mean_accuracy", "std_accuracy", "n"])
        for row in rows:
            writer.writerow(
                [
                    row["temperature"],
                    row["alpha"],
                    f"{row['mean']:.6f}",
                    f"{row['std']:.6f}",
                    row["n"],
                ]
            )
    source = dataset.source
    plot_sweep(
        out / "accuracy_vs_temperature.png",
        rows,
        "temperature",
        "alpha",
        scratch_summary,
        f"StudentNet test accuracy vs T ({len(seeds)} seeds, {source})",
    )
    if len(alphas) > 1:
        plot_sweep(
            out / "accuracy_vs_alpha.png",
            rows,
            "alpha",
            "temperature",
            scratch_summary,
            f"StudentNet test accuracy vs alpha ({len(seeds)} seeds, {source})",
        )

    table = [
        [
            f"{r['temperature']:g}",
            f"{r['alpha']:g}",
            f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}",
            str(r["n"]),
        ]
        for r in rows
    ]
    if scratch_summary:
        table.append(
            [
                "scratch",
                "-",
                f"{100 * scratch_summary['mean']:.2f} ± {100 * scratch_summary['std']:.2f}",
                str(len(seeds)),
            ]
        )
    common.print_report(
        ["T", "alpha", "test acc % (mean ± std)", "n"],
        table,
        notes=common.data_notes(dataset),
        footer=f"Results: {path}  Plots: {out}/  Wall time: {results['wall_seconds']} s",
    )


if __name__ == "__main__":
    app.run(main)
