"""A comparison of distillation methods trained over several seeds: accuracy as mean ±
std, each method's gain over a baseline (CE, KD) beside the seed-to-seed spread, and
what each method costs per training step — as a table, a JSON-ready study and a bar
plot.

The spread rule: a gain is said to exceed the spread when ``|gain| > std(method) +
std(baseline)``, the sample standard deviations of the two methods' test accuracies
over their seeds (a gain inside it is not told apart from seed noise). With one seed
per method there is no spread and no verdict.
"""

from __future__ import annotations

import numpy as np

SPREAD_RULE = (
    "|gain| > std(method) + std(baseline), the sample standard deviations of test accuracy "
    "over seeds"
)


def gains_over(rows: list[dict], baseline: str) -> dict:
    """``{method: {"gain", "spread", "exceeds_spread"}}`` for every row but the teacher
    and the baseline (empty without a baseline row or with one seed per method).

    ``rows`` are ``{"method": name, "accuracy": report.mean_std(...)}`` dicts; the gain
    is the difference of mean accuracies (fractions), the spread the sum of the two
    standard deviations (:data:`SPREAD_RULE`).
    """
    base = next((row for row in rows if row["method"] == baseline), None)
    if base is None or len(base["accuracy"]["each"]) < 2:
        return {}
    verdicts = {}
    for row in rows:
        if row["method"] in ("teacher", baseline):
            continue
        gain = row["accuracy"]["mean"] - base["accuracy"]["mean"]
        spread = row["accuracy"]["std"] + base["accuracy"]["std"]
        verdicts[row["method"]] = {
            "gain": gain,
            "spread": spread,
            "exceeds_spread": bool(abs(gain) > spread),
        }
    return verdicts


def seconds_per_step(entry: dict, steps_per_epoch: int) -> dict:
    """One training step's wall time from a run's ``results.json`` entry: the median
    epoch after the first (which holds the compilation) over the steps of an epoch;
    with one epoch, that epoch less the compile time measured when it ran (when this
    invocation trained it; otherwise it is included, and said)."""
    seconds = [epoch["seconds"] for epoch in entry["history"]]
    if len(seconds) > 1:
        return {"seconds": float(np.median(seconds[1:])) / steps_per_epoch, "with_compile": False}
    compile_seconds = entry.get("compile_seconds") if entry.get("resumed_from_epoch") == 0 else None
    first = seconds[0] - (compile_seconds or 0.0)
    return {"seconds": first / steps_per_epoch, "with_compile": compile_seconds is None}


def step_costs(runs: dict, names: dict[str, str], steps_per_epoch: int, baseline: str = "ce"):
    """``{method: {"train_seconds", "seconds_per_step", "with_compile",
    "extra_over_baseline"}}`` for the runs ``names`` maps methods to: training wall
    time (every epoch, evaluation excluded), seconds per step (of all the method's
    students together) and the extra cost per step over the ``baseline`` method's
    students (``0.25``: a quarter more; None without a baseline, and for the teacher)."""
    costs = {}
    for method, run_name in names.items():
        entry = runs[run_name]
        step = seconds_per_step(entry, steps_per_epoch)
        costs[method] = {
            "train_seconds": round(sum(epoch["seconds"] for epoch in entry["history"]), 1),
            "seconds_per_step": step["seconds"],
            "with_compile": step["with_compile"],
        }
    base = costs.get(baseline)
    for method, cost in costs.items():
        compared = base is not None and method != "teacher"
        cost["extra_over_baseline"] = (
            cost["seconds_per_step"] / base["seconds_per_step"] - 1 if compared else None
        )
    return costs


def table(rows: list[dict], runs: dict, over_kd: dict, costs: dict, labels: dict) -> list:
    """The report's rows: method, parameters, accuracy, published, gain over KD and
    verdict, training time, time per step and extra cost over the baseline (CE)."""
    from experiments.report import format_mean_std

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


TABLE_HEADER = [
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


def plot_comparison(path, rows: list[dict], labels: dict, title: str, published_label: str):
    """Bars of mean accuracy with ±std error bars, each seed's accuracy as a dot and
    the published value (where there is one) as a red bar (process 0 only)."""
    from experiments import report

    if not report.is_main_process():
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(7, 0.7 * len(rows)), 4))
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
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
