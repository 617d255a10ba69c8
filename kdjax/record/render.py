"""RESULTS.md from the references and the summaries: one section per source, one row
per figure, with the statistics of every run.
"""

from __future__ import annotations

import fnmatch

from kdjax.record.schema import DATA_FIELDS, METRICS, PROTOCOLS, RUN_FIELDS, Metric, statistics_of


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
source" are kdjax's own arms. In the commands, upper-case names stand for a path
(`DATA_DIR`: the folder holding the data sets, `WORKDIR`: the run's workdir). A
transcribed run's date is that of the commit that recorded its figures."""


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
