"""Shared fixtures: the anyio backend, and checks that no test leaves a process or zombie behind, or a call pending on any thread."""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import ClassVar

import psutil
import pytest

from handlerlog import HandlerLog as HandlerLog  # re-exported: tests import it from here
from microfaas.nodes import container

# The real servers the connector tests start (redis_server, ...).
pytest_plugins = ("servers",)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _children() -> list[psutil.Process]:
    """Every process below this one, zombies included: a child that exited but was never reaped is a leak too."""
    return psutil.Process().children(recursive=True)


def _describe(process: psutil.Process) -> str:
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return f"{process.pid} (exited, never reaped)"
        return f"{process.pid} {process.cmdline()}"
    except psutil.NoSuchProcess:
        return f"{process.pid} (gone)"


def _still_there(process: psutil.Process) -> bool:
    try:
        process.status()
    except psutil.NoSuchProcess:
        return False
    return True


@pytest.fixture(autouse=True)
def no_stray_processes():
    """Every test must stop and reap every process it started (containers, zygotes, workers)."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        stray = [p for p in _children() if p.pid not in before and _still_there(p)]
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not stray, f"processes left behind: {[_describe(p) for p in stray]}"


class _EveryThread(container._LoopLocal):
    """``container._local``, with each thread's copy kept where the check below can read it."""

    copies: ClassVar[list[tuple[threading.Thread, dict[str, object]]]] = []

    def __init__(self) -> None:
        # Runs once in each thread that touches it; ``__dict__`` is that thread's copy.
        _EveryThread.copies.append((threading.current_thread(), self.__dict__))


container._local = _EveryThread()


@pytest.fixture(autouse=True)
def no_call_left_pending():
    """Every call sent to a local container is answered or failed by the time its platform stops,
    whichever thread ran the platform (a call left counted as in flight would keep the platform
    from ever polling for replies)."""
    yield
    pending = {}
    for thread, copy in _EveryThread.copies:
        if copy.get("calls_pending", 0):
            pending[thread.name] = copy["calls_pending"]
            copy["calls_pending"] = 0  # reported once, not again by every later test
    _EveryThread.copies[:] = [(thread, copy) for thread, copy in _EveryThread.copies if thread.is_alive()]
    assert not pending, f"calls still counted as in flight, by thread: {pending}"


async def wait_until(condition: Callable[[], object], seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``seconds`` (a bound, not a synchronisation)."""
    import anyio

    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.005)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Gate:
    """A FIFO that handlers (in containers) block on, one byte per call, until the test lets them go.

    A handler opens ``path`` and reads one byte; ``hold`` is the argument test_pipelining's handler takes for that.
    """

    def __init__(self, path: pathlib.Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        # Held open for reading and writing, so the container's open never blocks and its read waits for a byte.
        self._fd = os.open(path, os.O_RDWR)

    @property
    def hold(self) -> tuple[str, str]:
        return ("hold", self.path)

    def release(self, calls: int = 1) -> None:
        """Let ``calls`` held calls go (one byte each)."""
        os.write(self._fd, b"x" * calls)

    def close(self) -> None:
        os.close(self._fd)


def release(path: str, text: str = "go") -> None:
    """Write ``text`` to ``path``: opens a FIFO that a handler waits on (tests of the executor and the blocking API)."""
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def fifo(tmp_path):
    """A FIFO in the test's directory: a handler that opens it blocks until ``release`` writes to it."""
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    return path
