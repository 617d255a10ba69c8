"""The record's three commands: render, check and add."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from kdjax.record.ingest import summary_from_results
from kdjax.record.render import render
from kdjax.record.schema import (
    OUTPUT_FILE,
    REFERENCES_FILE,
    RENDER_HINT,
    SUMMARY_DIR,
    RecordError,
    load_record,
    read_json,
    validate_references,
    validate_summary,
)


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
    sources = validate_references(read_json(root / REFERENCES_FILE), REFERENCES_FILE)
    results = read_json(results_path)
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
        prog="python -m kdjax.record",
        description="The results record: render, check, add.",
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
