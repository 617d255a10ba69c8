"""The size rules of the codebase (BUILD_NOTES, "Architecture"): no module of the library
or of the experiments over 400 lines, no function over 80 lines besides its docstring,
and the training loop's ``fit`` on one screen (60)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted([*(ROOT / "kdjax").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")])


def function_lengths(path: Path) -> dict[str, int]:
    """``{name: lines}`` of every function in ``path``, docstrings not counted."""
    lengths = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            skipped = len(docstring.splitlines()) if docstring else 0
            lengths[node.name] = node.end_lineno - node.lineno + 1 - skipped
    return lengths


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    assert len(path.read_text().splitlines()) <= 400
    long = {name: n for name, n in function_lengths(path).items() if n > 80}
    assert not long, f"functions over 80 lines: {long}"


def test_fit_reads_on_one_screen():
    assert function_lengths(ROOT / "kdjax" / "training" / "loop.py")["fit"] <= 60
