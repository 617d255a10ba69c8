"""A summary distilled from a command's results.json: its runs' per-seed figures, the
command line, the machine and the versions.
"""

from __future__ import annotations

import datetime
import re

from kdjax.record.schema import ABSOLUTE_PATH, RESULTS_SCHEMA, SUMMARY_SCHEMA, check

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


FLAG_PATH = re.compile(r"--(\w+)=(?:/|~/)\S*")


def portable(value, name: str = "path"):
    """``value`` with the absolute paths of the machine that ran it replaced by
    placeholders named after where they stand (``--data_dir=DATA_DIR``, a config's
    ``"workdir": "WORKDIR"``): a summary is committed, and read on other machines."""
    if isinstance(value, dict):
        return {key: portable(item, key) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, name) for item in value]
    if not isinstance(value, str):
        return value
    value = FLAG_PATH.sub(lambda match: f"--{match[1]}={match[1].upper()}", value)
    return ABSOLUTE_PATH.sub(name.upper(), value)


def summary_from_results(results, *, source: str, protocol: str, **given) -> dict:
    """A summary of ``results`` (a parsed results.json). ``protocol`` is ``"full"`` or
    ``"<label>: <what differs>"``; ``given`` may hold ``note``, and ``command``,
    ``machine`` and ``date`` where the results file does not record them."""
    check(
        isinstance(results, dict) and results.get("schema") == RESULTS_SCHEMA,
        "results.json",
        f"schema is not {RESULTS_SCHEMA}",
    )
    label, _, protocol_note = (part.strip() for part in protocol.partition(":"))
    command = portable(given.get("command") or results.get("command_line"), "path")
    check(bool(command), "results.json", "no command line recorded; pass --command='python -m ...'")
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
        "config": portable(results.get("config") or {}),
        "data": portable(data, "data_dir"),
        "runs": distil_runs(results),
        "wall_seconds": results.get("wall_seconds"),
        "machine": given.get("machine") or machine_of(environment),
        "packages": {k: v for k, v in (environment.get("packages") or {}).items() if v},
        "date": given.get("date") or results.get("date") or datetime.date.today().isoformat(),
        "provenance": "results.json",
        **{key: value for key, value in optional.items() if value},
    }
