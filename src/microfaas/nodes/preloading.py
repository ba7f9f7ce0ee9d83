"""Importing modules into a zygote so that every container it forks inherits them, safely.

Runs in the zygote (``nodes/zygote.py``). Each module is first imported in a probe:
a child forked for that one import, which reports how it went and exits. A module
is preloaded only if the probe's import returned, within ``IMPORT_LIMIT_S``, with
the process still on one thread, and without taking the zygote past its memory
cap; otherwise it is refused with the reason, and the zygote is never touched by
it. A module that raised is reported as a failure. Either way the container
imports the module itself, as it would without a zygote.

While modules are preloaded, the thread pools of the common numerical libraries
(OpenBLAS, OpenMP, MKL, numexpr) are asked for one thread, through their
environment variables, unless the user set them: numpy's OpenBLAS would
otherwise start a thread at import, and a process with threads must not fork.
The variables are put back afterwards, so the containers' environment is the
user's.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

__all__ = ["IMPORT_LIMIT_S", "THREAD_POOL_VARIABLES", "Preloaded", "preload", "resident_mb", "thread_count"]

# A module whose import takes longer than this (in the probe) is refused.
IMPORT_LIMIT_S: Final = 10.0
# The environment variables that keep native thread pools to one thread while preloading.
THREAD_POOL_VARIABLES: Final = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@attrs.define
class Preloaded:
    """What one round of preloading did."""

    failures: dict[str, str] = attrs.Factory(dict)  # module -> what its import raised
    refused: dict[str, str] = attrs.Factory(dict)  # module -> why it was not preloaded
    imported: list[str] = attrs.Factory(list)  # the modules preloaded, in order
    import_s: float = 0.0


def thread_count() -> int:
    """This process's threads, native ones included (threading only sees Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def resident_mb() -> float:
    """This process's resident memory in MB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def preload(modules: Iterable[str], *, memory_mb: float | None = None, limit_s: float = IMPORT_LIMIT_S) -> Preloaded:
    """Import each of ``modules`` here, if its probe shows it is safe to."""
    done = Preloaded()
    started = time.perf_counter()
    before = set(sys.modules)
    with _single_threaded_pools():
        for name in modules:
            if name in sys.modules:
                if name in before:  # not one an earlier module of this round imported on its way
                    done.imported.append(name)
                continue
            verdict = _probe(name, limit_s)
            if verdict.error is not None:
                done.failures[name] = verdict.error
                continue
            if verdict.refused is not None:
                done.refused[name] = verdict.refused
                continue
            if memory_mb is not None and (after := resident_mb() + verdict.grew_mb) > memory_mb:
                done.refused[name] = f"it would take the zygote to {after:.0f} MB, past its cap of {memory_mb:g} MB"
                continue
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - it raised here but not in the probe: report it alike
                done.failures[name] = repr(exc)
                continue
            done.imported.append(name)
    done.import_s = time.perf_counter() - started
    return done


@contextlib.contextmanager
def _single_threaded_pools() -> Iterator[None]:
    added = [name for name in THREAD_POOL_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@attrs.frozen
class _Verdict:
    """How a probe's import went: it raised (``error``), was refused, or grew the process by ``grew_mb``."""

    error: str | None = None
    refused: str | None = None
    grew_mb: float = 0.0


def _probe(name: str, limit_s: float) -> _Verdict:
    """Import ``name`` in a forked child and tell how it went."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probe child (coverage does not follow it)
        os.close(read_end)
        _probe_child(name, write_end)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], limit_s)
        report = _read_all(read_end) if ready else b""
    finally:
        os.close(read_end)
        if not report:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if not ready:
        return _Verdict(refused=f"its import took longer than {limit_s:g}s")
    try:
        return _Verdict(**json.loads(report))
    except (ValueError, TypeError):
        return _Verdict(refused="its import ended the process")


def _probe_child(name: str, write_end: int) -> None:  # pragma: no cover - runs in the probe child
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        before = resident_mb()
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - report whatever it was
            verdict: dict[str, object] = {"error": repr(exc)}
        else:
            threads = thread_count()
            started: dict[str, object] = {"refused": f"its import started {threads - 1} thread(s)"}
            verdict = started if threads > 1 else {"grew_mb": resident_mb() - before}
        data = json.dumps(verdict).encode()
        while data:
            data = data[os.write(write_end, data) :]
    except BaseException:  # noqa: BLE001 - the zygote reads an empty report
        code = 1
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)
