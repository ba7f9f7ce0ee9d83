"""Kill -9 a real platform process in the middle of its work, start it again on the same SQLite
store, and check that every event it had accepted was handled at least once, that per-key stream
order held, that the batch job completed and that dead letters were kept.

The platform runs in a child process (``child`` in tests/durability_kill_app.py, with that module's app). It accepts events
-- spawned calls, topic messages, stream records, a batch job, calls that always fail -- and prints
a line for each once the call that accepted it has returned. The handlers, in containers, append a
line for each event they handle to a file. The test kills the child (SIGKILL) at a kill point,
makes sure none of its processes outlive it, starts it again to drain what is left, and compares.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durability_kill_app import TASKS
from platform_process import kill_with_everything_it_started

# -- the test ---------------------------------------------------------------------------------


def _start(mode: str, store: Path, folder: Path, *args: str) -> subprocess.Popen[str]:
    tests = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import durability_kill_app as t; t.child(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "MF_KILL_DIR": str(folder)}
    return subprocess.Popen([sys.executable, "-c", code, mode, str(store), *args], stdout=subprocess.PIPE, text=True, env=env)


def _produce_until(store: Path, folder: Path, kill_point: str) -> list[str]:
    """Run the producer until it has printed ``kill_point`` ("accepted <n>" events, or "produced"); kill it."""
    producer = _start("produce", store, folder)
    accepted: list[str] = []
    try:
        assert producer.stdout is not None
        target = int(kill_point.split()[1]) if kill_point.startswith("accepted") else None
        for line in producer.stdout:
            line = line.strip()
            if line.startswith("accepted"):
                accepted.append(line)
            if (target is not None and len(accepted) >= target) or line == kill_point:
                break
        else:
            pytest.fail(f"the producer ended before {kill_point!r} (exit code {producer.wait()})")
    finally:
        kill_with_everything_it_started(producer)
    return accepted


def _resume(store: Path, folder: Path, jobs: list[str]) -> dict[str, Any]:
    resumed = _start("resume", store, folder, *jobs)
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _check(accepted: list[str], handled: list[str], report: dict[str, Any]) -> None:
    def of(kind: str, lines: list[str]) -> list[list[str]]:
        return [line.split()[1:] for line in lines if line.split()[0] == kind]

    taken = [line.split(maxsplit=1)[1] for line in accepted]
    assert {c[0] for c in of("spawn", taken)} <= {c[0] for c in of("spawn", handled)}
    assert {m[0] for m in of("message", taken)} <= {m[0] for m in of("message", handled)}
    records = of("record", handled)
    assert {(r[1], r[2]) for r in of("record", taken)} <= {(r[1], r[2]) for r in records}
    # Per key, the last handling of each record comes in put order (a redelivery starts over from the checkpoint).
    last = {(r[1], r[2]): i for i, r in enumerate(records)}
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for r in sorted({(r[1], r[2]): r for r in records}.values(), key=lambda r: last[(r[1], r[2])]):
        by_key[r[0]].append(int(r[3]))
    for key, values in by_key.items():
        assert values == sorted(values), f"records of key {key!r} were handled out of order: {values}"
    tasks = {t[0] for t in of("task", handled)}
    for (job_id,) in of("job", taken):
        assert {f"{job_id}.{i}" for i in range(TASKS)} <= tasks
        assert report["jobs"][job_id] == [2 * x for x in range(TASKS)]
    assert {p[0] for p in of("poison", taken)} <= set(report["letters"])  # dead letters kept, or made after


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []  # no handler may have run yet


def _crash_and_resume(tmp_path: Path, kill_point: str) -> None:
    store, handled_file = tmp_path / "faas.db", tmp_path / "handled"
    accepted = _produce_until(store, tmp_path, kill_point)
    assert accepted, "the producer accepted nothing before the kill"
    jobs = [line.split()[2] for line in accepted if line.startswith("accepted job")]
    report = _resume(store, tmp_path, jobs)
    _check(accepted, _lines(handled_file), report)


def test_a_platform_killed_while_accepting_events_handles_every_accepted_one_after_a_restart(tmp_path: Path) -> None:
    _crash_and_resume(tmp_path, "accepted 60")  # spawns, messages, records, the batch job under way


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", ["accepted 5", "accepted 150", "produced"])
def test_a_platform_killed_at_other_points_handles_every_accepted_event_after_a_restart(tmp_path: Path, kill_point: str) -> None:
    _crash_and_resume(tmp_path, kill_point)


@pytest.mark.slow  # a few seconds; CI runs it with -m slow
def test_a_second_crash_during_the_resume_still_loses_nothing(tmp_path: Path) -> None:
    store, handled_file = tmp_path / "faas.db", tmp_path / "handled"
    accepted = _produce_until(store, tmp_path, "accepted 80")
    # The resumed platform is killed too, as soon as it has handled something more.
    before = len(_lines(handled_file))
    resumer = _start("resume", store, tmp_path)
    try:
        _wait_for_growth(handled_file, before)
    finally:
        kill_with_everything_it_started(resumer)
    jobs = [line.split()[2] for line in accepted if line.startswith("accepted job")]
    report = _resume(store, tmp_path, jobs)
    _check(accepted, _lines(handled_file), report)


def _wait_for_growth(path: Path, lines: int) -> None:
    """Wait until ``path`` has more than ``lines`` lines (its writers are other processes' containers: polled)."""
    deadline = time.monotonic() + 60
    while len(_lines(path)) <= lines:
        assert time.monotonic() < deadline, f"{path} did not grow past {lines} lines in 60 s"
        time.sleep(0.01)
