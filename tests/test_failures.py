"""Failure is precise and local: each fault gives its own error, and the next call is healthy."""

from __future__ import annotations

import os
import signal
import threading
import time

import anyio
import pytest

import microfaas as mf
from conftest import pid_alive

pytestmark = pytest.mark.anyio

app = mf.App("failures")


class Boom(Exception):
    pass


@app.function
def healthy() -> int:
    return os.getpid()


@app.function
def raises(message: str) -> None:
    raise Boom(message)


@app.function(timeout=0.5)
def sleeps(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.function(memory_mb=64, timeout=20)
def hog(mb: int) -> int:
    block = b"\x01" * (mb * 2**20)
    time.sleep(10)
    return len(block)


@app.function
def exits(code: int) -> None:
    os._exit(code)


@app.function
def kills_itself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _bad_init() -> None:
    raise RuntimeError("no database")


@app.function(init=_bad_init)
def never_ready() -> None:
    pass


@app.function
def echo(x: object) -> object:
    return x


@app.function
def returns_unpicklable() -> object:
    return threading.Lock()


@app.function(concurrency=2, max_containers=1, timeout=0.5)
async def shared(seconds: float) -> int:
    await anyio.sleep(seconds)
    return os.getpid()


async def test_handler_error_carries_the_remote_details():
    async with app.run() as faas:
        with pytest.raises(mf.FunctionError) as info:
            await raises.invoke("out of stock")
        err = info.value
        assert err.remote_type.endswith("Boom")
        assert err.remote_message == "out of stock"
        assert "raise Boom(message)" in err.remote_traceback
        assert err.function_name == "raises"
        assert err.invocation_id and err.container_id and err.node_id == "n-1"
        # A handler error does not cost the container.
        with pytest.raises(mf.FunctionError):
            await raises.invoke("again")
        assert faas.stats("raises").containers_started == 1
        assert faas.stats("raises").errors == 2


async def test_timeout_kills_the_container_and_the_next_call_is_healthy():
    async with app.run() as faas:
        first_pid = await sleeps.invoke(0)
        with pytest.raises(mf.FunctionTimeout, match=r"ran past timeout=0.5s .* the container was killed"):
            await sleeps.invoke(30)
        with anyio.fail_after(5):
            while pid_alive(first_pid):
                await anyio.sleep(0.02)
        second_pid = await sleeps.invoke(0)
        assert second_pid != first_pid
        stats = faas.stats("sleeps")
        assert (stats.timeouts, stats.errors, stats.containers_started) == (1, 1, 2)


async def test_memory_over_the_limit_kills_the_container():
    async with app.run() as faas:
        with pytest.raises(mf.OutOfMemory, match=r"used \d+ MB, over memory_mb=64"):
            await hog.invoke(200)
        assert faas.stats("hog").out_of_memory == 1
        assert await healthy.invoke() > 0


@pytest.mark.parametrize(("fn", "expected"), [("exits", "exited with code 3"), ("kills_itself", "killed by SIGKILL")])
async def test_a_dying_worker_is_a_container_crash(fn, expected):
    async with app.run() as faas:
        handle = app.handle(fn)
        args = (3,) if fn == "exits" else ()
        with pytest.raises(mf.ContainerCrashed, match=expected):
            await handle.invoke(*args)
        assert faas.stats(fn).crashes == 1
        assert faas.containers(fn) == []
        # The platform keeps serving; other containers are untouched.
        assert await healthy.invoke() > 0
        with pytest.raises(mf.ContainerCrashed):
            await handle.invoke(*args)
        assert faas.stats(fn).containers_started == 2


async def test_init_error_is_a_cold_start_failure_carrying_the_remote_error():
    async with app.run() as faas:
        with pytest.raises(mf.ColdStartFailed) as info:
            await never_ready.invoke()
        assert info.value.remote_type == "builtins.RuntimeError"
        assert info.value.remote_message == "no database"
        assert "_bad_init" in (info.value.remote_traceback or "")
        assert faas.containers("never_ready") == []
        assert await healthy.invoke() > 0


async def test_a_container_that_is_never_ready_is_a_cold_start_failure(monkeypatch):
    import microfaas.runtime.cluster

    monkeypatch.setattr(microfaas.runtime.cluster, "MIN_START_TIMEOUT", 0.5)
    local_app = mf.App("slow_init")

    @local_app.function(init=lambda: time.sleep(30), timeout=0.2)
    def stuck() -> None:
        pass

    async with local_app.run() as faas:
        with pytest.raises(mf.ColdStartFailed, match=r"not ready within 0.5s"):
            await stuck.invoke()
        assert faas.containers("stuck") == []


async def test_unpicklable_argument_costs_no_container():
    async with app.run() as faas:
        with pytest.raises(mf.SerializationError, match="arguments could not be pickled"):
            await echo.invoke(threading.Lock())
        assert faas.stats("echo").containers_started == 0
        assert await echo.invoke({"ok": [1, 2]}) == {"ok": [1, 2]}


async def test_unpicklable_result_is_a_serialization_error():
    async with app.run():
        with pytest.raises(mf.SerializationError, match="could not be pickled"):
            await returns_unpicklable.invoke()
        assert await echo.invoke(5) == 5


async def test_a_timeout_kills_the_other_calls_sharing_its_container():
    async with app.run():
        results: dict[str, object] = {}

        async def run(key: str, seconds: float) -> None:
            try:
                results[key] = await shared.invoke(seconds)
            except mf.FaaSError as exc:
                results[key] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "slow", 30)
            tg.start_soon(run, "also_slow", 30)
        assert {type(r) for r in results.values()} <= {mf.FunctionTimeout, mf.ContainerCrashed}
        assert any(isinstance(r, mf.FunctionTimeout) for r in results.values())
        assert isinstance(await shared.invoke(0), int)


async def test_calls_after_close_raise_platform_closed():
    async with app.run() as faas:
        assert await healthy.invoke() > 0
    with pytest.raises(mf.PlatformClosed):
        await healthy.invoke()
    with pytest.raises(mf.PlatformClosed):
        await faas.invoke("healthy")


async def test_spawned_call_failure_and_cancel():
    async with app.run():
        call = await raises.spawn("later")
        with pytest.raises(mf.FunctionError, match="later"):
            await call.result()
        assert call.status == mf.CallStatus.FAILED
        slow = await sleeps.spawn(0.4)
        slow.cancel()
        with pytest.raises(mf.CallCancelled):
            await slow.result()
        assert slow.status == mf.CallStatus.CANCELLED


async def test_spawn_retries_then_reports_the_last_error():
    local_app = mf.App("retrying")

    @local_app.function(retries=mf.Retries(max_retries=2, initial_delay=0.01, jitter=False))
    def flaky() -> int:
        attempt = mf.context().attempt
        if attempt < 3:
            raise RuntimeError(f"attempt {attempt}")
        return attempt

    @local_app.function(retries=mf.Retries(max_retries=1, initial_delay=0.01))
    def always_fails() -> None:
        raise RuntimeError("never")

    async with local_app.run():
        call = await flaky.spawn()
        assert await call.result() == 3
        assert call.attempts == 3
        bad = await always_fails.spawn()
        with pytest.raises(mf.FunctionError, match="never"):
            await bad.result()
        assert bad.attempts == 2


async def test_throttled_past_the_queue_limit():
    async with app.run(queue_limit=1) as faas:
        results: list[object] = []

        async def one() -> None:
            try:
                results.append(await sleeps.invoke(0.2))
            except mf.Throttled as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        throttled = [r for r in results if isinstance(r, mf.Throttled)]
        assert throttled, results
        assert faas.stats("sleeps").throttles == len(throttled)


@app.function(max_containers=1)
def brief(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def test_cancelled_callers_never_keep_a_slot():
    import random

    rng = random.Random(7)
    async with app.run() as faas:
        await brief.invoke(0)

        async def impatient() -> None:
            with anyio.move_on_after(rng.uniform(0, 0.05)):
                await brief.invoke(0.01)

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(impatient)
        with anyio.fail_after(30):  # with one container of one slot, a leaked slot would hang this
            assert await brief.invoke(0) > 0
        [container] = faas.containers("brief")
        assert container.state == mf.ContainerState.IDLE
