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

from kdjax.record.commands import command_add, command_check, command_render, main
from kdjax.record.ingest import distil_runs, summary_from_results
from kdjax.record.render import describe, render
from kdjax.record.schema import (
    METRICS,
    OUTPUT_FILE,
    PROTOCOLS,
    REFERENCES_FILE,
    REFERENCES_SCHEMA,
    SUMMARY_DIR,
    SUMMARY_SCHEMA,
    RecordError,
    load_record,
    statistics_of,
    validate_references,
    validate_summary,
)

__all__ = [
    "METRICS",
    "OUTPUT_FILE",
    "PROTOCOLS",
    "REFERENCES_FILE",
    "REFERENCES_SCHEMA",
    "SUMMARY_DIR",
    "SUMMARY_SCHEMA",
    "RecordError",
    "command_add",
    "command_check",
    "command_render",
    "describe",
    "distil_runs",
    "load_record",
    "main",
    "render",
    "statistics_of",
    "summary_from_results",
    "validate_references",
    "validate_summary",
]
