"""The record's files and their schemas: what a summary and the references hold, checked
field by field with one-line errors.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import statistics
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


# A path: a root ("/", "~/" or a drive) with at least one character after it, so that a
# slash standing alone ("4,000 train / 1,000 test") is text, not a path.
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/|~/|[A-Za-z]:\\)[^\s()'\"]+")


def _has_no_machine_path(value) -> bool:
    # A summary is committed: absolute paths of the machine that ran it stay out of it.
    return not ABSOLUTE_PATH.search(json.dumps(value))


def _is_machine(value) -> bool:
    # A short description of the hardware, never a host name or a path.
    return _is_text(value) and len(value) <= 80 and "/" not in value


# Each field of a summary: required or not, its test, and what a failed test says.
SUMMARY_FIELDS = {
    "schema": (True, lambda v: v == SUMMARY_SCHEMA, f"is not {SUMMARY_SCHEMA}"),
    "source": (True, _is_text, "is not a source key"),
    "protocol": (True, lambda v: v in PROTOCOLS, f"is not one of: {', '.join(PROTOCOLS)}"),
    "protocol_note": (False, _is_text, "is not a non-empty string"),
    "command": (
        True,
        lambda v: _is_text(v) and _has_no_machine_path(v),
        "is not a command line (no absolute path: a placeholder such as DATA_DIR)",
    ),
    "config": (
        True,
        lambda v: isinstance(v, dict) and _has_no_machine_path(v),
        "is not an object (no absolute path: a placeholder such as DATA_DIR)",
    ),
    "data": (
        True,
        lambda v: v is None or (isinstance(v, dict) and _has_no_machine_path(v)),
        "is not an object or null (no absolute path: a placeholder such as DATA_DIR)",
    ),
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


def check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise RecordError(f"{where}: {message}")


def _check_fields(entry: dict, fields, where: str) -> None:
    missing = [field for field in fields if field not in entry]
    check(not missing, where, f"missing '{missing[0] if missing else ''}'")


def validate_references(references, where: str) -> dict[str, dict]:
    """The sources of a reference table by key, after checking its shape."""
    check(isinstance(references, dict), where, "expected a JSON object")
    check(references.get("schema") == REFERENCES_SCHEMA, where, f"not {REFERENCES_SCHEMA}")
    sources = {}
    for index, source in enumerate(references.get("sources") or []):
        at = f"{where}: sources[{index}]"
        _check_fields(source, SOURCE_FIELDS, at)
        check(source["key"] not in sources, at, f"key '{source['key']}' appears twice")
        check(source.get("part_of") in (None, *sources), at, "part_of names no earlier source")
        for number, figure in enumerate(source["figures"]):
            _check_fields(figure, FIGURE_FIELDS, f"{at}.figures[{number}]")
            check(figure["metric"] in METRICS, f"{at}.figures[{number}]", "unknown metric")
        sources[source["key"]] = source
    check(bool(sources), where, "no sources")
    return sources


def _validate_metric(value, metric: Metric, at: str) -> None:
    if isinstance(value, list):
        check(bool(value) and all(map(_is_number, value)), at, "expected a list of numbers")
        return
    check(isinstance(value, dict), at, "expected a list of numbers or a {mean, n, ...} object")
    unknown = sorted(set(value) - STATED_FIELDS)
    check(not unknown, at, f"unknown field '{unknown[0] if unknown else ''}'")
    each = value.get("each")
    if each is not None:
        _validate_metric(each, metric, f"{at}.each")
    check(each is not None or {"mean", "n"} <= set(value), at, "needs 'each', or 'mean' and 'n'")
    check(_is_number(value.get("mean", 0)), at, "'mean' is not a number")
    check(value.get("std") is None or _is_number(value["std"]), at, "'std' is not a number")
    count = value.get("n", len(each or ()))
    check(isinstance(count, int) and count >= 1, at, "'n' is not a positive integer")
    if each is None:
        return
    check(len(each) == count, at, f"'n' is {count} but 'each' has {len(each)} values")
    # Stated figures are rounded: the mean (and std) of the stated values may differ from
    # the stated mean by the two roundings, and no more.
    stats = statistics_of(value, metric)
    tolerance = 0.5 * 10.0**-stats.decimals + 0.5 * 10.0**-stats.each_decimals + 1e-9
    if "mean" in value:
        gap = abs(statistics.fmean(each) - value["mean"])
        check(gap <= tolerance, at, f"mean {value['mean']} is {gap:.3g} from the mean of 'each'")
    if value.get("std") is not None and count > 1:
        gap = abs(statistics.stdev(each) - value["std"])
        check(gap <= 2 * tolerance, at, f"std {value['std']} is {gap:.3g} from the std of 'each'")


def validate_summary(summary, where: str, sources: dict[str, dict]) -> None:
    """Raises :class:`RecordError` (one line naming the field) unless ``summary`` follows
    the schema of the module docstring."""
    check(isinstance(summary, dict), where, "expected a JSON object")
    for field, (required, test, problem) in SUMMARY_FIELDS.items():
        check(field in summary or not required, where, f"missing '{field}'")
        check(field not in summary or test(summary[field]), where, f"'{field}' {problem}")
    unknown = sorted(set(summary) - set(SUMMARY_FIELDS))
    check(not unknown, where, f"unknown field '{unknown[0] if unknown else ''}'")
    check(summary["source"] in sources, where, f"unknown source '{summary['source']}'")
    stand_in = summary["protocol"] == "stand-in data"
    needs_note = summary["protocol"] != "full" and "protocol_note" not in summary
    check(not needs_note, where, f"protocol '{summary['protocol']}' needs a protocol_note")
    transcribed = summary["provenance"] == "transcribed"
    check(not transcribed or "provenance_note" in summary, where, "needs a provenance_note")
    if summary["data"] is not None:
        _check_fields(summary["data"], DATA_FIELDS, f"{where}: data")
        check(
            summary["data"]["stand_in"] == stand_in,
            f"{where}: data",
            "stand_in must be true exactly when the protocol is 'stand-in data'",
        )
    figure_runs = {figure["run"] for figure in sources[summary["source"]]["figures"]}
    for name, run in summary["runs"].items():
        at = f"{where}: runs.{name}"
        check(isinstance(run, dict) and "epochs" in run, at, "missing 'epochs'")
        check(run.get("per", "seed") in ("seed", "fold"), at, "'per' is 'seed' or 'fold'")
        reference = run.get("reference_run")
        check(reference is None or reference in figure_runs, at, "reference_run is no figure")
        metrics = sorted(set(run) - RUN_FIELDS)
        check(bool(metrics), at, "no metric")
        for metric in metrics:
            check(metric in METRICS, at, f"unknown metric '{metric}'")
            _validate_metric(run[metric], METRICS[metric], f"{at}.{metric}")


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None


def load_record(root: Path) -> tuple[dict[str, dict], list[tuple[str, dict]]]:
    """The sources by key and every ``(relative path, summary)``, validated, in file order."""
    sources = validate_references(read_json(root / REFERENCES_FILE), REFERENCES_FILE)
    summaries = []
    for path in sorted((root / SUMMARY_DIR).glob("*.json")):
        relative = path.relative_to(root).as_posix()
        summaries.append((relative, read_json(path)))
        validate_summary(summaries[-1][1], relative, sources)
    return sources, summaries


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
