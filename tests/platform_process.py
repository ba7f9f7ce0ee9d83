"""A platform in a child process, for the connector tests that kill it (SIGKILL) and start it again.

The child runs ``<module>.child(*args)`` of a test module; its handlers append a line per
handled event to ``handled`` in the test's folder (``MF_TEST_DIR``), which the test reads back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def handled(line: str) -> None:
    """Called by a handler (in a container of the child): note ``line`` as handled."""
    with open(Path(os.environ["MF_TEST_DIR"]) / "handled", "a") as f:
        f.write(line + "\n")


def handled_lines(folder: Path) -> list[str]:
    path = folder / "handled"
    return path.read_text().splitlines() if path.exists() else []


def start_child(module: str, folder: Path, *args: str) -> subprocess.Popen[str]:
    """``module.child(*args)`` in a new interpreter that imports the tests' modules."""
    tests = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import {module} as t; t.child(*sys.argv[1:])"
    env = {**os.environ, "MF_TEST_DIR": str(folder)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)


def wait_for_lines(folder: Path, count: int, process: subprocess.Popen[str], seconds: float = 120.0) -> list[str]:
    """Until ``handled`` has ``count`` lines; fails when ``process`` ends first or time runs out (a bound)."""
    deadline = time.monotonic() + seconds
    while len(lines := handled_lines(folder)) < count:
        assert process.poll() is None, f"the platform ended (exit code {process.returncode}) after {len(lines)} handled lines"
        assert time.monotonic() < deadline, f"only {len(lines)} of {count} lines handled in {seconds}s"
        time.sleep(0.02)
    return lines


def kill_with_everything_it_started(process: subprocess.Popen[str]) -> None:
    """SIGKILL the platform, then make sure its zygotes and containers are gone too."""
    family = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(family, timeout=10)  # they die with it (PR_SET_PDEATHSIG)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=10)
    assert process.stdout is not None
    process.stdout.close()
