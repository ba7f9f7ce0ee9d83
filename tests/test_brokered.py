"""What the message connectors share (sources/brokered.py), against an in-process stand-in for a
broker: acknowledgement only after handling, rejection after dead-lettering, decoding, the
connect loop (a clear error, or waiting with lifecycle events) and reconnecting.
The real brokers are in test_rabbitmq.py and test_mqtt.py (``-m connectors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import microfaas as mf
from conftest import Gate, HandlerLog, wait_until
from microfaas.events import Message
from microfaas.sources.brokered import BrokerSource, Inbound, check_delivery_settings, decode_body, new_message_id
from microfaas.sources.connector import Connector

pytestmark = pytest.mark.anyio

LOG = HandlerLog("brokered")


class Broker:
    """Messages waiting, what was acknowledged and rejected, and whether it can be reached."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, bytes, str | None]] = []  # (tag, body, content type)
        self.acked: list[str] = []
        self.rejected: list[str] = []
        self.reachable = True
        self.link: MemoryObjectSendStream[tuple[str, bytes, str | None]] | None = None

    def put(self, tag: str, body: bytes, content_type: str | None = "application/json") -> None:
        self.waiting.append((tag, body, content_type))
        if self.link is not None:
            self.link.send_nowait(self.waiting.pop())

    def drop_link(self) -> None:
        """The connection is lost (a real broker would deliver what it had not settled again)."""
        assert self.link is not None
        self.link.close()
        self.link = None


BROKERS: dict[str, Broker] = {}


@attrs.frozen
class Fake(Connector):
    broker: str
    batch_size: int = 1
    batch_window: float = 0.0
    max_retries: int = 0
    max_concurrency: int | None = None
    decode: str = "auto"
    wait_for_server: bool = False
    workers: int | None = None  # the source's deliveries in flight without max_concurrency (None: its buffer)

    def __attrs_post_init__(self) -> None:
        check_delivery_settings(f"Fake {self.broker!r}", self)

    def source(self, function: str) -> FakeSource:
        return FakeSource(self, function)


class FakeSource(BrokerSource[MemoryObjectReceiveStream[tuple[str, bytes, str | None]]]):
    def __init__(self, trigger: Fake, function: str) -> None:
        super().__init__(
            trigger, function, key=f"fake:{function}", what="Fake broker", url="fake://u:pw@host:1/", buffer=10, workers=trigger.workers
        )
        self.broker = BROKERS[trigger.broker]

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError,)

    async def open(self) -> MemoryObjectReceiveStream[tuple[str, bytes, str | None]]:
        if not self.broker.reachable:
            raise OSError("connection refused")
        send, receive = anyio.create_memory_object_stream[tuple[str, bytes, str | None]](100)
        for item in self.broker.waiting:
            send.send_nowait(item)
        self.broker.waiting.clear()
        self.broker.link = send
        return receive

    async def close(self, link: MemoryObjectReceiveStream[tuple[str, bytes, str | None]]) -> None:
        link.close()

    async def consume(self, runtime: Any, link: MemoryObjectReceiveStream[tuple[str, bytes, str | None]]) -> None:
        broker = self.broker
        async for tag, body, content_type in link:
            live = broker.link

            async def ack(tag: str = tag, live: Any = live) -> None:
                if broker.link is live:  # settle only on the link that delivered it
                    broker.acked.append(tag)

            async def reject(tag: str = tag, live: Any = live) -> None:
                if broker.link is live:
                    broker.rejected.append(tag)

            message = Message(id=tag, topic="fake", data=None)
            try:
                message = attrs.evolve(message, data=decode_body(body, content_type, self.trigger.decode))
            except mf.SerializationError as exc:
                await self.pump.dead_letter(runtime, Inbound(attrs.evolve(message, data=body), 1, ack, reject), exc)
                continue
            await self.pump.accept(runtime, Inbound(message, 1, ack, reject))


def note(msg: mf.Message) -> None:
    if msg.data == "fail":
        raise ValueError("cannot take it")
    LOG.write(f"{msg.id} {msg.data}")


def held(msg: mf.Message) -> None:
    LOG.write("holding")
    with open(msg.data, "rb") as f:
        f.read(1)


def some_fail(batch: list[mf.Message]) -> mf.BatchResult:
    for msg in batch:
        LOG.write(f"{msg.id} {msg.attempt}")
    return mf.BatchResult(failed=[m.id for m in batch if m.data == "bad"])


@pytest.fixture(autouse=True)
def fresh() -> None:
    LOG.clear()
    BROKERS.clear()


def app_with(handler: Any, broker: Broker, **trigger: Any) -> mf.App:
    BROKERS["b"] = broker
    app = mf.App("brokered")
    app.function(triggers=[Fake("b", **trigger)], retries=mf.Retries(trigger.get("max_retries", 0), initial_delay=0.01))(handler)
    return app


async def test_handled_messages_are_acked_and_dead_lettered_ones_rejected_after_it() -> None:
    broker = Broker()
    broker.put("m1", b'{"n": 1}')
    broker.put("m2", b'"fail"')
    broker.put("m3", b"{bad json")
    broker.put("m4", b"plain", content_type="text/plain")
    async with app_with(note, broker).run() as faas:
        await wait_until(lambda: len(broker.acked) + len(broker.rejected) == 4)
        await faas.drain(timeout=30)
        letters = {letter.event.id: letter for letter in faas.dead_letters("note")}
    assert sorted(broker.acked) == ["m1", "m4"]
    assert sorted(broker.rejected) == ["m2", "m3"]
    assert isinstance(letters["m3"].error, mf.SerializationError) and letters["m3"].attempts == 0
    assert "not valid JSON (content-type 'application/json')" in str(letters["m3"].error)
    assert isinstance(letters["m2"].error, mf.FunctionError)
    assert sorted(LOG.lines()) == ["m1 {'n': 1}", "m4 plain"]


async def test_a_batch_retries_only_what_the_handler_reported_and_acks_the_rest() -> None:
    broker = Broker()
    for i, body in enumerate([b'"ok"', b'"bad"', b'"ok"']):
        broker.put(f"m{i}", body)
    async with app_with(some_fail, broker, batch_size=3, batch_window=0.5, max_retries=1).run() as faas:
        await wait_until(lambda: len(broker.acked) + len(broker.rejected) == 3)
        assert [letter.event.id for letter in faas.dead_letters("some_fail")] == ["m1"]
    assert sorted(broker.acked) == ["m0", "m2"] and broker.rejected == ["m1"]
    assert sorted(LOG.lines()) == ["m0 1", "m1 1", "m1 2", "m2 1"]


def takes_lists(batch: list[mf.Message]) -> None:
    assert isinstance(batch, list), f"a batch handler was given {type(batch).__name__}"
    for msg in batch:
        LOG.write(f"{msg.id} {msg.data}")
        if msg.data == "bad" and not LOG.path.with_suffix(".fixed").exists():
            raise ValueError("cannot take it yet")


async def test_a_batch_connectors_dead_letter_is_redriven_as_a_list_of_one_message() -> None:
    broker = Broker()
    broker.put("m0", b'"bad"')
    async with app_with(takes_lists, broker, batch_size=4, batch_window=0.01).run() as faas:
        await wait_until(lambda: broker.rejected == ["m0"])
        await wait_until(lambda: len(faas.dead_letters("takes_lists")) == 1)
        LOG.path.with_suffix(".fixed").touch()
        try:
            assert await faas.redrive("takes_lists") == 1
            await wait_until(lambda: LOG.lines().count("m0 bad") == 2)
            await faas.drain(timeout=30)
            assert faas.dead_letters("takes_lists") == []
        finally:
            LOG.path.with_suffix(".fixed").unlink()


async def test_a_message_still_being_handled_when_the_platform_stops_is_not_settled(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    broker = Broker()
    broker.put("m1", gate.path.encode(), content_type="text/plain")
    try:
        async with app_with(held, broker).run():
            await wait_until(lambda: LOG.lines() == ["holding"])
        assert broker.acked == [] and broker.rejected == []
    finally:
        gate.release()
        gate.close()


async def test_without_max_concurrency_the_source_has_at_most_its_workers_in_flight(tmp_path: Path) -> None:
    # A broker that sends past its window (mosquitto does) has the rest wait in the pump's buffer.
    gate = Gate(tmp_path / "gate")
    broker = Broker()
    for i in range(6):
        broker.put(f"m{i}", gate.path.encode(), content_type="text/plain")
    try:
        BROKERS["b"] = broker
        app = mf.App("brokered")
        app.function(triggers=[Fake("b", workers=2)], max_containers=6, retries=0)(held)
        async with app.run() as faas:
            await wait_until(lambda: LOG.lines() == ["holding"] * 2)
            await anyio.sleep(0.3)  # room for more: containers are free, the rest are in the buffer
            assert LOG.lines() == ["holding"] * 2 and broker.acked == []
            for i in range(6):
                gate.release()  # one at a time: a handler's buffered read could take more than its byte
                await wait_until(lambda i=i: len(broker.acked) == i + 1)
            await faas.drain(timeout=30)
        assert LOG.lines() == ["holding"] * 6
    finally:
        gate.close()


async def test_an_unreachable_broker_fails_the_start_with_a_clear_error() -> None:
    broker = Broker()
    broker.reachable = False
    with pytest.raises(mf.ConnectorUnreachable) as caught:
        async with app_with(note, broker).run():
            pass
    assert str(caught.value).startswith("note: Fake broker could not reach fake://u:***@host:1/: connection refused")


async def test_waiting_for_the_broker_reports_each_attempt_and_delivers_once_it_is_up() -> None:
    broker = Broker()
    broker.reachable = False
    broker.put("m1", b"1")
    async with app_with(note, broker, wait_for_server=True).run() as faas:
        await wait_until(lambda: len(faas.events("connector_down")) >= 2)
        down = faas.events("connector_down")
        assert down[0].detail["address"] == "fake://u:***@host:1/"
        broker.reachable = True
        await wait_until(lambda: broker.acked == ["m1"])
        (up,) = faas.events("connector_up")
        assert up.detail["down_s"] > 0


async def test_a_lost_link_is_reconnected_and_a_message_of_the_dead_link_is_never_settled_on_the_new_one(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "gate")
    broker = Broker()
    try:
        async with app_with(held, broker, max_concurrency=1).run() as faas:
            await wait_until(lambda: broker.link is not None)
            broker.put("m1", gate.path.encode(), content_type="text/plain")
            await wait_until(lambda: LOG.lines() == ["holding"])
            broker.drop_link()
            await wait_until(lambda: faas.events("connector_up"))
            gate.release()
            await faas.drain(timeout=30)
        assert broker.acked == []  # the broker would deliver m1 again: its link is gone
    finally:
        gate.close()


def test_decode_body_by_content_type_and_by_setting() -> None:
    assert decode_body(b'{"a": 1}', "application/json; charset=utf-8", "auto") == {"a": 1}
    assert decode_body(b'{"a": 1}', "application/cloudevents+json", "auto") == {"a": 1}
    assert decode_body(b"hi", "text/plain", "auto") == "hi"
    assert decode_body(b"\xff", None, "auto") == b"\xff"
    assert decode_body(b"[1]", None, "json") == [1]
    assert decode_body(b"[1]", "application/json", "bytes") == b"[1]"
    with pytest.raises(mf.SerializationError, match=r"not valid TEXT \(decode='text'\)"):
        decode_body(b"\xff", None, "text")


def test_message_ids_are_unique() -> None:
    assert len({new_message_id() for _ in range(100)}) == 100
