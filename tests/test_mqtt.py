"""mf.MQTT against a real mosquitto broker (tests/servers.py): delivery per topic filter and QoS,
acknowledgement after handling, batches, dead letters, bad input, the persistent session
(messages published while the platform was down arrive), a platform killed with SIGKILL and
started again, and the broker restarted mid-stream."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import microfaas as mf
from conftest import Gate, HandlerLog, wait_until
from platform_process import handled, handled_lines, kill_with_everything_it_started, start_child, wait_for_lines
from servers import free_port

try:
    import aiomqtt
except ImportError:  # the connectors extra: these tests are not in the default run
    aiomqtt = None

pytestmark = [pytest.mark.connectors, pytest.mark.anyio]

LOG = HandlerLog("mqtt")


def note(msg: mf.Message) -> None:
    LOG.write(json.dumps({"data": msg.data, "attributes": msg.attributes, "attempt": msg.attempt}, default=repr))


def fail_odd_once(batch: list[mf.Message]) -> mf.BatchResult:
    for msg in batch:
        LOG.write(f"{msg.data} {msg.attempt}")
    return mf.BatchResult(failed=[m.id for m in batch if m.data % 2 and m.attempt == 1])


def always_fails(msg: mf.Message) -> None:
    raise ValueError(f"cannot take {msg.data}")


def held(msg: mf.Message) -> None:
    LOG.write("holding")
    with open(msg.data, "rb") as f:
        f.read(1)


def slow(msg: mf.Message) -> None:
    import time

    time.sleep(0.02)
    LOG.write(str(msg.data))


@pytest.fixture(autouse=True)
def fresh_log() -> None:
    LOG.clear()


@pytest.fixture
def topic() -> str:
    return f"test/{uuid.uuid4().hex[:8]}"


async def publish(url: str, topic: str, payloads: list[Any], qos: int = 1) -> None:
    """Publish each payload (JSON unless bytes) to ``topic``; returns once the broker has acknowledged each."""
    parts = urllib.parse.urlsplit(url)
    async with aiomqtt.Client(parts.hostname or "", parts.port or 1883) as client:
        for payload in payloads:
            await client.publish(topic, payload if isinstance(payload, bytes) else json.dumps(payload), qos=qos)


def app_with(handler: Any, trigger: mf.MQTT, name: str | None = None, **settings: Any) -> mf.App:
    app = mf.App(name or f"mqtt-{uuid.uuid4().hex[:6]}")
    app.function(triggers=[trigger], **settings)(handler)
    return app


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_each_publish_on_a_matching_topic_reaches_the_handler_once_with_its_topic(
    mosquitto_server: Any, topic: str, qos: int
) -> None:
    url = mosquitto_server.url
    app = app_with(note, mf.MQTT(url, topic=f"{topic}/+/temp", qos=qos, decode="json"))
    async with app.run() as faas:
        await publish(url, f"{topic}/kitchen/temp", [{"c": 21}, {"c": 22}], qos=qos)
        await publish(url, f"{topic}/kitchen/humidity", [{"rh": 40}], qos=qos)  # no match
        await publish(url, f"{topic}/hall/temp", [{"c": 19}], qos=qos)
        await wait_until(lambda: len(LOG.lines()) == 3)
        await faas.drain(timeout=30)
    seen = [json.loads(line) for line in LOG.lines()]
    assert sorted(s["data"]["c"] for s in seen) == [19, 21, 22]
    assert {s["attributes"]["topic"] for s in seen} == {f"{topic}/kitchen/temp", f"{topic}/hall/temp"}
    assert {s["attributes"]["qos"] for s in seen} == {str(qos)}
    assert {(s["attempt"], s["attributes"]["dup"]) for s in seen} == {(1, "false")}  # sent once: no DUP


async def test_messages_published_while_the_platform_was_down_arrive_when_it_is_back(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    trigger = mf.MQTT(url, topic=f"{topic}/#", qos=1, decode="json")
    name = f"mqtt-{uuid.uuid4().hex[:6]}"
    async with app_with(note, trigger, name).run():
        pass  # the broker now keeps a session for microfaas-<app>-note
    await publish(url, f"{topic}/a", list(range(10)))
    async with app_with(note, trigger, name).run() as faas:
        await wait_until(lambda: len(LOG.lines()) == 10)
        await faas.drain(timeout=30)
    assert sorted(json.loads(line)["data"] for line in LOG.lines()) == list(range(10))


async def test_a_message_whose_handler_is_running_at_stop_is_not_acknowledged(mosquitto_server: Any, topic: str, tmp_path: Path) -> None:
    url = mosquitto_server.url
    gate = Gate(tmp_path / "gate")
    client_id = f"held-{uuid.uuid4().hex[:6]}"
    try:
        async with app_with(held, mf.MQTT(url, topic=topic, qos=1, client_id=client_id, decode="text")).run():
            await publish(url, topic, [gate.path.encode()])
            await wait_until(lambda: LOG.lines() == ["holding"])
        # The next platform on the same session gets it again: no PUBACK was sent for it. The broker
        # marks it DUP (it sent it before), so the handler sees its second attempt.
        async with app_with(note, mf.MQTT(url, topic=topic, qos=1, client_id=client_id, decode="text")).run():
            await wait_until(lambda: len(LOG.lines()) == 2)
        again = json.loads(LOG.lines()[1])
        assert again["data"] == gate.path
        assert again["attempt"] == 2
        assert again["attributes"]["dup"] == "true"
    finally:
        gate.release()
        gate.close()


async def test_a_batch_handler_reporting_some_messages_failed_has_only_those_retried(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    trigger = mf.MQTT(url, topic=topic, batch_size=8, batch_window=0.5, decode="json")
    async with app_with(fail_odd_once, trigger, retries=mf.Retries(2, initial_delay=0.01)).run() as faas:
        await publish(url, topic, list(range(8)))
        await wait_until(lambda: len(LOG.lines()) == 12)
        await faas.drain(timeout=30)
        assert faas.dead_letters("fail_odd_once") == []
    attempts: dict[int, list[int]] = {}
    for line in LOG.lines():
        data, attempt = map(int, line.split())
        attempts.setdefault(data, []).append(attempt)
    assert attempts == {i: [1, 2] if i % 2 else [1] for i in range(8)}


async def test_a_message_failing_every_attempt_is_dead_lettered_and_acknowledged(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    trigger = mf.MQTT(url, topic=topic, max_retries=1, decode="text")
    name = f"mqtt-{uuid.uuid4().hex[:6]}"
    async with app_with(always_fails, trigger, name, retries=mf.Retries(1, initial_delay=0.01)).run() as faas:
        await publish(url, topic, [b"bad"])
        await wait_until(lambda: faas.dead_letters("always_fails"))
        await faas.drain(timeout=30)
        (letter,) = faas.dead_letters("always_fails")
        assert letter.attempts == 2
        assert letter.event.data == "bad"
        assert letter.event.attributes["topic"] == topic
    async with app_with(note, trigger, name, retries=0).run() as faas:  # the same session: nothing is sent again
        await publish(url, topic, [b"good"])
        await wait_until(lambda: len(LOG.lines()) == 1)
    assert json.loads(LOG.lines()[0])["data"] == "good"


async def test_a_message_that_cannot_be_decoded_goes_to_the_dead_letters_with_the_reason(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    async with app_with(note, mf.MQTT(url, topic=topic, decode="json")).run() as faas:
        await publish(url, topic, [b"{not json", b'{"n": 1}'])
        await wait_until(lambda: len(LOG.lines()) == 1 and faas.dead_letters("note"))
        (letter,) = faas.dead_letters("note")
        assert isinstance(letter.error, mf.SerializationError)
        assert "not valid JSON" in str(letter.error) and topic in str(letter.error)
        assert letter.event.data == b"{not json"
    assert json.loads(LOG.lines()[0])["data"] == {"n": 1}


async def test_decode_auto_hands_the_payload_over_as_bytes(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    async with app_with(note, mf.MQTT(url, topic=topic)).run():
        await publish(url, topic, [b"\xff\x00raw"])
        await wait_until(lambda: len(LOG.lines()) == 1)
    assert json.loads(LOG.lines()[0])["data"] == repr(b"\xff\x00raw")


def sizes(msg: mf.Message) -> None:
    LOG.write(f"{len(msg.data)} {msg.data[-3:]!r} {msg.attributes['topic']}")


async def test_many_messages_in_one_read_and_one_larger_than_a_read_each_arrive_whole(mosquitto_server: Any, topic: str) -> None:
    url = mosquitto_server.url
    payloads = [b"%d" % i for i in range(200)] + [b"x" * 300_000 + b"end"]  # the reader takes 64 KiB at a time
    async with app_with(sizes, mf.MQTT(url, topic=f"{topic}/#", decode="bytes")).run() as faas:
        await publish(url, f"{topic}/a", payloads)
        await wait_until(lambda: len(LOG.lines()) == len(payloads))
        await faas.drain(timeout=30)
    expected = [f"{len(p)} {p[-3:]!r} {topic}/a" for p in payloads]
    assert sorted(LOG.lines()) == sorted(expected)


async def test_an_unreachable_broker_fails_app_run_naming_the_connector_and_the_address() -> None:
    port = free_port()
    app = app_with(note, mf.MQTT(f"mqtt://user:secret@127.0.0.1:{port}", topic="sensors/#"))
    with pytest.raises(mf.ConnectorUnreachable) as caught:
        async with app.run():
            pass
    message = str(caught.value)
    assert f"note: MQTT topic 'sensors/#' could not reach mqtt://user:***@127.0.0.1:{port}" in message
    assert "secret" not in message


async def test_wait_for_server_starts_anyway_and_reports_each_failed_attempt() -> None:
    app = app_with(note, mf.MQTT(f"mqtt://127.0.0.1:{free_port()}", topic="sensors/#", wait_for_server=True))
    async with app.run() as faas:
        await wait_until(lambda: len(faas.events("connector_down")) >= 2)
        assert faas.events("connector_down")[0].detail["source"] == "MQTT topic 'sensors/#'"


# -- a platform killed with SIGKILL, and the broker restarted --------------------------------

MESSAGES = 40


def on_reading(msg: mf.Message) -> None:
    import time

    time.sleep(0.02)  # slower than the broker: a kill finds messages delivered and not yet acknowledged
    handled(str(msg.data))


def child(url: str, topic: str) -> None:
    app = mf.App("mqtt-kill")
    app.function(triggers=[mf.MQTT(url, topic=topic, qos=1, client_id=f"kill-{topic}", decode="json")])(on_reading)

    async def serve() -> None:
        async with app.run():
            print("ready", flush=True)
            await anyio.sleep(600)  # killed before this ends

    anyio.run(serve)


def _ready(process: Any) -> None:
    assert process.stdout.readline().strip() == "ready"


async def test_a_platform_killed_mid_stream_loses_no_qos1_message(mosquitto_server: Any, topic: str, tmp_path: Path) -> None:
    url = mosquitto_server.url
    first = start_child("test_mqtt", tmp_path, url, topic)
    try:
        await anyio.to_thread.run_sync(_ready, first)
        await publish(url, topic, list(range(MESSAGES)))
        await anyio.to_thread.run_sync(wait_for_lines, tmp_path, 10, first)
    finally:
        kill_with_everything_it_started(first)
    second = start_child("test_mqtt", tmp_path, url, topic)
    try:
        await wait_until(lambda: {int(x) for x in handled_lines(tmp_path)} == set(range(MESSAGES)), seconds=120)
    finally:
        kill_with_everything_it_started(second)


async def test_the_broker_restarted_mid_stream_is_reconnected_to_and_nothing_is_lost(own_mosquitto: Any, topic: str) -> None:
    url = own_mosquitto.url
    app = app_with(slow, mf.MQTT(url, topic=topic, qos=1, decode="json", keepalive=2))
    async with app.run() as faas:
        await publish(url, topic, list(range(MESSAGES)))
        await wait_until(lambda: len(LOG.lines()) >= 5)
        await anyio.to_thread.run_sync(own_mosquitto.stop)  # mosquitto saves its sessions when it stops
        await wait_until(lambda: faas.events("connector_down"))
        await anyio.to_thread.run_sync(own_mosquitto.start)
        await wait_until(lambda: faas.events("connector_up"))
        await publish(url, topic, list(range(MESSAGES, 2 * MESSAGES)))
        await wait_until(lambda: {int(x) for x in LOG.lines()} == set(range(2 * MESSAGES)), seconds=120)
        await faas.drain(timeout=30)


async def test_a_packet_queued_as_the_broker_goes_away_touches_no_closed_socket(own_mosquitto: Any, topic: str) -> None:
    # The race behind a flake: a PUBACK queued in the same turn of the loop as the read that finds the
    # connection closed. aiomqtt would then watch the closed socket for writing (EBADF in the loop).
    source = mf.MQTT(own_mosquitto.url, topic=topic, client_id=f"race-{uuid.uuid4().hex[:6]}").source("f")
    link = await source.open()
    paho = link.paho
    try:
        own_mosquitto.stop()  # blocks the loop: the connection's end waits unread in the socket
        paho.publish(topic, b"x", qos=0)  # a packet queued: paho asks for its socket to be watched for writing
        paho.loop_read()  # what the loop's reader does next in the same turn: finds the end, closes the socket
        assert paho.socket() is None
        await anyio.sleep(0.1)  # the write request runs now: nothing may touch the closed socket
    finally:
        await source.close(link)
