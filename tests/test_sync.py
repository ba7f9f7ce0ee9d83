"""The blocking platform: ``with app.run_sync() as faas``, for code that is not async."""

from __future__ import annotations

import inspect
import os
import signal
import threading

import psutil
import pytest

import microfaas as mf
from conftest import _children, pid_alive, release
from microfaas.blocking_views import SyncCall

app = mf.App("sync")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)


@app.function(max_containers=2)
def double(x: int) -> int:
    return 2 * x


@app.function
def fail(message: str) -> None:
    raise ValueError(message)


@app.function(timeout=None)
def wait_for(path: str) -> str:
    """Block until someone writes to the FIFO at ``path``; return what was written."""
    with open(path) as f:
        return f.read()


@app.function
def pid() -> int:
    return os.getpid()


@app.function(triggers=[orders.subscribe()])
def on_order(msg: mf.Message) -> None:
    pass


@app.function(triggers=[clicks.consume(batch_size=10)])
def on_clicks(batch: mf.RecordBatch) -> None:
    pass


other_app = mf.App("other")


@other_app.function
def stranger() -> None:
    pass


def test_invoke_by_name_or_handle_and_spawn_map_batch_stats():
    with app.run_sync() as faas:
        assert faas.invoke("double", 21) == 42
        assert faas.invoke(double, 4) == 8
        call = faas.spawn(double, 5)
        assert isinstance(call, SyncCall)
        assert call.result(timeout=30) == 10
        assert call.status is mf.CallStatus.SUCCEEDED
        assert list(faas.map(double, range(6))) == [0, 2, 4, 6, 8, 10]
        job = faas.batch(double, [1, 2, 3])
        job.wait(timeout=30)
        assert job.results() == [2, 4, 6]
        assert job.progress == (3, 0, 3)
        stats = faas.stats(double)
        assert stats.invocations == 2 + 6 + 3 + 1
        assert {c.function for c in faas.containers()} >= {"double"}
        assert faas.function_names() == list(app.functions)
        assert [e.kind for e in faas.events("cold_start", function="double")]


def test_the_same_errors_as_the_async_api():
    with app.run_sync() as faas:
        with pytest.raises(mf.FunctionError) as info:
            faas.invoke(fail, "nope")
        assert info.value.remote_type == "builtins.ValueError"
        assert "nope" in info.value.remote_traceback
        with pytest.raises(mf.UnknownFunction, match="no function 'missing'"):
            faas.invoke("missing")
        with pytest.raises(mf.UnknownFunction, match="belongs to app 'other'"):
            faas.invoke(stranger)
        with pytest.raises(mf.FunctionError):
            faas.spawn(fail, "later").result(timeout=30)
        with pytest.raises(mf.FunctionError):
            list(faas.map(fail, ["in a map"]))
    with pytest.raises(mf.PlatformClosed, match="run_sync"):
        faas.invoke(double, 1)


def test_call_result_timeout_leaves_the_call_running(fifo):
    with app.run_sync() as faas:
        call = faas.spawn(wait_for, fifo)
        with pytest.raises(TimeoutError):
            call.result(timeout=0.05)
        assert not call.done()
        release(fifo, "done")
        assert call.result(timeout=30) == "done"


def test_topics_streams_and_drain():
    with app.run_sync() as faas:
        message_id = faas.topic("orders").publish({"id": 1}, attributes={"k": "v"})
        assert isinstance(message_id, str)
        record = faas.stream("clicks").put({"page": "/"}, key="user-1")
        assert record.key == "user-1"
        faas.drain(timeout=30)
        assert faas.stats(on_order).invocations == 1
        assert faas.stream("clicks").lag() == {0: 0, 1: 0}
        assert faas.dead_letters(on_order) == []


def test_every_platform_method_has_a_blocking_twin():
    with app.run_sync() as faas:
        for name, member in inspect.getmembers(mf.Platform):
            if name.startswith("_"):
                continue
            twin = getattr(faas, name)
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                assert callable(twin), name
                assert not inspect.iscoroutinefunction(twin), name
                assert not inspect.isasyncgenfunction(twin), name
        # Ones reached through the generic twin (not spelled out in SyncPlatform).
        assert faas.function("double").name == "double"
        assert faas.invoke("double", 3) == 6
        assert faas.process_ids()  # the zygote and the container that ran double


def test_many_threads_at_once():
    results: dict[int, list[int]] = {}

    def caller(t: int) -> None:
        results[t] = [faas.invoke(double, t * 1000 + i) for i in range(200)]

    with app.run_sync() as faas:
        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {t: [2 * (t * 1000 + i) for i in range(200)] for t in range(8)}


def test_leaving_the_block_by_an_exception_stops_every_process():
    with pytest.raises(RuntimeError, match="boom"), app.run_sync() as faas:
        pids = [faas.invoke(pid)]
        # The leak check (conftest) sees processes the platform's thread started.
        pids += [p.pid for p in _children()]
        assert len(pids) >= 2  # a container and its zygote
        raise RuntimeError("boom")
    psutil.wait_procs([psutil.Process(p) for p in pids if pid_alive(p)], timeout=10)
    assert not [p for p in pids if pid_alive(p)]


def test_ctrl_c_during_a_blocking_call_stops_every_process(fifo):
    """A real SIGINT while the main thread waits in faas.invoke: KeyboardInterrupt, and nothing left running."""
    before = {p.pid for p in _children()}
    with app.run_sync() as faas:
        started = faas.subscribe_events("cold_start", function="wait_for")

        def interrupt_once_started() -> None:
            with started:
                next(iter(started))
            os.kill(os.getpid(), signal.SIGINT)

        helper = threading.Thread(target=interrupt_once_started)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            faas.invoke(wait_for, fifo)
        helper.join()
        container = [c for c in faas.containers(wait_for) if c.pid is not None]
        assert container
    assert not pid_alive(container[0].pid)  # type: ignore[arg-type]
    assert not [p for p in _children() if p.pid not in before]


def test_keyboard_interrupt_in_the_block_stops_every_process():
    with pytest.raises(KeyboardInterrupt), app.run_sync() as faas:
        container_pid = faas.invoke(pid)
        raise KeyboardInterrupt
    assert not pid_alive(container_pid)


@pytest.mark.anyio
async def test_run_sync_inside_an_event_loop_points_to_app_run():
    with pytest.raises(RuntimeError, match=r"async with app\.run\(\)"), app.run_sync():
        pass


def test_a_platform_runs_once():
    faas = app.run_sync()
    with faas:
        pass
    with pytest.raises(RuntimeError, match="was started before"), faas:
        pass
