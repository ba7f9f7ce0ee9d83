"""Topics: fan-out to every subscription, batches, partial failures, retries, dead letters, backpressure."""

from __future__ import annotations

import os

import anyio
import pytest

import microfaas as mf
from conftest import HandlerLog

pytestmark = pytest.mark.anyio

app = mf.App("topics")
orders = app.topic("orders")
audit = app.topic("audit")
# Handlers run in other processes: they report what they did in this log.
LOG = HandlerLog("topics")


@app.function(triggers=[orders.subscribe()])
def bill(msg: mf.Message) -> None:
    LOG.write(f"bill {msg.data['id']} {msg.attributes.get('src', '')}")


@app.function(triggers=[orders.subscribe(batch_size=10, batch_window=0.2)])
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
        # Batching: ship got fewer invocations than messages.
        assert faas.stats("ship").invocations < faas.stats("bill").invocations + 2


async def test_a_container_dying_on_the_first_attempt_loses_no_message():
    async with app.run() as faas:
        for i in range(3):
            await faas.topic("audit").publish(i)
        await faas.drain(timeout=60)
        assert sorted(LOG.lines()) == [f"audit {i} attempt=2" for i in range(3)]
        assert faas.dead_letters("dies_on_first_attempt") == []
        assert faas.stats("dies_on_first_attempt").crashes >= 3


async def test_publish_waits_when_a_buffer_is_full_and_drops_nothing():
    small = mf.App("backpressure")
    topic = small.topic("t")
    got = small.topic("results")

    @small.function(triggers=[topic.subscribe(buffer_size=2, max_concurrency=1)])
    def slow(msg: mf.Message) -> None:
        import time

        time.sleep(0.05)
        LOG.write(f"slow {msg.data}")

    async with small.run() as faas:
        published = 0
        async with anyio.create_task_group() as tg:

            async def publisher() -> None:
                nonlocal published
                for i in range(12):
                    await faas.topic("t").publish(i)
                    published += 1

            tg.start_soon(publisher)
            await anyio.sleep(0.05)
            assert published < 12  # publish is waiting on the full buffer
        await faas.drain(timeout=60)
        assert sorted(int(line.split()[1]) for line in LOG.lines()) == list(range(12))
        with pytest.raises(mf.UnknownSource, match="no topic 'nope'"):
            faas.topic("nope")
        assert got.name == "results"


def test_subscription_settings_are_validated():
    with pytest.raises(ValueError, match="batch_size"):
        orders.subscribe(batch_size=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        orders.subscribe(max_concurrency=0)
    with pytest.raises(ValueError, match="topic name"):
        app.topic("bad name")
