"""Quiescence: drain waits for every source's work in flight (spawn, map, topics, streams, batch jobs, timers), or names it."""

from __future__ import annotations

import pathlib
import tempfile
import time

import anyio
import pytest

import microfaas as mf
from microfaas import lifecycle as ev
from microfaas.testing import running

pytestmark = pytest.mark.anyio

# Handlers run in other processes: they report what they handled by appending to a file.
LOG = pathlib.Path(tempfile.gettempdir()) / "microfaas-test-drain.log"

app = mf.App("drain")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)


def _log(line: str) -> None:
    with open(LOG, "a") as f:
        f.write(line + "\n")


def lines() -> list[str]:
    return LOG.read_text().splitlines() if LOG.exists() else []


@app.function(max_containers=4)
def slow(x: int) -> int:
    time.sleep(0.2)
    _log(f"slow {x}")
    return x


@app.function(triggers=[orders.subscribe(batch_size=3, batch_window=0.3)])
def bill(batch: list[mf.Message]) -> None:
    time.sleep(30 if any(msg.data == "stuck" for msg in batch) else 0.1)
    for msg in batch:
        _log(f"bill {msg.data}")


@app.function(triggers=[clicks.consume(batch_size=2)])
def count(batch: mf.RecordBatch) -> None:
    time.sleep(30 if any(r.value == "stuck" for r in batch) else 0.1)
    for r in batch:
        _log(f"count {r.value}")


timers = mf.App("drain-timers")  # apart: a timer that is running makes drain wait


@timers.function(triggers=[mf.Every(1.0, name="tick")])
def ticker(tick: mf.Tick) -> None:
    time.sleep(0.3)
    _log(f"tick done {tick.scheduled_at}")


@app.function
def stuck(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.unlink(missing_ok=True)
    yield
    LOG.unlink(missing_ok=True)


async def test_drain_waits_for_spawned_calls_started_just_before():
    async with running(app) as faas:
        calls = [await faas.spawn("slow", i) for i in range(6)]
        await faas.drain(timeout=60)
        assert all(call.done() for call in calls)
        assert sorted(lines()) == [f"slow {i}" for i in range(6)]


async def test_drain_waits_for_map_calls_in_flight():
    async with running(app) as faas:
        results = faas.map("slow", range(3))
        assert await results.__anext__() == 0  # the others are in flight now
        await faas.drain(timeout=60)
        assert sorted(lines()) == [f"slow {i}" for i in range(3)]
        await results.aclose()


async def test_drain_waits_for_topic_messages_in_a_batch_window():
    async with running(app) as faas:
        for i in range(4):
            await faas.topic("orders").publish(i)
        await faas.drain(timeout=60)  # one batch of 3, one of 1 still waiting out its window
        assert sorted(lines()) == [f"bill {i}" for i in range(4)]


async def test_drain_waits_for_every_stream_shard():
    async with running(app) as faas:
        for i in range(7):
            await faas.stream("clicks").put(i, key=f"user-{i}")
        await faas.drain(timeout=60)
        assert sorted(lines()) == [f"count {i}" for i in range(7)]
        assert sum(faas.stream("clicks").lag().values()) == 0


async def test_drain_waits_for_a_batch_job():
    async with running(app) as faas:
        job = await faas.batch("slow", range(5), max_parallel=2)
        await faas.drain(timeout=60)
        assert job.done() and job.results() == list(range(5))


async def test_drain_waits_for_a_running_timer_invocation():
    async with running(timers) as faas:
        with faas.subscribe_events([ev.COLD_START, ev.WARM_START], function="ticker") as started:
            with anyio.fail_after(30):
                await started.receive()  # a tick is running now
        await faas.drain(timeout=60)
        assert any(line.startswith("tick done") for line in lines())


async def test_drain_names_what_is_still_pending():
    async with running(app) as faas:
        await faas.spawn("stuck", 30)
        await faas.topic("orders").publish("stuck")
        await faas.stream("clicks").put("stuck", key="k")
        await faas.batch("stuck", [30, 30], max_parallel=1)
        with pytest.raises(TimeoutError) as info:
            await faas.drain(timeout=0.5)
        message = str(info.value)
        assert "drain timed out after 0.5s" in message
        assert "1 spawned call(s) of stuck" in message
        assert "of topic 'orders' for bill" in message
        assert "of stream 'clicks' shard" in message
        assert "2 task(s) of batch job" in message
