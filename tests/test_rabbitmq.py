"""mf.RabbitMQ against a real RabbitMQ node (tests/servers.py): delivery, acknowledgement,
batches, dead letters (microfaas's and the queue's dead-letter exchange), bad input, a
platform killed with SIGKILL and started again, and the broker restarted mid-stream."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import microfaas as mf
from conftest import HandlerLog, wait_until
from platform_process import handled, kill_with_everything_it_started, start_child, wait_for_lines
from servers import free_port

try:
    import aio_pika
except ImportError:  # the connectors extra: these tests are not in the default run
    aio_pika = None

pytestmark = [pytest.mark.connectors, pytest.mark.anyio]

LOG = HandlerLog("rabbitmq")


def note(msg: mf.Message) -> None:
    LOG.write(json.dumps({"id": msg.id, "data": msg.data, "attributes": msg.attributes, "attempt": msg.attempt}, default=repr))


def fail_odd_once(batch: list[mf.Message]) -> mf.BatchResult:
    for msg in batch:
        LOG.write(f"{msg.data} {msg.attempt}")
    return mf.BatchResult(failed=[m.id for m in batch if m.data % 2 and m.attempt == 1])


def always_fails(msg: mf.Message) -> None:
    raise ValueError(f"cannot take {msg.data}")


def slow(msg: mf.Message) -> None:
    import time

    time.sleep(0.02)
    LOG.write(str(msg.data))


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    LOG.clear()


@pytest.fixture
async def queue(rabbitmq_server: Any) -> AsyncIterator[str]:
    """A new queue's name; deleted after the test."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    yield name
    async with await aio_pika.connect(rabbitmq_server.url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


async def publish(url: str, queue: str, bodies: list[Any], *, declare: bool = True, **properties: Any) -> None:
    """Publish each body (JSON) to ``queue`` through the default exchange, persistent, with publisher confirms."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        if declare:
            await channel.declare_queue(queue, durable=True)
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            properties.setdefault("content_type", "application/json")
            message = aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)
            await channel.default_exchange.publish(message, routing_key=queue)


async def ready_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a message delivered and not acknowledged is back once its consumer is gone)."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def app_with(handler: Any, trigger: mf.RabbitMQ, **settings: Any) -> mf.App:
    app = mf.App(f"rmq-{uuid.uuid4().hex[:6]}")
    app.function(triggers=[trigger], **settings)(handler)
    return app


async def test_each_message_reaches_the_handler_with_its_properties_and_is_acknowledged(rabbitmq_server: Any, queue: str) -> None:
    url = rabbitmq_server.url
    await publish(url, queue, [{"n": i} for i in range(5)], headers={"tenant": "acme"}, correlation_id="c-1", message_id=None)
    app = app_with(note, mf.RabbitMQ(url, queue=queue))
    async with app.run() as faas:
        await wait_until(lambda: len(LOG.lines()) == 5)
        await faas.drain(timeout=30)
    seen = [json.loads(line) for line in LOG.lines()]
    assert sorted(s["data"]["n"] for s in seen) == [0, 1, 2, 3, 4]
    first = seen[0]
    assert first["attempt"] == 1
    assert first["attributes"]["tenant"] == "acme"
    assert first["attributes"]["correlation_id"] == "c-1"
    assert first["attributes"]["content_type"] == "application/json"
    assert first["attributes"]["routing_key"] == queue
    assert await ready_count(url, queue) == 0  # acknowledged: nothing came back when the consumer left


async def test_a_message_whose_handler_is_running_at_stop_is_not_acknowledged(rabbitmq_server: Any, queue: str, tmp_path: Path) -> None:
    from conftest import Gate

    gate = Gate(tmp_path / "gate")
    url = rabbitmq_server.url
    await publish(url, queue, [gate.path])
    app = app_with(_held, mf.RabbitMQ(url, queue=queue))
    try:
        async with app.run():
            await wait_until(lambda: LOG.lines() == ["holding"])
        assert await ready_count(url, queue) == 1  # the broker has it again, for the next consumer
    finally:
        gate.release()
        gate.close()


def _held(msg: mf.Message) -> None:
    LOG.write("holding")
    with open(msg.data, "rb") as f:
        f.read(1)


async def test_a_batch_handler_reporting_some_messages_failed_has_only_those_retried(rabbitmq_server: Any, queue: str) -> None:
    url = rabbitmq_server.url
    await publish(url, queue, list(range(8)))
    app = app_with(fail_odd_once, mf.RabbitMQ(url, queue=queue, batch_size=8, batch_window=0.5), retries=mf.Retries(2, initial_delay=0.01))
    async with app.run() as faas:
        await wait_until(lambda: len(LOG.lines()) == 12)
        await faas.drain(timeout=30)  # then the acks, which follow the handler's return
        assert faas.dead_letters("fail_odd_once") == []
    attempts: dict[int, list[int]] = {}
    for line in LOG.lines():
        data, attempt = map(int, line.split())
        attempts.setdefault(data, []).append(attempt)
    assert attempts == {i: [1, 2] if i % 2 else [1] for i in range(8)}
    assert await ready_count(url, queue) == 0


async def test_a_message_failing_every_attempt_is_dead_lettered_and_rejected_to_the_queues_dead_letter_exchange(
    rabbitmq_server: Any, queue: str
) -> None:
    url = rabbitmq_server.url
    parked = f"{queue}-parked"
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        dlx = await channel.declare_exchange(f"{queue}-dlx", aio_pika.ExchangeType.FANOUT)
        await (await channel.declare_queue(parked, durable=True)).bind(dlx)
        await channel.declare_queue(queue, durable=True, arguments={"x-dead-letter-exchange": dlx.name})
    await publish(url, queue, ["bad"], declare=False)
    app = app_with(always_fails, mf.RabbitMQ(url, queue=queue, max_retries=1), retries=mf.Retries(1, initial_delay=0.01))
    try:
        async with app.run() as faas:
            await wait_until(lambda: faas.dead_letters("always_fails"))
            await faas.drain(timeout=30)
            (letter,) = faas.dead_letters("always_fails")
            assert letter.attempts == 2
            assert letter.event.data == "bad"
            assert "cannot take bad" in str(letter.error)
        assert await ready_count(url, queue) == 0
        assert await ready_count(url, parked) == 1  # RabbitMQ routed the rejected message to the queue's dead-letter exchange
    finally:
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(parked)
            await channel.exchange_delete(f"{queue}-dlx")


async def test_a_message_that_cannot_be_decoded_goes_to_the_dead_letters_with_the_reason(rabbitmq_server: Any, queue: str) -> None:
    url = rabbitmq_server.url
    await publish(url, queue, [b"{not json", json.dumps({"n": 1}).encode()])
    app = app_with(note, mf.RabbitMQ(url, queue=queue))
    async with app.run() as faas:
        await wait_until(lambda: len(LOG.lines()) == 1 and faas.dead_letters("note"))
        (letter,) = faas.dead_letters("note")
        assert isinstance(letter.error, mf.SerializationError)
        assert "not valid JSON" in str(letter.error) and queue in str(letter.error)
        assert letter.event.data == b"{not json"
        assert letter.attempts == 0
        await faas.drain(timeout=30)  # the good message's ack follows its handler's return
    assert await ready_count(url, queue) == 0
    assert json.loads(LOG.lines()[0])["data"] == {"n": 1}


async def test_decode_bytes_hands_the_body_over_as_it_came(rabbitmq_server: Any, queue: str) -> None:
    url = rabbitmq_server.url
    await publish(url, queue, [b"\xff\x00raw"], content_type="application/octet-stream")
    app = app_with(note, mf.RabbitMQ(url, queue=queue, decode="bytes"))
    async with app.run():
        await wait_until(lambda: len(LOG.lines()) == 1)
    assert json.loads(LOG.lines()[0])["data"] == repr(b"\xff\x00raw")


async def test_an_unreachable_broker_fails_app_run_naming_the_connector_and_the_address() -> None:
    port = free_port()
    app = app_with(note, mf.RabbitMQ(f"amqp://guest:secret@127.0.0.1:{port}/", queue="orders"))
    with pytest.raises(mf.ConnectorUnreachable) as caught:
        async with app.run():
            pass
    message = str(caught.value)
    assert f"note: RabbitMQ queue 'orders' could not reach amqp://guest:***@127.0.0.1:{port}/" in message
    assert "secret" not in message


async def test_wait_for_server_starts_anyway_and_reports_each_failed_attempt() -> None:
    app = app_with(note, mf.RabbitMQ(f"amqp://127.0.0.1:{free_port()}/", queue="orders", wait_for_server=True))
    async with app.run() as faas:
        await wait_until(lambda: len(faas.events("connector_down")) >= 2)
        event = faas.events("connector_down")[0]
        assert event.function == "note"
        assert event.detail["source"] == "RabbitMQ queue 'orders'"


async def test_a_missing_queue_is_an_error_when_declare_is_false(rabbitmq_server: Any) -> None:
    app = app_with(note, mf.RabbitMQ(rabbitmq_server.url, queue=f"missing-{uuid.uuid4().hex[:6]}", declare=False))
    with pytest.raises(mf.ConnectorUnreachable, match="NOT_FOUND"):
        async with app.run():
            pass


# -- a platform killed with SIGKILL, and the broker restarted --------------------------------

MESSAGES = 40


def on_order(msg: mf.Message) -> None:
    import time

    time.sleep(0.02)  # slower than the broker: a kill finds messages delivered and not yet acknowledged
    handled(str(msg.data))


def child(url: str, queue: str) -> None:
    app = mf.App("rmq-kill")
    app.function(triggers=[mf.RabbitMQ(url, queue=queue, prefetch=10)])(on_order)

    async def serve() -> None:
        async with app.run():
            await anyio.sleep(600)  # killed before this ends

    anyio.run(serve)


async def test_a_platform_killed_mid_stream_loses_nothing_the_broker_kept(rabbitmq_server: Any, queue: str, tmp_path: Path) -> None:
    url = rabbitmq_server.url
    await publish(url, queue, list(range(MESSAGES)))
    first = start_child("test_rabbitmq", tmp_path, url, queue)
    try:
        wait_for_lines(tmp_path, 10, first)
    finally:
        kill_with_everything_it_started(first)
    second = start_child("test_rabbitmq", tmp_path, url, queue)
    try:
        deadline = anyio.current_time() + 120
        while {int(x) for x in (tmp_path / "handled").read_text().split()} != set(range(MESSAGES)):
            assert anyio.current_time() < deadline, "not every message was handled after the restart"
            await anyio.sleep(0.05)
    finally:
        kill_with_everything_it_started(second)


async def test_the_broker_killed_and_restarted_mid_stream_is_reconnected_to_and_nothing_is_lost(own_rabbitmq: Any) -> None:
    url, queue = own_rabbitmq.url, "restarted"
    await publish(url, queue, list(range(MESSAGES)))
    app = app_with(slow, mf.RabbitMQ(url, queue=queue, prefetch=5))
    async with app.run() as faas:
        await wait_until(lambda: len(LOG.lines()) >= 5)
        await anyio.to_thread.run_sync(own_rabbitmq.kill)  # SIGKILL: confirmed persistent messages are on disk
        await wait_until(lambda: faas.events("connector_down"))
        await anyio.to_thread.run_sync(own_rabbitmq.start)
        await publish(url, queue, list(range(MESSAGES, 2 * MESSAGES)))
        await wait_until(lambda: {int(x) for x in LOG.lines()} == set(range(2 * MESSAGES)), seconds=120)
        assert faas.events("connector_up")[0].detail["down_s"] > 0
        await faas.drain(timeout=30)
    assert await ready_count(url, queue) == 0
