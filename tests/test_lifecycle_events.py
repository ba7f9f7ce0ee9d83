"""Lifecycle events: the ordered record of cold and warm starts, releases, evictions, nodes, failures, retries, dead letters."""

from __future__ import annotations

import os
import time

import anyio
import pytest

import microfaas as mf
from microfaas import lifecycle as ev
from microfaas.testing import running

pytestmark = pytest.mark.anyio

app = mf.App("lifecycle")
orders = app.topic("orders")
FAST = mf.Retries(1, initial_delay=0.01, jitter=False)


@app.function(idle_timeout=0.2)
def echo(x: int) -> int:
    return x


@app.function(retries=FAST)
def fails(x: int) -> int:
    raise ValueError(f"bad {x}")


@app.function(timeout=0.5, retries=mf.Retries(0))
def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(retries=mf.Retries(0))
def dies() -> None:
    os._exit(3)


@app.function(triggers=[orders.subscribe(max_retries=1)], retries=FAST)
def bill(msg: mf.Message) -> None:
    if msg.data == "poison":
        raise ValueError("poison")


def kinds(events: list[mf.LifecycleEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_the_second_call_is_warm_and_a_cold_start_reports_its_init_time():
    async with running(app) as faas:
        await faas.invoke("echo", 1)
        await faas.invoke("echo", 2)
        starts = faas.events(kind=[ev.COLD_START, ev.WARM_START], function="echo")
        assert kinds(starts) == ["cold_start", "warm_start"]
        cold, warm = starts
        assert cold.container == warm.container
        assert cold.node is not None and cold.function == "echo"
        assert {"start_s", "load_s", "init_s", "invocation_id", "attempt"} <= set(cold.detail)
        assert cold.detail["start_s"] >= cold.detail["init_s"] >= 0
        [started] = faas.events(ev.CONTAINER_STARTED, function="echo")
        assert started.container == cold.container and started.detail["pinned"] is False
        # The record is ordered: the node came first (its zygote preloaded the app's module
        # as it came up), the container was ready before its first call.
        everything = faas.events()
        assert [e.kind for e in everything[:2]] == [ev.ZYGOTE_PRELOADED, ev.NODE_ACQUIRED]
        assert everything.index(started) < everything.index(cold)
        assert [e.time for e in everything] == sorted(e.time for e in everything)


async def test_idle_release_and_container_exit_are_recorded():
    async with running(app) as faas:
        await faas.invoke("echo", 1)
        with faas.subscribe_events(ev.CONTAINER_EXITED, function="echo") as exits:
            with anyio.fail_after(30):
                exited = await exits.receive()  # the container outlives idle_timeout=0.2 s
        [released] = faas.events(ev.IDLE_RELEASE)
        assert released.function == "echo" and released.container == exited.container
        assert released.detail["reason"] == "idle"
        # A call after the release is a cold start in a new container.
        await faas.invoke("echo", 2)
        cold = faas.events(ev.COLD_START, function="echo")
        assert len(cold) == 2 and cold[0].container != cold[1].container


async def test_eviction_is_recorded():
    small = mf.App("evict")

    @small.function(memory_mb=100, idle_timeout=60)
    def a() -> str:
        return "a"

    @small.function(memory_mb=100, idle_timeout=60)
    def b() -> str:
        return "b"

    async with running(small, nodes=mf.LocalNodes(node_memory_mb=150)) as faas:
        await faas.invoke("a")
        await faas.invoke("b")  # no room on the one node: a's idle container is evicted
        [evicted] = faas.events(ev.EVICTION)
        assert evicted.function == "a" and evicted.detail["reason"] == "evicted"
        assert kinds(faas.events(ev.COLD_START)) == ["cold_start", "cold_start"]


async def test_node_acquire_and_release():
    async with running(app, nodes=mf.LocalNodes(min_nodes=0, release_after=0.0)) as faas:
        await faas.invoke("echo", 1)
        with faas.subscribe_events(ev.NODE_RELEASED, replay=True) as released:
            with anyio.fail_after(30):
                event = await released.receive()  # the container is released when idle, then its node
        [acquired] = faas.events(ev.NODE_ACQUIRED)
        assert event.node == acquired.node and event.detail["reason"] == "empty"


async def test_timeout_crash_and_handler_errors_are_recorded():
    async with running(app) as faas:
        with pytest.raises(mf.FunctionTimeout):
            await faas.invoke("sleeps", 5)
        with pytest.raises(mf.ContainerCrashed):
            await faas.invoke("dies")
        with pytest.raises(mf.FunctionError):
            await faas.invoke("fails", 1)
        [timeout] = faas.events(ev.TIMEOUT)
        assert timeout.function == "sleeps" and timeout.detail["injected"] is False
        [crash] = faas.events(ev.CRASH)
        assert crash.function == "dies" and crash.container is not None
        [error] = faas.events(ev.FUNCTION_ERROR)
        assert error.function == "fails" and error.detail["remote_type"] == "builtins.ValueError"
        # The killed container's exit is in the record too, once the platform has seen it.
        with faas.subscribe_events(ev.CONTAINER_EXITED, function="sleeps", replay=True) as exits:
            exited = await exits.receive()
        assert exited.container == timeout.container and exited.detail["reason"] == "timeout"


async def test_retries_and_dead_letters_of_spawned_calls():
    async with running(app) as faas:
        call = await faas.spawn("fails", 7)
        with pytest.raises(mf.FunctionError):
            await call.result()
        await faas.drain(timeout=30)
        assert kinds(faas.events([ev.FUNCTION_ERROR, ev.RETRY, ev.DEAD_LETTER], function="fails")) == [
            "function_error",
            "retry",
            "function_error",
            "dead_letter",
        ]
        [retry] = faas.events(ev.RETRY)
        assert retry.detail["source"] == "spawn" and retry.detail["attempt"] == 1 and retry.detail["invocation_id"] == call.id
        [letter] = faas.events(ev.DEAD_LETTER)
        assert letter.detail["attempts"] == 2 and letter.detail["error"] == "FunctionError"


async def test_topic_retries_and_dead_letters():
    async with running(app) as faas:
        await faas.topic("orders").publish("ok")
        await faas.topic("orders").publish("poison")
        await faas.drain(timeout=30)
        [retry] = faas.events(ev.RETRY, function="bill")
        assert retry.detail["source"] == "topic:orders"
        [letter] = faas.events(ev.DEAD_LETTER, function="bill")
        assert letter.detail["source"] == "topic:orders" and letter.detail["attempts"] == 2


async def test_subscribers_get_later_events_and_their_stream_ends_when_the_platform_stops():
    seen: list[str] = []
    async with anyio.create_task_group() as tg, running(app) as faas:
        stream = faas.subscribe_events([ev.COLD_START, ev.WARM_START])

        async def follow() -> None:
            async with stream:
                async for event in stream:
                    seen.append(event.kind)

        tg.start_soon(follow)
        await faas.invoke("echo", 1)
        await faas.invoke("echo", 2)
        # Leaving the platform ends every subscription; follow() returns.
    assert seen == ["cold_start", "warm_start"]
    assert faas.subscribe_events(replay=True).receive_nowait().kind == ev.ZYGOTE_PRELOADED  # after the stop: the past only


async def test_unknown_kinds_are_rejected():
    async with running(app) as faas:
        with pytest.raises(ValueError, match="unknown lifecycle event kind"):
            faas.events("cold-start")
        with pytest.raises(ValueError, match="cold_start"):
            faas.subscribe_events(["warm_start", "nope"])


async def test_the_log_is_capped_outside_tests():
    async with app.run() as faas:
        assert faas._runtime.lifecycle._events.maxlen == ev.EVENTS_KEPT
    async with running(app) as faas:
        assert faas._runtime.lifecycle._events.maxlen is None
