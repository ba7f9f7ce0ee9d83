"""mf.Executor keeps the promises of the standard library's Executor documentation,
and isolates what ProcessPoolExecutor cannot: crashes, timeouts and memory."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import weakref

import psutil
import pytest

import microfaas as mf
from conftest import _children, pid_alive, release


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, fn: int = 0) -> int:
    return a + b + fn


def getpid(_: object = None) -> int:
    return os.getpid()


def wait_for(path: str) -> str:
    """Block until someone writes to the FIFO at ``path``; return what was written."""
    with open(path) as f:
        return f.read()


def signal_then_wait(started: str, go: str) -> str:
    """Tell the test it has started (through the FIFO ``started``), then wait for the FIFO ``go``."""
    release(started, "started")
    return wait_for(go)


def meet(path: str, side: str) -> str:
    """Open one end of a FIFO: returns only once another task has opened the other end."""
    with open(path, "w" if side == "w" else "r") as f:
        if side == "w":
            f.write("met")
            return "wrote"
        return f.read()


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


def crash(how: str) -> None:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


def hold_memory(mb: int, fifo: str) -> None:
    held = b"x" * (mb * 2**20)
    wait_for(fifo)
    del held


_initialized: list[object] = []


def remember(*args: object) -> None:
    _initialized.append(args)


def initialized(_: object = None) -> list[object]:
    return _initialized


def broken_init() -> None:
    raise RuntimeError("no database")


class NeedsTwoArguments(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def raise_unrebuildable() -> None:
    raise NeedsTwoArguments("this", "that")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable


@pytest.fixture
def started(tmp_path):
    path = str(tmp_path / "started")
    os.mkfifo(path)
    return path


@pytest.fixture
def ex():
    """An executor for the tests that neither shut it down nor break its workers."""
    with mf.Executor(max_workers=2) as executor:
        yield executor


# -- futures, submit, map -------------------------------------------------------------------------


def test_futures_are_concurrent_futures_that_wait_and_as_completed_understand(ex):
    futures = [ex.submit(square, i) for i in range(10)]
    assert all(type(f) is cf.Future for f in futures)
    done, not_done = cf.wait(futures, timeout=60)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == [i * i for i in range(10)]
    assert [f.result() for f in done if f.result() == 81]


def test_submit_passes_args_and_kwargs_even_one_named_fn(ex):
    assert ex.submit(add, 1, 2, fn=3).result(timeout=60) == 6
    assert ex.submit(add, a=1, b=5).result(timeout=60) == 6


def test_any_picklable_callable_runs_without_a_decorator(ex):
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    class Local(Exception):
        pass

    def raise_local() -> None:
        raise Local("defined in a test")

    assert ex.submit(lambda x: x * 3, 4).result(timeout=60) == 12
    assert ex.submit(closure, 1).result(timeout=60) == 11
    assert ex.submit(pow, 2, 10).result(timeout=60) == 1024
    with pytest.raises(Local, match="defined in a test"):
        ex.submit(raise_local).result(timeout=60)


def test_an_exception_is_re_raised_as_its_own_type_with_the_remote_traceback(ex):
    future = ex.submit(fail_at, 7, 7)
    with pytest.raises(KeyError) as info:
        future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, mf.FunctionError)
    assert cause.remote_type == "builtins.KeyError"
    assert "fail_at" in cause.remote_traceback and "raise KeyError" in cause.remote_traceback
    assert isinstance(future.exception(), KeyError)


def test_an_exception_that_cannot_travel_arrives_as_a_function_error(ex):
    with pytest.raises(mf.FunctionError) as info:
        ex.submit(raise_unrebuildable).result(timeout=60)
    assert info.value.remote_type.endswith("NeedsTwoArguments")
    assert "this and that" in info.value.remote_message
    with pytest.raises(mf.FunctionError) as info:
        ex.submit(raise_unpicklable).result(timeout=60)
    assert "holds a lock" in str(info.value)


def test_a_call_that_does_not_pickle_fails_its_future(ex):
    future = ex.submit(square, threading.Lock())
    with pytest.raises(mf.SerializationError, match="square"):
        future.result(timeout=60)


def test_map_yields_in_order_and_raises_at_the_failing_item(ex):
    for chunksize in (1, 3):
        assert list(ex.map(square, range(20), chunksize=chunksize)) == [i * i for i in range(20)]
        assert list(ex.map(add, [1, 2], [10, 20], chunksize=chunksize)) == [11, 22]
        results = ex.map(fail_at, range(10), [4] * 10, chunksize=chunksize)
        assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(KeyError, match="item 4"):
            next(results)
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(square, range(3), chunksize=0)


def test_map_submits_everything_at_the_call(ex):
    consumed = []

    def items():
        for i in range(5):
            consumed.append(i)
            yield i

    results = ex.map(square, items())
    assert consumed == [0, 1, 2, 3, 4]
    assert list(results) == [0, 1, 4, 9, 16]


def test_map_timeout_counts_from_the_call(ex, fifo, started):
    results = ex.map(signal_then_wait, [started], [fifo], timeout=0.2)
    assert wait_for(started) == "started"  # however long that took, the 0.2 s began at the call
    with pytest.raises(TimeoutError):
        next(results)
    release(fifo)  # let the task finish


def test_run_in_executor(ex):
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*[loop.run_in_executor(ex, square, i) for i in range(5)]))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_eight_threads_submitting_at_once(ex):
    results: dict[int, list[int]] = {}

    def submitter(t: int) -> None:
        futures = [ex.submit(add, t, i) for i in range(200)]
        results[t] = [f.result(timeout=120) for f in futures]

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {t: [t + i for i in range(200)] for t in range(8)}


def test_references_to_finished_tasks_are_released(ex):
    class Payload:
        pass

    class Task:
        def __call__(self, payload: Payload) -> str:
            return type(payload).__name__

    payload, task = Payload(), Task()
    refs = [weakref.ref(payload), weakref.ref(task)]
    assert ex.submit(task, payload).result(timeout=60) == "Payload"
    del payload, task
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


# -- workers ------------------------------------------------------------------------------------------


def test_max_workers():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            mf.Executor(max_workers=bad)
    with mf.Executor() as executor:
        assert repr(executor) == f"<microfaas Executor max_workers={os.cpu_count()}: running>"


def test_max_workers_tasks_run_at_once_and_no_more_workers(tmp_path):
    path = str(tmp_path / "meet")
    os.mkfifo(path)
    with mf.Executor(max_workers=2) as executor:
        # Each end of a FIFO opens only when the other is opened: both tasks run at once.
        reader, writer = executor.submit(meet, path, "r"), executor.submit(meet, path, "w")
        assert (reader.result(timeout=60), writer.result(timeout=60)) == ("met", "wrote")
        assert len({pid for pid in executor.map(getpid, range(40))}) <= 2


def test_initializer_runs_once_in_each_worker():
    with mf.Executor(max_workers=2, initializer=remember, initargs=("db", 1)) as executor:
        seen = list(executor.map(initialized, range(20)))
    assert all(value == [("db", 1)] for value in seen)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        mf.Executor(initializer="not callable")  # type: ignore[arg-type]


def test_a_failing_initializer_fails_the_tasks_not_the_executor():
    with mf.Executor(max_workers=1, initializer=broken_init) as executor:
        for _ in range(2):
            with pytest.raises(mf.ColdStartFailed, match="no database"):
                executor.submit(square, 2).result(timeout=60)


def test_spawn_start_method():
    with mf.Executor(max_workers=1, start_method="spawn") as executor:
        assert executor.submit(square, 5).result(timeout=60) == 25
    with pytest.raises(ValueError, match="start_method"):
        mf.Executor(start_method="forkserver")


# -- isolation: a failing worker fails only its own future ----------------------------------------


def test_a_crash_fails_only_its_own_future_and_the_executor_keeps_serving():
    with mf.Executor(max_workers=2) as executor:
        for how in ("exit", "signal"):
            bad, good = executor.submit(crash, how), [executor.submit(square, i) for i in range(10)]
            with pytest.raises(mf.ContainerCrashed):
                bad.result(timeout=60)
            assert [f.result(timeout=60) for f in good] == [i * i for i in range(10)]
        assert executor.submit(square, 3).result(timeout=60) == 9


def test_tasks_waiting_in_a_worker_that_crashes_run_in_a_new_one():
    with mf.Executor(max_workers=1) as executor:
        # Short tasks first: then several are handed out at once, and wait in the worker's socket.
        assert list(executor.map(square, range(200))) == [i * i for i in range(200)]
        bad, good = executor.submit(crash, "exit"), [executor.submit(square, i) for i in range(6)]
        with pytest.raises(mf.ContainerCrashed):
            bad.result(timeout=60)
        assert [f.result(timeout=60) for f in good] == [i * i for i in range(6)]


def test_a_timeout_fails_only_its_own_future(fifo):
    # Generous: a worker's first task also imports this test module (to unpickle ``square``).
    with mf.Executor(max_workers=2, timeout=2.0) as executor:
        stuck, fine = executor.submit(wait_for, fifo), executor.submit(square, 4)
        with pytest.raises(mf.FunctionTimeout, match=r"timeout=2\.0"):
            stuck.result(timeout=60)
        assert fine.result(timeout=60) == 16
        assert executor.submit(square, 5).result(timeout=60) == 25


def test_going_over_memory_fails_only_its_own_future(fifo):
    with mf.Executor(max_workers=2, memory_mb=64) as executor:
        big, fine = executor.submit(hold_memory, 256, fifo), executor.submit(square, 6)
        with pytest.raises(mf.OutOfMemory, match="memory_mb=64"):
            big.result(timeout=60)
        assert fine.result(timeout=60) == 36
        assert executor.submit(square, 7).result(timeout=60) == 49


# -- cancel and shutdown ------------------------------------------------------------------------------


def test_cancel_before_a_task_starts(fifo, started, tmp_path):
    marker = tmp_path / "ran"
    with mf.Executor(max_workers=1) as executor:
        first = executor.submit(signal_then_wait, started, fifo)
        assert wait_for(started) == "started"
        queued = [executor.submit(marker.write_text, str(i)) for i in range(5)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        with pytest.raises(cf.CancelledError):
            queued[-1].result()
        assert not first.cancel()  # running
        release(fifo)
        assert first.result(timeout=60) == "go"
        assert [f.result(timeout=60) for f in queued[:-1]] == [1, 1, 1, 1]
    assert marker.read_text() == "3"  # the cancelled one (writing "4") never ran


def test_shutdown_cancel_futures_cancels_what_has_not_started(fifo, started):
    executor = mf.Executor(max_workers=1)
    first = executor.submit(signal_then_wait, started, fifo)
    assert wait_for(started) == "started"
    rest = [executor.submit(square, i) for i in range(10)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert rest[-1].cancelled()
    release(fifo)
    assert first.result(timeout=60) == "go"
    executor.shutdown(wait=True)
    assert all(f.done() for f in rest)


def test_shutdown_waits_is_idempotent_and_refuses_new_work(tmp_path):
    executor = mf.Executor(max_workers=2)
    futures = [executor.submit(square, i) for i in range(20)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    executor.shutdown()
    executor.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(square, [1])
    with mf.Executor(max_workers=1) as scoped:
        pass
    with pytest.raises(RuntimeError, match="after shutdown"):
        scoped.submit(square, 1)


def test_a_forgotten_executor_is_collected_and_stops_its_workers():
    before = {p.pid for p in _children()}
    executor = mf.Executor(max_workers=2)
    pids = set(executor.map(getpid, range(10)))
    processes = [p for p in _children() if p.pid not in before]
    assert pids <= {p.pid for p in processes}
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None
    psutil.wait_procs(processes, timeout=30)
    assert not [p.pid for p in processes if pid_alive(p.pid)]


# -- interpreter exit ---------------------------------------------------------------------------------

EXIT_SCRIPT = """
import os, sys, threading
import microfaas as mf

def slow_write(path):
    with open(path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    with open(path, "w") as f:
        f.write("done")

executor = mf.Executor(max_workers=1)
executor.submit(slow_write, sys.argv[1])      # a __main__ function: it travels by value

def late():
    threading.main_thread().join()             # the main thread has finished: the interpreter exits
    try:
        executor.submit(abs, -1)
        print("accepted")
    except RuntimeError as exc:
        print("refused:", exc)

threading.Thread(target=late).start()
"""


def test_at_interpreter_exit_pending_tasks_finish_and_submit_is_refused(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), str(out)], capture_output=True, text=True, timeout=120, cwd=pathlib.Path.cwd()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused: cannot schedule new futures after interpreter shutdown"
    assert out.read_text() == "done"
    assert not pid_alive(int((tmp_path / "out.pid").read_text()))
