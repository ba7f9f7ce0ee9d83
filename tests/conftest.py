"""Shared fixtures: the anyio backend, and a check that no test leaves a process behind."""

from __future__ import annotations

import time

import psutil
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _children() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Every test must stop every process it started (containers, zygotes, workers)."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        stray = [p for p in _children() if p.pid not in before]
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not stray, f"processes left behind: {[(p.pid, p.cmdline()) for p in stray]}"


@pytest.fixture(autouse=True)
def no_call_left_pending():
    """Every call sent to a local container is answered or failed by the time its platform stops
    (a call left counted as in flight would keep the platform from ever polling for replies)."""
    from microfaas.nodes import container

    yield
    assert container._local.calls_pending == 0, f"{container._local.calls_pending} calls still count as in flight"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class HandlerLog:
    """A file that handlers (running in containers) append lines to, for tests to read back.

    Declare one at module level (``LOG = HandlerLog("topics")``) so that a container
    importing the test module finds the same path.
    """

    def __init__(self, name: str) -> None:
        import pathlib
        import tempfile

        self.path = pathlib.Path(tempfile.gettempdir()) / f"microfaas-test-{name}.log"

    def write(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
