"""Topics: fan-out to every subscription, batches, partial failures, retries, dead letters, backpressure."""

from __future__ import annotations

import os
import pathlib

import anyio
import pytest

import microfaas as mf
from conftest import Gate, HandlerLog

pytestmark = pytest.mark.anyio

app = mf.App("topics")
orders = app.topic("orders")
audit = app.topic("audit")
# Handlers run in other processes: they report what they did in this log.
LOG = HandlerLog("topics")


@app.function(triggers=[orders.subscribe()])
def bill(msg: mf.Message) -> None:
    LOG.write(f"bill {msg.data['id']} {msg.attributes.get('src', '')}")


# A batch ships as soon as it holds five messages (the window is only a bound on waiting for them).
@app.function(triggers=[orders.subscribe(batch_size=5, batch_window=30.0)])
def ship(batch: list[mf.Message]) -> mf.BatchResult:
    failed = []
    for msg in batch:
        if msg.data["id"] == 3 and msg.attempt == 1:
            failed.append(msg.id)  # fails once, then succeeds
        elif msg.data["id"] == 4:
            failed.append(msg.id)  # always fails
        else:
            LOG.write(f"ship {msg.data['id']} attempt={msg.attempt}")
    return mf.BatchResult(failed=failed)


@app.function(triggers=[audit.subscribe(max_retries=1)], retries=mf.Retries(0, initial_delay=0.01))
def dies_on_first_attempt(msg: mf.Message) -> None:
    if msg.attempt == 1:
        os._exit(9)
    LOG.write(f"audit {msg.data} attempt={msg.attempt}")


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


async def test_publish_fans_out_to_every_subscription():
    async with app.run() as faas:
        for i in range(1, 6):
            message_id = await faas.topic("orders").publish({"id": i}, attributes={"src": "web"})
            assert isinstance(message_id, str)
        await faas.drain(timeout=60)
        billed = sorted(line for line in LOG.lines() if line.startswith("bill"))
        assert billed == [f"bill {i} web" for i in range(1, 6)]
        shipped = sorted(line for line in LOG.lines() if line.startswith("ship"))
        assert shipped == ["ship 1 attempt=1", "ship 2 attempt=1", "ship 3 attempt=2", "ship 5 attempt=1"]
        [letter] = faas.dead_letters("ship")
        assert letter.source == "topic:orders"
        assert isinstance(letter.event, mf.Message) and letter.event.data == {"id": 4}
        assert letter.attempts == 3  # the first try and max_retries=2
        assert faas.dead_letters("bill") == []
        # One invocation per message for bill; for ship one batch of all five, then its retries: [3, 4], then [4].
        assert faas.stats("bill").invocations == 5
        assert faas.stats("ship").invocations == 3


async def test_a_container_dying_on_the_first_attempt_loses_no_message():
    async with app.run() as faas:
        for i in range(3):
            await faas.topic("audit").publish(i)
        await faas.drain(timeout=60)
        assert sorted(LOG.lines()) == [f"audit {i} attempt=2" for i in range(3)]
        assert faas.dead_letters("dies_on_first_attempt") == []
        assert faas.stats("dies_on_first_attempt").crashes == 3  # each message's first attempt, once


async def test_publish_waits_when_a_buffer_is_full_and_drops_nothing(tmp_path: pathlib.Path):
    small = mf.App("backpressure")
    topic = small.topic("t")
    got = small.topic("results")

    gate = Gate(tmp_path / "gate")
    path = gate.path

    @small.function(triggers=[topic.subscribe(buffer_size=2, max_concurrency=1)])
    def slow(msg: mf.Message) -> None:
        with open(path, "rb", buffering=0) as fifo:
            fifo.read(1)  # held until the test lets it go
        LOG.write(f"slow {msg.data}")

    try:
        async with small.run() as faas:
            published = 0
            async with anyio.create_task_group() as tg:

                async def publisher() -> None:
                    nonlocal published
                    for i in range(12):
                        await faas.topic("t").publish(i)
                        published += 1

                tg.start_soon(publisher)
                await anyio.wait_all_tasks_blocked()
                # The handler is held: the publisher is stuck on the full buffer, not done.
                assert 0 < published < 12
                gate.release(12)
            await faas.drain(timeout=60)
            assert sorted(int(line.split()[1]) for line in LOG.lines()) == list(range(12))
            with pytest.raises(mf.UnknownSource, match="no topic 'nope'"):
                faas.topic("nope")
            # A topic nobody subscribes to still takes messages (and drops them).
            assert isinstance(await faas.topic(got.name).publish("nobody listens"), str)
    finally:
        gate.close()


def test_subscription_settings_are_validated():
    with pytest.raises(ValueError, match="batch_size"):
        orders.subscribe(batch_size=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        orders.subscribe(max_concurrency=0)
    with pytest.raises(ValueError, match="topic name"):
        app.topic("bad name")
