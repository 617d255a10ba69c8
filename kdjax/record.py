"""The results record: one small JSON summary per recorded run, rendered as RESULTS.md.

``results/summaries/*.json`` keeps what is worth keeping of each run of a command (its
figures, command line, settings, data, machine, versions and date);
``results/references.json`` holds what each reference source reports and where each
number comes from. ``RESULTS.md`` is rendered from the two: one section per source, one
row per figure. From the repository root (``--root`` names another)::

    python -m kdjax.record render     # writes RESULTS.md
    python -m kdjax.record add runs/mnist_kd/results.json --source=r_mnist_notebook \\
        --protocol=full [--note=TEXT]  # distils a results.json into a summary, renders
    python -m kdjax.record check      # exit 1 when RESULTS.md is not what they render

``--protocol`` is ``full``, ``shortened: <what differs>`` or ``stand-in data: <which>``.
A summary (schema ``kdjax.record.summary/1``)::

    {"schema": "kdjax.record.summary/1",
     "source": "r_mnist_notebook",          # a source key of references.json
     "protocol": "shortened", "protocol_note": "4,000 training images",  # not for full
     "command": "python -m experiments.mnist_kd --temperature=3 --alpha=0.7",
     "config": {...},                       # the settings of the run
     "data": {"source": "embedded-sample", "stand_in": false, "train_examples": 4000,
              "test_examples": 1000, "description": "..."},  # or null; "examples" optional
     "runs": {"student_kd": {"epochs": 15, "seeds": [42, 43, 44],
                             "test_accuracy": [94.2, 95.8, 96.0]}},
     "wall_seconds": 221, "machine": "2-core x86-64 CPU", "packages": {"jax": "0.10.2"},
     "date": "2026-12-06", "provenance": "results.json",  # or "transcribed", and then
     "provenance_note": "...", "note": "..."}             # provenance_note is required

A run has ``epochs`` (or null) and optionally ``seeds``, ``per`` (``"seed"`` or
``"fold"``: what its values are one per), ``label``, ``note`` and ``reference_run`` (the
figure run it measures when its name matches none of the figure's ``matches``
patterns); every other key is a metric of :data:`METRICS`: a list of values, one per
seed (or fold), or a stated summary ``{"mean", "n", "std", "each", "decimals",
"each_decimals"}`` that needs ``each``, or ``mean`` and ``n``; given both, ``each`` must
agree with ``mean`` and ``std`` to the stated precision. Percentages are in percent.
The module uses the standard library only: the record renders without JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import math
import statistics
import sys
from pathlib import Path

SUMMARY_SCHEMA = "kdjax.record.summary/1"
REFERENCES_SCHEMA = "kdjax.record.references/1"
RESULTS_SCHEMA = "kdjax.results/1"
PROTOCOLS = ("full", "shortened", "stand-in data")
PROVENANCES = ("results.json", "transcribed")
SUMMARY_DIR = "results/summaries"
REFERENCES_FILE = "results/references.json"
OUTPUT_FILE = "RESULTS.md"
RENDER_HINT = "run `python -m kdjax.record render`"


class RecordError(ValueError):
    """A summary, reference table or results.json that cannot be used (a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    decimals: int  # of a mean and a std
    each_decimals: int  # of one seed's value


METRICS = {
    "test_accuracy": Metric("test accuracy", " %", 2, 2),
    "test_errors": Metric("test errors", " errors", 1, 0),
    "correct": Metric("correct test answers", " correct", 1, 0),
    "label_agreement_first_1000": Metric("agreement", " of 1,000", 1, 0),
    "f1": Metric("F1", " %", 2, 2),
    "macro_f1": Metric("macro-F1", " %", 2, 2),
    "roc_auc": Metric("ROC AUC", " %", 2, 2),
    "balanced_accuracy": Metric("balanced accuracy", " %", 2, 2),
    "mae": Metric("MAE", "", 2, 2),
    "rmse": Metric("RMSE", "", 2, 2),
    "forward_mflops": Metric("forward FLOPs per example", " MFLOP", 3, 3),
}
RUN_FIELDS = {"epochs", "seeds", "per", "label", "note", "reference_run"}
STATED_FIELDS = {"mean", "std", "n", "each", "decimals", "each_decimals"}


# --- validation --------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_date(value) -> bool:
    try:
        return bool(datetime.date.fromisoformat(value))
    except (TypeError, ValueError):
        return False


def _is_machine(value) -> bool:
    # A short description of the hardware, never a host name or a path.
    return _is_text(value) and len(value) <= 80 and "/" not in value


# Each field of a summary: required or not, its test, and what a failed test says.
SUMMARY_FIELDS = {
    "schema": (True, lambda v: v == SUMMARY_SCHEMA, f"is not {SUMMARY_SCHEMA}"),
    "source": (True, _is_text, "is not a source key"),
    "protocol": (True, lambda v: v in PROTOCOLS, f"is not one of: {', '.join(PROTOCOLS)}"),
    "protocol_note": (False, _is_text, "is not a non-empty string"),
    "command": (True, _is_text, "is not a non-empty string"),
    "config": (True, lambda v: isinstance(v, dict), "is not an object"),
    "data": (True, lambda v: v is None or isinstance(v, dict), "is not an object or null"),
    "runs": (True, lambda v: isinstance(v, dict) and bool(v), "is not a non-empty object"),
    "wall_seconds": (True, lambda v: v is None or _is_number(v), "is not a number or null"),
    "machine": (True, _is_machine, "is not a short description (80 characters, no path)"),
    "packages": (True, lambda v: isinstance(v, dict), "is not an object"),
    "date": (True, _is_date, "is not a YYYY-MM-DD date"),
    "provenance": (True, lambda v: v in PROVENANCES, f"is not one of: {', '.join(PROVENANCES)}"),
    "provenance_note": (False, _is_text, "is not a non-empty string"),
    "note": (False, _is_text, "is not a non-empty string"),
}
DATA_FIELDS = ("source", "stand_in", "train_examples", "test_examples")
SOURCE_FIELDS = ("key", "title", "what", "document", "figures")
FIGURE_FIELDS = ("run", "metric", "label", "value", "origin")


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise RecordError(f"{where}: {message}")


def _check_fields(entry: dict, fields, where: str) -> None:
    missing = [field for field in fields if field not in entry]
    _check(not missing, where, f"missing '{missing[0] if missing else ''}'")


def validate_references(references, where: str) -> dict[str, dict]:
    """The sources of a reference table by key, after checking its shape."""
    _check(isinstance(references, dict), where, "expected a JSON object")
    _check(references.get("schema") == REFERENCES_SCHEMA, where, f"not {REFERENCES_SCHEMA}")
    sources = {}
    for index, source in enumerate(references.get("sources") or []):
        at = f"{where}: sources[{index}]"
        _check_fields(source, SOURCE_FIELDS, at)
        _check(source["key"] not in sources, at, f"key '{source['key']}' appears twice")
        _check(source.get("part_of") in (None, *sources), at, "part_of names no earlier source")
        for number, figure in enumerate(source["figures"]):
            _check_fields(figure, FIGURE_FIELDS, f"{at}.figures[{number}]")
            _check(figure["metric"] in METRICS, f"{at}.figures[{number}]", "unknown metric")
        sources[source["key"]] = source
    _check(bool(sources), where, "no sources")
    return sources


def _validate_metric(value, metric: Metric, at: str) -> None:
    if isinstance(value, list):
        _check(bool(value) and all(map(_is_number, value)), at, "expected a list of numbers")
        return
    _check(isinstance(value, dict), at, "expected a list of numbers or a {mean, n, ...} object")
    unknown = sorted(set(value) - STATED_FIELDS)
    _check(not unknown, at, f"unknown field '{unknown[0] if unknown else ''}'")
    each = value.get("each")
    if each is not None:
        _validate_metric(each, metric, f"{at}.each")
    _check(each is not None or {"mean", "n"} <= set(value), at, "needs 'each', or 'mean' and 'n'")
    _check(_is_number(value.get("mean", 0)), at, "'mean' is not a number")
    _check(value.get("std") is None or _is_number(value["std"]), at, "'std' is not a number")
    count = value.get("n", len(each or ()))
    _check(isinstance(count, int) and count >= 1, at, "'n' is not a positive integer")
    if each is None:
        return
    _check(len(each) == count, at, f"'n' is {count} but 'each' has {len(each)} values")
    # Stated figures are rounded: the mean (and std) of the stated values may differ from
    # the stated mean by the two roundings, and no more.
    stats = statistics_of(value, metric)
    tolerance = 0.5 * 10.0**-stats.decimals + 0.5 * 10.0**-stats.each_decimals + 1e-9
    if "mean" in value:
        gap = abs(statistics.fmean(each) - value["mean"])
        _check(gap <= tolerance, at, f"mean {value['mean']} is {gap:.3g} from the mean of 'each'")
    if value.get("std") is not None and count > 1:
        gap = abs(statistics.stdev(each) - value["std"])
        _check(gap <= 2 * tolerance, at, f"std {value['std']} is {gap:.3g} from the std of 'each'")


def validate_summary(summary, where: str, sources: dict[str, dict]) -> None:
    """Raises :class:`RecordError` (one line naming the field) unless ``summary`` follows
    the schema of the module docstring."""
    _check(isinstance(summary, dict), where, "expected a JSON object")
    for field, (required, test, problem) in SUMMARY_FIELDS.items():
        _check(field in summary or not required, where, f"missing '{field}'")
        _check(field not in summary or test(summary[field]), where, f"'{field}' {problem}")
    unknown = sorted(set(summary) - set(SUMMARY_FIELDS))
    _check(not unknown, where, f"unknown field '{unknown[0] if unknown else ''}'")
    _check(summary["source"] in sources, where, f"unknown source '{summary['source']}'")
    stand_in = summary["protocol"] == "stand-in data"
    needs_note = summary["protocol"] != "full" and "protocol_note" not in summary
    _check(not needs_note, where, f"protocol '{summary['protocol']}' needs a protocol_note")
    transcribed = summary["provenance"] == "transcribed"
    _check(not transcribed or "provenance_note" in summary, where, "needs a provenance_note")
    if summary["data"] is not None:
        _check_fields(summary["data"], DATA_FIELDS, f"{where}: data")
        _check(
            summary["data"]["stand_in"] == stand_in,
            f"{where}: data",
            "stand_in must be true exactly when the protocol is 'stand-in data'",
        )
    figure_runs = {figure["run"] for figure in sources[summary["source"]]["figures"]}
    for name, run in summary["runs"].items():
        at = f"{where}: runs.{name}"
        _check(isinstance(run, dict) and "epochs" in run, at, "missing 'epochs'")
        _check(run.get("per", "seed") in ("seed", "fold"), at, "'per' is 'seed' or 'fold'")
        reference = run.get("reference_run")
        _check(reference is None or reference in figure_runs, at, "reference_run is no figure")
        metrics = sorted(set(run) - RUN_FIELDS)
        _check(bool(metrics), at, "no metric")
        for metric in metrics:
            _check(metric in METRICS, at, f"unknown metric '{metric}'")
            _validate_metric(run[metric], METRICS[metric], f"{at}.{metric}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None


def load_record(root: Path) -> tuple[dict[str, dict], list[tuple[str, dict]]]:
    """The sources by key and every ``(relative path, summary)``, validated, in file order."""
    sources = validate_references(_read_json(root / REFERENCES_FILE), REFERENCES_FILE)
    summaries = []
    for path in sorted((root / SUMMARY_DIR).glob("*.json")):
        relative = path.relative_to(root).as_posix()
        summaries.append((relative, _read_json(path)))
        validate_summary(summaries[-1][1], relative, sources)
    return sources, summaries


# --- rendering ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Statistics:
    mean: float
    std: float | None
    count: int
    each: list | None
    decimals: int
    each_decimals: int


def statistics_of(value, metric: Metric) -> Statistics:
    """Mean, sample std, count and values of a metric (a list or a stated summary)."""
    stated = value if isinstance(value, dict) else {"each": value}
    each, count = stated.get("each"), stated.get("n", len(stated.get("each") or ()))
    computed = "mean" not in stated and count > 1
    return Statistics(
        mean=stated["mean"] if "mean" in stated else statistics.fmean(each),
        std=statistics.stdev(each) if computed else stated.get("std"),
        count=count,
        each=each,
        decimals=stated.get("decimals", metric.decimals),
        each_decimals=stated.get("each_decimals", metric.each_decimals),
    )


def describe(value, metric: Metric, per: str = "seed") -> str:
    """``"98.07 ± 0.20 % (n=3): 97.86, 98.26, 98.09"``; one value as ``"99.15 % (n=1)"``."""
    stats = statistics_of(value, metric)
    counted = f"(n={stats.count}{' folds' if per == 'fold' else ''})"
    if stats.count == 1:
        return f"{stats.mean:,.{stats.each_decimals}f}{metric.unit} {counted}"
    spread = "" if stats.std is None else f" ± {stats.std:,.{stats.decimals}f}"
    text = f"{stats.mean:,.{stats.decimals}f}{spread}{metric.unit} {counted}"
    if stats.each is None:
        return text
    return text + ": " + ", ".join(f"{v:,.{stats.each_decimals}f}" for v in stats.each)


def figure_run_of(name: str, run: dict, source: dict) -> str | None:
    """The figure run a summary's run measures: its ``reference_run``, or the first figure
    whose ``matches`` patterns (by default its run) match the run's name."""
    if "reference_run" in run:
        return run["reference_run"]
    for figure in source["figures"]:
        if any(fnmatch.fnmatchcase(name, p) for p in figure.get("matches", [figure["run"]])):
            return figure["run"]
    return None


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _run_cells(summary: dict) -> tuple[str, ...]:
    note = summary.get("protocol_note")
    protocol = f"**{summary['protocol']}**" + (f": {note}" if note else "")
    return protocol, f"`{summary['command']}`", summary["date"], summary["machine"]


def _source_rows(source: dict, summaries: list[tuple[str, dict]]) -> tuple[list[str], int]:
    """One source's table rows, and how many of its figures have a kdjax row. A run that
    measures none of the source's figures gets a row of its own, with all its metrics."""
    rows, measured, shown = [], 0, set()
    for figure in source["figures"]:
        metric = METRICS[figure["metric"]]
        reported = "—" if figure["value"] is None else f"{figure['value']}{metric.unit}"
        reported += f" ({figure['origin']})"
        label = f"{figure['label']}: {metric.label}"
        found = [
            (path, name, run, summary)
            for path, summary in summaries
            for name, run in summary["runs"].items()
            if figure_run_of(name, run, source) == figure["run"] and figure["metric"] in run
        ]
        found.sort(key=lambda item: PROTOCOLS.index(item[3]["protocol"]))
        measured += bool(found)
        if not found:
            rows.append(_row(label, reported, "—", "**not yet run**", "—", "—", "—"))
        for path, name, run, summary in found:
            shown.add((path, name))
            # A run found by a wildcard pattern (a sweep's cell) is named in its row.
            named_by_figure = name == figure["run"] or name in figure.get("matches", ())
            suffix = run.get("label", None if named_by_figure else f"`{name}`")
            named = f"{label}, {suffix}" if suffix else label
            kdjax = describe(run[figure["metric"]], metric, run.get("per", "seed"))
            rows.append(_row(named, reported, kdjax, *_run_cells(summary)))
    for path, summary in summaries:
        for name, run in summary["runs"].items():
            if (path, name) in shown:
                continue
            per = run.get("per", "seed")
            metrics = [key for key in run if key not in RUN_FIELDS]
            kdjax = "; ".join(
                f"{METRICS[k].label} {describe(run[k], METRICS[k], per)}" for k in metrics
            )
            unreported = "— (not reported by the source)"
            rows.append(_row(run.get("label", name), unreported, kdjax, *_run_cells(summary)))
    return rows, measured


def _run_notes(summaries: list[tuple[str, dict]]) -> list[str]:
    """One line per run: its file, data, wall time, versions, provenance and note."""
    lines = []
    for path, summary in summaries:
        parts, data = [f"`{path}`"], summary["data"]
        if data is not None:
            sizes = "/".join(f"{data[k]:,}" if data[k] else "—" for k in DATA_FIELDS[2:])
            described = [f"data: {data['source']}", f"train/test {sizes}"]
            if data.get("examples"):
                described.append(f"{data['examples']:,} examples")
            if data.get("description"):
                described.append(data["description"])
            parts.append(", ".join(described))
        if summary["wall_seconds"] is not None:
            parts.append(f"wall time {summary['wall_seconds']:,} s")
        if summary["packages"]:
            parts.append(", ".join(f"{k} {v}" for k, v in sorted(summary["packages"].items())))
        if summary["provenance"] == "transcribed":
            parts.append(f"transcribed from {summary['provenance_note']}")
        parts += [summary["note"]] if "note" in summary else []
        lines.append("- " + "; ".join(part.rstrip(".") for part in parts) + ".")
    return lines


HEADER = """# Results record

Rendered by `python -m kdjax.record render` from `results/summaries/*.json` (one file per
recorded run) and `results/references.json` (what each source reports): edit those, not
this file; `python -m kdjax.record check` fails when they disagree. One section per
reference source and one row per figure: the source's number and where it comes from;
kdjax's mean ± sample std (n) and every seed's (or fold's) value; the protocol —
**full**, **shortened** (what differs is said), **stand-in data** (which is said) or
**not yet run**; the command, date and machine of the run. Rows "not reported by the
source" are kdjax's own arms. A transcribed run's date is that of the commit that
recorded its figures."""


def render(sources: dict[str, dict], summaries: list[tuple[str, dict]]) -> str:
    """RESULTS.md for ``sources`` and ``summaries``. Within a figure, full runs come
    first, then shortened ones, then runs on stand-in data; the newest first in each."""
    ordered = sorted(summaries, key=lambda item: item[0])
    ordered.sort(key=lambda item: item[1]["date"], reverse=True)
    overview = [
        "| source | figures | with a kdjax run | recorded runs |",
        "| --- | --- | --- | --- |",
    ]
    sections = []
    for key, source in sources.items():
        own = [item for item in ordered if item[1]["source"] == key]
        rows, measured = _source_rows(source, own)
        counts = (len(source["figures"]), measured, len(own))
        overview.append(_row(source["title"], *map(str, counts)))
        heading = "###" if source.get("part_of") else "##"
        section = [
            f"{heading} {source['title']}",
            "",
            f"{source['what']} Source: `{source['document']}`.",
            "",
        ]
        section += ["| figure | the source reports | kdjax | protocol | command | date | machine |"]
        section += ["| --- | --- | --- | --- | --- | --- | --- |", *rows]
        notes = [f"- {f['label']}: {f['note']}." for f in source["figures"] if f.get("note")]
        section += ["", "About the source's figures:", "", *notes] if notes else []
        section += ["", "Runs:", "", *_run_notes(own)] if own else []
        sections.append("\n".join(section))
    return "\n\n".join([HEADER, "\n".join(overview), *sections]) + "\n"


# --- distilling a results.json -----------------------------------------------------------

PERCENT_SCORES = {
    "accuracy": "test_accuracy",
    "f1": "f1",
    "macro_f1": "macro_f1",
    "roc_auc": "roc_auc",
    "balanced_accuracy": "balanced_accuracy",
}


def _percent(values) -> list[float]:
    return [round(100.0 * value, 2) for value in values]


def _scores(scores: dict) -> dict:
    """Per-seed (or per-fold) metrics from a command's ``{name: {"each": [...]}}`` scores."""
    metrics = {
        PERCENT_SCORES[k]: _percent(v["each"]) for k, v in scores.items() if k in PERCENT_SCORES
    }
    metrics.update(
        {k: [round(x, 4) for x in scores[k]["each"]] for k in ("mae", "rmse") if k in scores}
    )
    return metrics


def distil_runs(results: dict) -> dict:
    """A summary's ``runs`` from a results.json: each run's epochs, seeds and metrics, with
    the counts of ``hinton_mnist`` and ``mnist_mlp_kd``, the cells of ``mnist_sweep``, the
    per-fold scores of ``biovid_kd`` and the per-seed scores of ``mhist_kd``."""
    command, study, config = (
        results.get("command"),
        results.get("study") or {},
        results.get("config") or {},
    )
    if command == "mhist_kd":  # scored per cell (teacher, student_kd, T=2, ...) over seeds
        return {
            cell: {
                "epochs": config.get("teacher_epochs" if cell == "teacher" else "epochs"),
                **_scores(scores),
            }
            for cell, scores in study.get("summary", {}).items()
        }
    runs = {}
    for name, entry in (results.get("runs") or {}).items():
        run = {"epochs": entry.get("epochs"), "seeds": entry.get("seeds")}
        if entry.get("scores"):
            run.update(per="fold", **_scores(entry["scores"]))
        else:
            run["test_accuracy"] = _percent(entry["test_accuracy"])
        runs[name] = {key: value for key, value in run.items() if value is not None}
    for key, metric in (("test_errors", "test_errors"), ("correct_out_of_test", "correct")):
        for name, counts in study.get(key, {}).items():
            runs[name][metric] = counts["each"]
    agreement = study.get("teacher_first_1000_train_label_agreement")
    if agreement is not None and ((results.get("data") or {}).get("train_examples") or 0) >= 1000:
        runs["teacher"]["label_agreement_first_1000"] = [round(1000 * agreement)]
    if command == "mnist_sweep" and "student_sweep" in runs:
        epochs = runs.pop("student_sweep")["epochs"]
        for cell in study.get("cells", []):
            name = f"student_kd_T{cell['temperature']:g}_alpha{cell['alpha']:g}"
            runs[name] = {"epochs": epochs, "test_accuracy": _percent(cell["accuracies"])}
    return runs


def machine_of(environment: dict) -> str:
    """A short description of the machine a results.json was measured on."""
    if environment.get("backend", "cpu") != "cpu":
        count, kind = environment.get("device_count", 1), environment.get("device_kind", "")
        return f"{count} × {kind or 'accelerator'}"
    cores = environment.get("cpu_cores")
    return " ".join(
        filter(None, (cores and f"{cores}-core", environment.get("architecture"), "CPU"))
    )


def summary_from_results(results, *, source: str, protocol: str, **given) -> dict:
    """A summary of ``results`` (a parsed results.json). ``protocol`` is ``"full"`` or
    ``"<label>: <what differs>"``; ``given`` may hold ``note``, and ``command``,
    ``machine`` and ``date`` where the results file does not record them."""
    _check(
        isinstance(results, dict) and results.get("schema") == RESULTS_SCHEMA,
        "results.json",
        f"schema is not {RESULTS_SCHEMA}",
    )
    label, _, protocol_note = (part.strip() for part in protocol.partition(":"))
    command = given.get("command") or results.get("command_line")
    _check(
        bool(command), "results.json", "no command line recorded; pass --command='python -m ...'"
    )
    environment, data = results.get("environment") or {}, results.get("data")
    if data is not None:
        data = {
            "source": data.get("source") or "unknown",
            "stand_in": label == "stand-in data",
            "train_examples": data.get("train_examples"),
            "test_examples": data.get("test_examples"),
            **({"examples": data["samples"]} if "samples" in data else {}),
            **({"description": data["notice"]} if data.get("notice") else {}),
        }
    optional = {"protocol_note": protocol_note, "note": given.get("note")}
    return {
        "schema": SUMMARY_SCHEMA,
        "source": source,
        "protocol": label,
        "command": command,
        "config": results.get("config") or {},
        "data": data,
        "runs": distil_runs(results),
        "wall_seconds": results.get("wall_seconds"),
        "machine": given.get("machine") or machine_of(environment),
        "packages": {k: v for k, v in (environment.get("packages") or {}).items() if v},
        "date": given.get("date") or results.get("date") or datetime.date.today().isoformat(),
        "provenance": "results.json",
        **{key: value for key, value in optional.items() if value},
    }


# --- commands ----------------------------------------------------------------------------


def command_render(root: Path) -> Path:
    """Writes RESULTS.md under ``root`` from its summaries."""
    output = root / OUTPUT_FILE
    output.write_text(render(*load_record(root)), encoding="utf-8")
    return output


def command_check(root: Path) -> str | None:
    """None when RESULTS.md is what the summaries render, else what differs (one line)."""
    expected = render(*load_record(root)).splitlines()
    output = root / OUTPUT_FILE
    if not output.is_file():
        return f"{OUTPUT_FILE} is missing; {RENDER_HINT}"
    actual = output.read_text(encoding="utf-8").splitlines()
    pairs = zip(actual + [None] * len(expected), expected + [None] * len(actual), strict=True)
    line = next((number for number, (a, b) in enumerate(pairs, 1) if a != b), None)
    return (
        line
        and f"{OUTPUT_FILE} differs from what {SUMMARY_DIR} renders at line {line}; {RENDER_HINT}"
    )


def command_add(root: Path, results_path: Path, *, source: str, protocol: str, **given) -> Path:
    """Writes the summary of ``results_path``, renders RESULTS.md, returns the summary's path."""
    sources = validate_references(_read_json(root / REFERENCES_FILE), REFERENCES_FILE)
    results = _read_json(results_path)
    written = datetime.date.fromtimestamp(results_path.stat().st_mtime).isoformat()
    recorded = isinstance(results, dict) and results.get("date")
    given["date"] = given.get("date") or recorded or written
    summary = summary_from_results(results, source=source, protocol=protocol, **given)
    stem = f"{summary['date']}-{source}-{results.get('command') or 'run'}"
    path, number = root / SUMMARY_DIR / f"{stem}.json", 1
    while path.exists():
        number += 1
        path = path.with_name(f"{stem}-{number}.json")
    validate_summary(summary, path.relative_to(root).as_posix(), sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    command_render(root)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdjax.record", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root")
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("render", help="write RESULTS.md from the summaries")
    commands.add_parser("check", help="exit 1 when RESULTS.md is not what the summaries render")
    add = commands.add_parser("add", help="distil a results.json into a summary, then render")
    add.add_argument("results", type=Path, help="a results.json written by a command")
    add.add_argument("--source", required=True, help="the reference source's key")
    add.add_argument(
        "--protocol", required=True, help="full | shortened: WHAT | stand-in data: WHICH"
    )
    for flag, meaning in (
        ("--note", "a note shown with the run"),
        ("--command", "the command line, where results.json lacks it"),
        ("--machine", "a short description, instead of the recorded one"),
        ("--date", "YYYY-MM-DD, instead of the results file's"),
    ):
        add.add_argument(flag, help=meaning)
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "render":
            print(f"wrote {command_render(arguments.root)}")
        elif arguments.action == "check":
            difference = command_check(arguments.root)
            if difference:
                print(f"error: {difference}", file=sys.stderr)
                return 1
            print(f"{OUTPUT_FILE} is what {SUMMARY_DIR} renders")
        else:
            given = {k: getattr(arguments, k) for k in ("note", "command", "machine", "date")}
            path = command_add(
                arguments.root,
                arguments.results,
                source=arguments.source,
                protocol=arguments.protocol,
                **given,
            )
            print(f"wrote {path} and {arguments.root / OUTPUT_FILE}")
    except (RecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
