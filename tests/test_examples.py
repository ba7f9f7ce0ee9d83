"""Every example in examples/ runs to completion, as a user would run it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120, cwd=example.parent.parent)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{example.name} printed nothing"


def test_there_are_examples() -> None:
    assert EXAMPLES


def test_the_unittest_recipe_runs_under_unittest() -> None:
    """docs/testing.md's unittest tests (IsolatedAsyncioTestCase) pass under unittest's own runner."""
    project = pathlib.Path(__file__).parent.parent / "examples" / "testing_project"
    done = subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "tests"],  # the page's command
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Ran 2 tests" in done.stderr and done.stderr.rstrip().endswith("OK"), done.stderr
