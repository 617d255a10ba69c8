"""The results record (kdjax.record): the summary schema, RESULTS.md rendered from
summaries, `check` against edits and drift, and `add` from a command's results.json."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdjax import record

REPOSITORY = Path(__file__).resolve().parents[1]

REFERENCES = {
    "schema": record.REFERENCES_SCHEMA,
    "sources": [
        {
            "key": "toy_notebook",
            "title": "A toy notebook",
            "what": "A teacher and two students.",
            "document": "toy.txt",
            "figures": [
                {
                    "run": "teacher",
                    "metric": "test_accuracy",
                    "label": "teacher",
                    "value": "98.75",
                    "origin": "printed",
                },
                {
                    "run": "student_kd",
                    "metric": "test_accuracy",
                    "label": "distilled student",
                    "value": "98.11",
                    "origin": "printed",
                    "matches": ["student_kd", "student_kd_T*"],
                },
                {
                    "run": "student_hint",
                    "metric": "test_accuracy",
                    "label": "hint student",
                    "value": None,
                    "origin": "not printed",
                },
            ],
        },
        {
            "key": "toy_paper",
            "title": "A toy paper",
            "what": "Errors of a teacher.",
            "document": "paper.pdf",
            "figures": [
                {
                    "run": "teacher",
                    "metric": "test_errors",
                    "label": "teacher",
                    "value": "67",
                    "origin": "published",
                },
            ],
        },
    ],
}


def toy_summary(**changes) -> dict:
    summary = {
        "schema": record.SUMMARY_SCHEMA,
        "source": "toy_notebook",
        "protocol": "full",
        "command": "python -m experiments.mnist_kd --data_dir=MNIST_DIR",
        "config": {"seeds": 3},
        "data": {
            "source": "idx",
            "stand_in": False,
            "train_examples": 60000,
            "test_examples": 10000,
        },
        "runs": {
            "teacher": {"epochs": 5, "test_accuracy": [99.15]},
            "student_kd": {
                "epochs": 3,
                "seeds": [42, 43, 44],
                "test_accuracy": [97.86, 98.26, 98.09],
            },
            "student_scratch": {"epochs": 3, "test_accuracy": [98.04, 98.21, 97.97]},
        },
        "wall_seconds": 1212,
        "machine": "2-core x86-64 CPU",
        "packages": {"jax": "0.10.2"},
        "date": "2026-12-06",
        "provenance": "results.json",
    }
    summary.update(changes)
    return summary


def write_record(root: Path, summaries: dict[str, dict]) -> Path:
    (root / record.SUMMARY_DIR).mkdir(parents=True)
    (root / record.REFERENCES_FILE).write_text(json.dumps(REFERENCES))
    for name, summary in summaries.items():
        (root / record.SUMMARY_DIR / name).write_text(json.dumps(summary))
    return root


def rendered(root: Path) -> str:
    return record.render(*record.load_record(root))


def test_render_gives_each_figure_a_row_with_mean_std_n_and_every_seed(tmp_path):
    text = rendered(write_record(tmp_path, {"run.json": toy_summary()}))
    # mean 98.07, sample std sqrt((0.21² + 0.19² + 0.02²) / 2) = 0.2007
    assert (
        "| distilled student: test accuracy | 98.11 % (printed) | 98.07 ± 0.20 % (n=3): 97.86, "
        "98.26, 98.09 | **full** | `python -m experiments.mnist_kd --data_dir=MNIST_DIR` | "
        "2026-12-06 | 2-core x86-64 CPU |"
    ) in text
    assert "| teacher: test accuracy | 98.75 % (printed) | 99.15 % (n=1) | **full** |" in text


def test_figures_without_a_run_are_not_yet_run_and_extra_runs_are_marked(tmp_path):
    text = rendered(write_record(tmp_path, {"run.json": toy_summary()}))
    assert (
        "| hint student: test accuracy | — (not printed) | — | **not yet run** | — | — | — |"
        in text
    )
    assert "| teacher: test errors | 67 errors (published) | — | **not yet run** |" in text
    assert (
        "| student_scratch | — (not reported by the source) | test accuracy 98.07 ± 0.12 %" in text
    )
    assert "## A toy notebook" in text and "## A toy paper" in text


def test_a_stated_mean_without_seeds_renders_as_stated(tmp_path):
    runs = {"student_kd": {"epochs": 3, "test_accuracy": {"mean": 98.15, "std": 0.11, "n": 5}}}
    text = rendered(write_record(tmp_path, {"run.json": toy_summary(runs=runs)}))
    assert "| 98.15 ± 0.11 % (n=5) |" in text


def test_rows_of_a_figure_list_full_runs_before_shortened_and_stand_in_ones(tmp_path):
    shortened = toy_summary(
        protocol="shortened", protocol_note="4,000 training images", date="2026-12-07"
    )
    stand_in = toy_summary(
        protocol="stand-in data", protocol_note="synthetic digits", date="2026-12-08"
    )
    stand_in["data"] = {**stand_in["data"], "stand_in": True}
    text = rendered(
        write_record(tmp_path, {"a.json": stand_in, "b.json": shortened, "c.json": toy_summary()})
    )
    rows = [line for line in text.splitlines() if line.startswith("| distilled student")]
    assert [row.split(" | ")[3] for row in rows] == [
        "**full**",
        "**shortened**: 4,000 training images",
        "**stand-in data**: synthetic digits",
    ]


def test_a_run_found_by_a_pattern_is_named_in_its_row(tmp_path):
    runs = {"student_kd_T4": {"epochs": 3, "test_accuracy": [98.0, 98.2]}}
    text = rendered(write_record(tmp_path, {"run.json": toy_summary(runs=runs)}))
    assert "| distilled student: test accuracy, `student_kd_T4` | 98.11 % (printed) | 98.10" in text


def test_check_passes_after_render_and_fails_when_results_md_is_edited(tmp_path, capsys):
    root = write_record(tmp_path, {"run.json": toy_summary()})
    assert record.main(["--root", str(root), "render"]) == 0
    assert record.main(["--root", str(root), "check"]) == 0
    output = root / record.OUTPUT_FILE
    output.write_text(output.read_text().replace("98.07 ± 0.20", "98.17 ± 0.20"))
    capsys.readouterr()
    assert record.main(["--root", str(root), "check"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "RESULTS.md differs" in error and "render" in error


def test_check_fails_when_a_summary_changes_or_results_md_is_missing(tmp_path):
    root = write_record(tmp_path, {"run.json": toy_summary()})
    assert "missing" in record.command_check(root)
    record.command_render(root)
    changed = toy_summary()
    changed["runs"]["teacher"]["test_accuracy"] = [99.16]
    (root / record.SUMMARY_DIR / "run.json").write_text(json.dumps(changed))
    assert "differs" in record.command_check(root)
    (root / record.SUMMARY_DIR / "more.json").write_text(json.dumps(toy_summary()))
    record.command_render(root)
    assert record.command_check(root) is None
    (root / record.SUMMARY_DIR / "more.json").unlink()
    assert "differs" in record.command_check(root)


def _broken(change):
    summary = toy_summary()
    change(summary)
    return summary


SCHEMA_ERRORS = {
    "missing 'machine'": lambda s: s.pop("machine"),
    "unknown field 'seed_count'": lambda s: s.update(seed_count=3),
    "'protocol' is not one of": lambda s: s.update(protocol="partial"),
    "protocol 'shortened' needs a protocol_note": lambda s: s.update(protocol="shortened"),
    "'machine' is not a short description": lambda s: s.update(machine="/home/me/box"),
    "'date' is not a YYYY-MM-DD date": lambda s: s.update(date="6 Dec 2026"),
    "unknown source 'toy_book'": lambda s: s.update(source="toy_book"),
    "needs a provenance_note": lambda s: s.update(provenance="transcribed"),
    "stand_in must be true exactly when": lambda s: s.update(
        protocol="stand-in data", protocol_note="synthetic"
    ),
    "runs.teacher: unknown metric 'top5'": lambda s: s["runs"]["teacher"].update(top5=[99.9]),
    "runs.teacher: missing 'epochs'": lambda s: s["runs"]["teacher"].pop("epochs"),
    "runs.teacher: reference_run is no figure": lambda s: s["runs"]["teacher"].update(
        reference_run="assistant"
    ),
    "test_accuracy: expected a list of numbers": lambda s: s["runs"]["teacher"].update(
        test_accuracy=["99.15"]
    ),
    "test_accuracy: mean 98.2 is 0.13 from the mean of 'each'": lambda s: s["runs"][
        "student_kd"
    ].update(test_accuracy={"mean": 98.2, "n": 3, "each": [97.86, 98.26, 98.09]}),
    "test_accuracy: 'n' is 4 but 'each' has 3 values": lambda s: s["runs"]["student_kd"].update(
        test_accuracy={"mean": 98.07, "n": 4, "each": [97.86, 98.26, 98.09]}
    ),
    "test_accuracy: needs 'each', or 'mean' and 'n'": lambda s: s["runs"]["teacher"].update(
        test_accuracy={"mean": 99.15}
    ),
}


@pytest.mark.parametrize("message", sorted(SCHEMA_ERRORS))
def test_a_summary_that_breaks_the_schema_is_refused_in_one_line(message):
    sources = record.validate_references(REFERENCES, "references.json")
    with pytest.raises(record.RecordError) as error:
        record.validate_summary(_broken(SCHEMA_ERRORS[message]), "run.json", sources)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("run.json: ")


def test_the_commands_report_a_broken_summary_as_one_error_line(tmp_path, capsys):
    root = write_record(tmp_path, {"run.json": _broken(lambda s: s.update(date="yesterday"))})
    assert record.main(["--root", str(root), "render"]) == 1
    error = capsys.readouterr().err
    assert error == "error: results/summaries/run.json: 'date' is not a YYYY-MM-DD date\n"
    (root / record.SUMMARY_DIR / "run.json").write_text("{not json")
    assert record.main(["--root", str(root), "check"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def results_json(command="mnist_kd", **changes) -> dict:
    """A small results.json in the layout of experiments/report.py."""
    document = {
        "schema": "kdjax.results/1",
        "command": command,
        "command_line": f"python -m experiments.{command} --epochs=1",
        "date": "2026-12-09",
        "config": {"epochs": 1, "seeds": 2},
        "data": {
            "name": "mnist",
            "source": "idx",
            "train_examples": 60000,
            "test_examples": 10000,
            "notice": None,
        },
        "environment": {
            "packages": {"jax": "0.10.2", "kdjax": "0.1.0", "flax": None},
            "backend": "cpu",
            "architecture": "x86_64",
            "cpu_cores": 2,
            "device_kind": "cpu",
            "device_count": 1,
        },
        "runs": {
            "teacher": {"epochs": 1, "seeds": [42], "test_accuracy": [0.9912]},
            "student_kd": {"epochs": 1, "seeds": [42, 43], "test_accuracy": [0.9786, 0.9826]},
        },
        "study": {"teacher_first_1000_train_label_agreement": 0.99},
        "wall_seconds": 61.5,
    }
    document.update(changes)
    return document


def test_add_distils_a_results_json_into_a_summary_and_renders(tmp_path, capsys):
    root = write_record(tmp_path, {})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_json()))
    arguments = [
        "--root",
        str(root),
        "add",
        str(path),
        "--source=toy_notebook",
        "--protocol=shortened: one epoch",
        "--note=a smoke run",
    ]
    assert record.main(arguments) == 0
    written = root / record.SUMMARY_DIR / "2026-12-09-toy_notebook-mnist_kd.json"
    summary = json.loads(written.read_text())
    assert summary["command"] == "python -m experiments.mnist_kd --epochs=1"
    assert summary["protocol"] == "shortened" and summary["protocol_note"] == "one epoch"
    assert summary["runs"]["teacher"] == {
        "epochs": 1,
        "seeds": [42],
        "test_accuracy": [99.12],
        "label_agreement_first_1000": [990],
    }
    assert summary["runs"]["student_kd"]["test_accuracy"] == [97.86, 98.26]
    assert summary["machine"] == "2-core x86_64 CPU"
    assert summary["packages"] == {"jax": "0.10.2", "kdjax": "0.1.0"}
    assert summary["data"]["train_examples"] == 60000 and summary["data"]["stand_in"] is False
    assert summary["wall_seconds"] == 61.5 and summary["note"] == "a smoke run"
    assert "98.06 ± 0.28 % (n=2): 97.86, 98.26" in (root / record.OUTPUT_FILE).read_text()
    assert record.command_check(root) is None
    assert record.main(arguments) == 0  # a second run of the same day gets its own file
    assert (root / record.SUMMARY_DIR / "2026-12-09-toy_notebook-mnist_kd-2.json").is_file()


def test_add_needs_a_command_line_when_the_results_file_has_none(tmp_path, capsys):
    root = write_record(tmp_path, {})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_json(command_line=None)))
    arguments = ["--root", str(root), "add", str(path), "--source=toy_notebook", "--protocol=full"]
    assert record.main(arguments) == 1
    assert "pass --command=" in capsys.readouterr().err
    assert record.main([*arguments, "--command=python -m experiments.mnist_kd"]) == 0


def test_add_refuses_what_is_not_a_results_file_and_an_unknown_source(tmp_path, capsys):
    root = write_record(tmp_path, {})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": "something/1"}))
    arguments = ["--root", str(root), "add", str(path), "--protocol=full"]
    assert record.main([*arguments, "--source=toy_notebook"]) == 1
    assert "schema is not kdjax.results/1" in capsys.readouterr().err
    path.write_text(json.dumps(results_json()))
    assert record.main([*arguments, "--source=toy_book"]) == 1
    assert "unknown source 'toy_book'" in capsys.readouterr().err
    assert not list((root / record.SUMMARY_DIR).glob("*.json"))


def test_distil_keeps_error_counts_sweep_cells_and_per_fold_scores():
    hinton = results_json("hinton_mnist", study={"test_errors": {"student_kd": {"each": [98, 96]}}})
    assert record.distil_runs(hinton)["student_kd"]["test_errors"] == [98, 96]
    cells = [{"temperature": 4.0, "alpha": 0.5, "accuracies": [0.981, 0.9806]}]
    sweep = results_json("mnist_sweep", study={"cells": cells})
    sweep["runs"]["student_sweep"] = {"epochs": 3, "test_accuracy": [0.981, 0.9806]}
    assert record.distil_runs(sweep)["student_kd_T4_alpha0.5"] == {
        "epochs": 3,
        "test_accuracy": [98.1, 98.06],
    }
    scores = {
        key: {"each": values}
        for key, values in (
            ("accuracy", [0.8, 0.9]),
            ("macro_f1", [0.75, 0.85]),
            ("mae", [0.2, 0.1]),
            ("rmse", [0.4472, 0.3162]),
        )
    }
    folds = results_json("biovid_kd", study={})
    folds["runs"] = {"cv_subject": {"epochs": 8, "test_accuracy": [0.8, 0.9], "scores": scores}}
    assert record.distil_runs(folds)["cv_subject"] == {
        "epochs": 8,
        "per": "fold",
        "test_accuracy": [80.0, 90.0],
        "macro_f1": [75.0, 85.0],
        "mae": [0.2, 0.1],
        "rmse": [0.4472, 0.3162],
    }


def test_the_committed_results_md_is_what_the_committed_summaries_render():
    assert record.command_check(REPOSITORY) is None


def test_every_reference_source_has_a_section_in_the_committed_record():
    sources, summaries = record.load_record(REPOSITORY)
    text = (REPOSITORY / record.OUTPUT_FILE).read_text()
    for source in sources.values():
        assert f"# {source['title']}\n" in text
    transcribed = [s for _, s in summaries if s["provenance"] == "transcribed"]
    assert all("recorded in commit" in s["provenance_note"] for s in transcribed)


def test_the_record_module_imports_neither_jax_nor_the_rest_of_kdjax():
    code = (
        "import sys, kdjax.record; roots = ('jax', 'flax', 'numpy', 'kdjax'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY, check=True
    )
    modules = eval(result.stdout)  # a printed list of module names
    assert modules and all(m == "kdjax" or m.startswith("kdjax.record") for m in modules)


def test_results_files_record_the_command_line_that_started_them(monkeypatch):
    from kdjax.runs import results as report

    argv = ["/repo/experiments/mnist_kd.py", "--seeds=5", "--data_dir=my mnist"]
    monkeypatch.setattr(sys, "argv", argv)
    expected = "python -m experiments.mnist_kd --seeds=5 '--data_dir=my mnist'"
    assert report.command_line("mnist_kd") == expected
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest", "tests"])  # run() called from Python
    assert report.command_line("mnist_kd") is None


def test_portable_replaces_paths_but_not_a_slash_between_words():
    from kdjax.record.ingest import portable

    description = "the sample (4000 train / 1000 test) from /home/user/mnist or ~/data"
    assert portable(description, "description") == (
        "the sample (4000 train / 1000 test) from DESCRIPTION or DESCRIPTION"
    )
    assert portable("--data_dir=/srv/cifar10 --seeds=3") == "--data_dir=DATA_DIR --seeds=3"
