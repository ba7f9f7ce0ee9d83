"""The core runtime through `async with app.run()`: calls, lifecycle and concurrency.

Assertions are about outcomes (which container, which pid, cold or warm), never timings.
"""

from __future__ import annotations

import os
import threading
import time

import anyio
import anyio.lowlevel
import pytest

import microfaas as mf
from conftest import pid_alive

pytestmark = pytest.mark.anyio

app = mf.App("runtime")


@app.function
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function
def whoami() -> dict[str, object]:
    ctx = mf.context()
    return {
        "pid": os.getpid(),
        "invocation_id": ctx.invocation_id,
        "function_name": ctx.function_name,
        "attempt": ctx.attempt,
        "cold_start": ctx.cold_start,
        "memory_mb": ctx.memory_mb,
        "deadline_set": ctx.deadline is not None,
        "remaining_positive": 0 < ctx.remaining_time() <= 30,
        "container_id": ctx.container_id,
    }


@app.function
async def async_add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


_INITIALISED: list[int] = []


def _init() -> None:
    _INITIALISED.append(os.getpid())


@app.function(init=_init)
def init_count() -> list[int]:
    return list(_INITIALISED)


@app.function(concurrency=4, max_containers=1)
async def overlap_async(delay: float) -> tuple[int, float, float]:
    start = time.monotonic()
    await anyio.sleep(delay)
    return os.getpid(), start, time.monotonic()


@app.function(concurrency=3, max_containers=1)
def overlap_threads(delay: float) -> tuple[int, str, float, float]:
    start = time.monotonic()
    time.sleep(delay)
    return os.getpid(), threading.current_thread().name, start, time.monotonic()


@app.function(max_containers=2)
def capped(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


@app.function(min_containers=2)
def pinned() -> int:
    return os.getpid()


@app.function(idle_timeout=0.2)
def short_lived() -> int:
    return os.getpid()


@app.function
def noisy(n: int) -> int:
    import sys

    for i in range(n):
        print(f"line {i} " + "x" * 100)
        print(f"err {i} " + "y" * 100, file=sys.stderr)
    return n


async def test_invoke_runs_in_another_process():
    async with app.run() as faas:
        assert await add.invoke(1, 2) == 3
        assert await add.invoke(1, b=5) == 6
        assert await faas.invoke("add", 40, 2) == 42
        assert await async_add.invoke(2, 3) == 5
        info = await whoami.invoke()
        assert info["pid"] != os.getpid()
        assert info["function_name"] == "whoami"
        assert info["memory_mb"] == 128
        assert info["attempt"] == 1
        assert info["deadline_set"] and info["remaining_positive"]


async def test_first_call_is_cold_then_warm_on_the_same_container():
    async with app.run() as faas:
        first = await whoami.invoke()
        second = await whoami.invoke()
        assert first["cold_start"] is True
        assert second["cold_start"] is False
        assert first["pid"] == second["pid"]
        assert first["container_id"] == second["container_id"]
        assert first["invocation_id"] != second["invocation_id"]
        stats = faas.stats("whoami")
        assert (stats.invocations, stats.cold_starts, stats.warm_starts, stats.errors) == (2, 1, 1, 0)
        assert stats.containers_started == 1
        assert stats.containers["idle"] == 1
        assert stats.latency.count == 2 and stats.latency.p50 is not None
        assert stats.init_time.count == 1
        [info] = faas.containers("whoami")
        assert info.state == mf.ContainerState.IDLE
        assert info.pid == first["pid"]
        assert info.node == "n-1"
        assert info.calls == 2
        assert not info.pinned
        assert info.start_s is not None and info.load_s is not None and info.init_s is not None
        assert 0 <= info.load_s + info.init_s <= info.start_s


async def test_init_runs_once_per_container():
    async with app.run():
        first = await init_count.invoke()
        second = await init_count.invoke()
        assert len(first) == 1
        assert first == second


async def test_spawn_returns_a_call_with_its_result():
    async with app.run():
        call = await add.spawn(2, 2)
        assert isinstance(call, mf.Call)
        assert await call.result(timeout=30) == 4
        assert call.status == mf.CallStatus.SUCCEEDED
        assert call.done()


async def test_map_yields_results_in_input_order():
    async with app.run():
        results = [r async for r in add.map(range(20), range(100, 120))]
        assert results == [a + b for a, b in zip(range(20), range(100, 120), strict=True)]


async def test_map_with_return_exceptions_yields_errors_in_place():
    @app.function(name="maybe_fail")
    def maybe_fail(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    try:
        async with app.run():
            out = [r async for r in maybe_fail.map([1, 2, 3], return_exceptions=True)]
            assert out[0] == 1 and out[2] == 3
            assert isinstance(out[1], mf.FunctionError) and out[1].remote_message == "two"
            with pytest.raises(mf.FunctionError):
                async for _ in maybe_fail.map([1, 2, 3]):
                    pass
    finally:
        app._functions.pop("maybe_fail")


async def test_async_handlers_share_a_container_up_to_concurrency():
    async with app.run():
        async with anyio.create_task_group() as tg:
            results: list[tuple[int, float, float]] = []

            async def one() -> None:
                results.append(await overlap_async.invoke(0.5))

            for _ in range(4):
                tg.start_soon(one)
        assert len({pid for pid, _, _ in results}) == 1
        latest_start = max(start for _, start, _ in results)
        earliest_end = min(end for _, _, end in results)
        assert latest_start < earliest_end  # all four were running at the same moment


async def test_sync_handlers_run_in_threads_up_to_concurrency():
    async with app.run():
        async with anyio.create_task_group() as tg:
            results: list[tuple[int, str, float, float]] = []

            async def one() -> None:
                results.append(await overlap_threads.invoke(0.5))

            for _ in range(3):
                tg.start_soon(one)
        assert len({r[0] for r in results}) == 1
        assert len({r[1] for r in results}) == 3
        assert max(r[2] for r in results) < min(r[3] for r in results)


async def test_max_containers_caps_a_function_and_calls_wait():
    async with app.run() as faas:
        async with anyio.create_task_group() as tg:
            pids: list[int] = []

            async def one() -> None:
                pids.append(await capped.invoke(0.1))

            for _ in range(8):
                tg.start_soon(one)
        assert len(pids) == 8
        assert len(set(pids)) <= 2
        assert faas.stats("capped").containers_started <= 2


async def test_min_containers_are_pinned_started_with_the_platform_and_replaced():
    async with app.run() as faas:
        infos = faas.containers("pinned")
        assert len(infos) == 2
        assert all(i.pinned and i.state == mf.ContainerState.IDLE for i in infos)
        first = await pinned.invoke()
        assert first in {i.pid for i in infos}
        assert faas.stats("pinned").cold_starts == 0
        victim = infos[0].pid
        assert victim is not None
        os.kill(victim, 9)
        with anyio.fail_after(10):
            while True:
                pids = {i.pid for i in faas.containers("pinned") if i.state == mf.ContainerState.IDLE}
                if len(pids) == 2 and victim not in pids:
                    break
                await anyio.sleep(0.02)
        assert not pid_alive(victim)


async def test_idle_containers_are_released_after_idle_timeout():
    async with app.run() as faas:
        pid = await short_lived.invoke()
        with anyio.fail_after(10):
            while faas.containers("short_lived"):
                await anyio.sleep(0.02)
        with anyio.fail_after(5):
            while pid_alive(pid):
                await anyio.sleep(0.02)
        again = await short_lived.invoke()
        assert again != pid
        assert faas.stats("short_lived").cold_starts == 2


async def test_most_recently_used_idle_container_is_reused_first():
    async with app.run():
        async with anyio.create_task_group() as tg:
            pids: list[int] = []

            async def one() -> None:
                pids.append(await capped.invoke(0.3))

            tg.start_soon(one)
            tg.start_soon(one)
        assert len(set(pids)) == 2
        # Finish one container's call last: it becomes the most recently used.
        async with anyio.create_task_group() as tg:
            order: list[int] = []

            async def timed(delay: float) -> None:
                order.append(await capped.invoke(delay))

            tg.start_soon(timed, 0.05)
            tg.start_soon(timed, 0.4)
        newest = order[-1]
        assert await capped.invoke(0) == newest


async def test_five_hundred_concurrent_invocations_all_resolve():
    async with app.run(nodes=mf.LocalNodes()) as faas:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await add.invoke(i, 1)

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
        assert results == {i: i + 1 for i in range(500)}
        stats = faas.stats("add")
        assert stats.invocations == 500
        assert stats.cold_starts + stats.warm_starts == 500
        assert stats.errors == 0


async def test_a_handler_flooding_stdout_and_stderr_does_not_disturb_the_protocol(capfd):
    async with app.run():
        assert await noisy.invoke(3000) == 3000
        assert await add.invoke(1, 1) == 2
    out, err = capfd.readouterr()
    assert "line 2999" in out
    assert "err 2999" in err


async def test_nested_functions_and_closures_work():
    local_app = mf.App("closures")
    factor = 7

    @local_app.function
    def scaled(x: int) -> int:
        return x * factor

    offset = local_app.function(lambda x: x + factor, name="offset")

    async with local_app.run():
        assert await scaled.invoke(6) == 42
        assert await offset.invoke(1) == 8


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
async def test_start_methods(start_method):
    async with app.run(nodes=mf.LocalNodes(start_method=start_method)) as faas:
        info = await whoami.invoke()
        assert info["cold_start"] is True
        assert (await whoami.invoke())["pid"] == info["pid"]
        assert await async_add.invoke(1, 1) == 2
        [container] = faas.containers("whoami")
        assert container.pid == info["pid"]


async def test_unknown_function_is_named():
    async with app.run() as faas:
        with pytest.raises(mf.UnknownFunction, match="no function 'nope'"):
            await faas.invoke("nope")
        with pytest.raises(mf.UnknownFunction):
            faas.stats("nope")


async def test_an_idle_platform_does_not_spin():
    async with app.run() as faas:
        await add.invoke(1, 1)  # a container goes idle: its expiry is the next wake, minutes away
        ticks = 0
        tick = faas._runtime.cluster.sched.tick

        def counting_tick(*, now: float) -> list[object]:
            nonlocal ticks
            ticks += 1
            return tick(now=now)

        faas._runtime.cluster.sched.tick = counting_tick  # type: ignore[method-assign]
        await add.invoke(2, 2)
        await anyio.sleep(0.3)
        assert ticks <= 2, f"the keep-alive timer ran {ticks} times with nothing due"


policy_app = mf.App("policies")


@policy_app.function(idle_timeout=None)
def square(x: int) -> int:
    return x * x


async def test_a_learned_policy_runs_live_and_its_spares_start():
    async with policy_app.run(keep_alive=mf.AdaptiveKeepAlive()) as faas:
        async with anyio.create_task_group() as tg:
            results: dict[int, int] = {}

            async def call(x: int) -> None:
                results[x] = await square.invoke(x)

            for x in range(3):
                tg.start_soon(call, x)
        assert results == {0: 0, 1: 1, 2: 4}
        # The last call left no free container: a spare was started beside the ones calls used.
        with anyio.fail_after(30):
            while any(c.state is mf.ContainerState.STARTING for c in faas.containers("square")):
                await anyio.sleep(0.05)
        stats = faas.stats("square")
        assert stats.containers_started >= stats.cold_starts + 1
        assert any(c.state is mf.ContainerState.IDLE and c.calls == 0 for c in faas.containers("square"))
        assert await square.invoke(5) == 25
