"""Summaries of runs over seeds: mean ± sample standard deviation, counts out of a test
set, learning curves averaged over a population, gains of one method over another
against the seed-to-seed spread, and the wall time of a training step.

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


def mean_std(values) -> dict:
    """Mean, sample standard deviation (0 for one value) and every value."""
    array = np.atleast_1d(np.asarray(values, np.float64))
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "each": array.tolist(),
    }


def count_summary(accuracies, test_size: int, *, errors: bool = False) -> dict:
    """Correct answers (or, with ``errors``, mistakes) out of ``test_size`` per run, as
    mean, sample std and the whole counts of every run."""
    rates = np.atleast_1d(np.asarray(accuracies, np.float64))
    counts = np.round((1.0 - rates if errors else rates) * test_size).astype(int)
    return {**mean_std(counts), "each": counts.tolist()}


def mean_history(history: list[dict]) -> list[dict]:
    """Per-epoch test accuracy averaged over a population's students, with its sample
    standard deviation as ``test_accuracy_std`` when there are several (a single run's
    history passes through without it)."""
    curve = []
    for entry in history:
        summary = mean_std(entry["test_accuracy"])
        point = {"epoch": entry["epoch"], "test_accuracy": summary["mean"]}
        if len(summary["each"]) > 1:
            point["test_accuracy_std"] = summary["std"]
        curve.append(point)
    return curve


def format_mean_std(summary: dict, scale: float = 100.0, digits: int = 2) -> str:
    """``"70.41 ± 0.31 (n=3)"``, or just the value for one run."""
    count = len(summary["each"])
    if count == 1:
        return f"{scale * summary['mean']:.{digits}f}"
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f} (n={count})"


def gains_over(rows: list[dict], baseline: str) -> dict:
    """``{method: {"gain", "spread", "exceeds_spread"}}`` for every row but the teacher
    and the baseline (empty without a baseline row or with one seed per method).

    ``rows`` are ``{"method": name, "accuracy": mean_std(...)}`` dicts; the gain is the
    difference of mean accuracies (fractions), the spread the sum of the two standard
    deviations (:data:`SPREAD_RULE`).
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
