"""Every example in examples/ runs to completion, as a user would run it, and prints what it promises."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))

# Lines each example must print, in this order (other lines may come between); each a regular
# expression matched against a whole line, with ids, pids and counts that vary left open.
EXPECTED = {
    "events.py": [
        r"== spawn: retried, then dead-lettered",
        r"  charged order 1",
        r"  call \S+ failed after 3 attempts: card declined",
        r"== topic: fan-out, batches, partial failures",
        r"== stream: ordered per key",
        r"== batch job",
        *(rf"  progress {i}/4" for i in range(5)),
        r"  results: \['A', 'B', 'C', 'D'\]",
        r"== after drain",
        r"  stream lag: \{0: 0, 1: 0\}",
        r"  dead letter of charge from spawn: \(\(13,\), \{\}\) after 3 attempts",
        r"  dead letter of ship from topic:orders: Message\(.* after 3 attempts",
        r"  heartbeat ran [1-9]\d* times",
    ],
    "executor.py": [
        r"lambda: 101",
        r"map: \[0, 1, 4, 9, 16, 25, 36, 49\]",
        r"map, chunks of 4: \[0, 1, 4, 9, 16, 25, 36, 49\]",
        r"crash: ContainerCrashed: task: container c-\d+ .*exited with code 1.*",
        r"timeout: FunctionTimeout: task: invocation \S+ ran past timeout=2s.*",
        r"memory: OutOfMemory: task: container c-\d+ .*over memory_mb=128.*",
        r"the others: \[0, 1, 4, 9\]",
        r"still serving: 81",
        r"hello, world \(from pid (?P<pid>\d+)\)",
        r"hello, spawned \(from pid (?P=pid)\)",
        r"greet: 4 invocations, 1 cold starts",
    ],
    # The handlers' own lines (billed order ...) come from the containers and may interleave.
    "lambda_shop.py": [
        r"== SQS: a partial batch response retries only the failed message",
        r"  dead letter: order 2 after 3 attempts",
        r"== HTTP \(what the gateway sends for GET /items/42 and POST /items\)",
        r'  200 \{"id":"42","cookies":\["session=abc"\]\}',
        r"  201 \{\"id\": 7\} set-cookie: \['last=1; Path=/'\]",
    ],
    "quickstart.py": [
        r"== cold vs warm",
        r"square\(2\) = 4 +cold_start=True",
        r"square\(3\) = 9 +cold_start=False",
        r"ping\(\) = 'pong' cold_start=False .*pinned.*",
        r"fetch\('a'\) = value-of-a",
        r"Hello, Ada! \(container pid (?P<pid>\d+)\)",
        r"Hello, Grace! \(container pid (?P=pid)\) +<- same container, init ran once",
        r"faas.invoke\('square', 12\) = 144",
        r"spawned \S+: result 49, status succeeded",
        r"square.map\(range\(10\)\) = \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\]",
        r"FunctionError: builtins.ZeroDivisionError: division by zero",
        r"FunctionTimeout in container c-\d+: the container was killed",
        r"== containers of square",
        r"function +calls +cold +warm +errors +started +p50 ms",
        r"square +14 .*",
        r"divide +1 +1 +0 +1 .*",
        r"too_slow +1 +1 +0 +1 .*",
    ],
}


def unmatched(patterns: list[str], output: str) -> list[str]:
    """The patterns (from the first one missing) that ``output`` does not match line by line in order.

    A named group (``(?P<pid>...)``) may be referred back to by a later pattern (``(?P=pid)``).
    """
    lines = iter(output.splitlines())
    groups: dict[str, str] = {}
    for n, pattern in enumerate(patterns):
        for name, value in groups.items():
            pattern = pattern.replace(f"(?P={name})", re.escape(value))
        for line in lines:
            if (match := re.fullmatch(pattern, line)) is not None:
                groups.update(match.groupdict())
                break
        else:
            return patterns[n:]
    return []


def test_the_line_matcher_keeps_order_and_back_references() -> None:
    assert unmatched(["a", "c"], "a\nb\nc") == []
    assert unmatched(["c", "a"], "a\nb\nc") == ["a"]
    assert unmatched([r"pid (?P<pid>\d+)", r"again (?P=pid)"], "pid 12\nagain 13\nagain 12") == []
    assert unmatched([r"pid (?P<pid>\d+)", r"again (?P=pid)"], "pid 12\nagain 13") == [r"again (?P=pid)"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_and_prints_what_it_shows(example: pathlib.Path) -> None:
    assert example.name in EXPECTED, f"add the lines {example.name} must print to EXPECTED"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120, cwd=example.parent.parent)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"
    missing = unmatched(EXPECTED[example.name], done.stdout)
    assert not missing, f"{example.name} did not print a line matching {missing[0]!r}; it printed:\n{done.stdout}"


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
