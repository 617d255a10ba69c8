"""Every Python block of the README, and of the training guide it links to
(docs/training.md), runs as written, in order, in a fresh folder, and its assertions
(a restored run scores what the run reported; frozen layers stay unchanged) hold. The
README's main table agrees with a fresh run of the Quickstart's command 1."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRAINING_GUIDE = ROOT / "docs" / "training.md"


def python_blocks(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.DOTALL)


def test_the_readme_and_the_training_guide_have_python_examples():
    # The README: the losses, a command run from Python, restoring it with kdjax and
    # with orbax. The guide: teachers online, frozen layers, BatchNorm in a population.
    assert len(python_blocks(README)) >= 4
    assert len(python_blocks(TRAINING_GUIDE)) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("document", [README, TRAINING_GUIDE], ids=["README", "training"])
def test_every_python_block_runs(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(python_blocks(document)):
        where = f"{document.relative_to(ROOT)} python block {index + 1}"
        try:
            exec(compile(block, where, "exec"), namespace)
        except Exception as error:  # name the block that failed
            raise AssertionError(f"{where} failed: {error!r}") from error


# --- The main table: README figures against a fresh run ------------------------------

SAMPLE_ROW = "| embedded 5k sample"
# One test image of the sample's 1,000 is 0.1 points; a mean over 3 students moves in
# steps of 0.033. The same versions (requirements.lock) on this machine reproduce every
# figure exactly; the tolerance leaves room for another x86 CPU's float rounding,
# and is still below the error of a stale table (two test images, 0.2 points).
TABLE_TOLERANCE_POINTS = 0.15


FULL_ROW = "| full MNIST"


def readme_row(start: str = SAMPLE_ROW) -> dict[str, tuple[float, float | None]]:
    """The README's main-table figures of one row: ``{column: (mean, std)}``."""
    rows = [line for line in README.read_text().splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"the README's main table must have one {start!r} row"
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    figures = {}
    for column, cell in zip(("teacher", "student_kd", "student_scratch"), cells[-3:], strict=True):
        match = re.fullmatch(r"(\d+\.\d+)(?: ± (\d+\.\d+))? %", cell)
        assert match, f"README main table: cannot read {cell!r} ({column})"
        figures[column] = (float(match[1]), None if match[2] is None else float(match[2]))
    return figures


def test_the_readme_main_table_is_readable():
    figures = readme_row()
    assert figures["teacher"][1] is None and figures["student_kd"][1] is not None


@pytest.mark.slow
def test_the_readme_main_table_matches_a_fresh_run(tmp_path):
    """Command 1 of the Quickstart, in-process on the embedded sample (the data it uses
    on a fresh machine), must give the README's figures."""
    from experiments import mnist_kd

    results = mnist_kd.run(
        mnist_kd.Config(workdir=str(tmp_path / "run"), temperature=3.0, alpha=0.7, download=False)
    )
    assert results["data"]["source"] == "embedded-sample"
    measured = results["study"]["test_accuracy_summary"]
    for column, (mean, std) in readme_row().items():
        fresh = measured[column]
        assert abs(100 * fresh["mean"] - mean) <= TABLE_TOLERANCE_POINTS, (column, fresh, mean)
        if std is not None:
            assert abs(100 * fresh["std"] - std) <= TABLE_TOLERANCE_POINTS, (column, fresh, std)


def recorded_main_command(train_examples: int) -> dict:
    """The newest three-student summary of command 1 in the results record on the
    training set of ``train_examples`` images."""
    from kdjax import record

    _, summaries = record.load_record(ROOT)
    matches = [
        summary
        for _, summary in summaries
        if summary["command"].startswith("python -m experiments.mnist_kd --temperature=3")
        and (summary["data"] or {}).get("train_examples") == train_examples
        and len(summary["runs"]["student_kd"].get("seeds", [])) == 3
    ]
    assert matches, f"no three-seed mnist_kd run on {train_examples} images in RESULTS.md"
    return max(matches, key=lambda summary: summary["date"])


@pytest.mark.parametrize(("row", "train_examples"), [(SAMPLE_ROW, 4000), (FULL_ROW, 60000)])
def test_the_readme_main_table_is_the_results_record(row, train_examples):
    """Each row of the main table is the newest recorded run of command 1 on its data."""
    from kdjax import record

    summary = recorded_main_command(train_examples)
    for column, (mean, std) in readme_row(row).items():
        value = summary["runs"][column]["test_accuracy"]
        statistics = record.statistics_of(value, record.METRICS["test_accuracy"])
        assert round(statistics.mean, 2) == mean, (row, column, statistics.mean, mean)
        if std is not None:
            assert round(statistics.std, 2) == std, (row, column, statistics.std, std)
