"""The MQTT source's socket (sources/mqtt_wire.py) against a stand-in for aiomqtt's paho client:
every packet read whatever way the byte stream is cut, QoS 0 and 1 PUBLISH packets decoded,
every other packet handed to paho, the end of the connection left to paho, and the PUBACKs of
one turn of the loop written together, after what paho queued, and never to a lost connection.
The real broker is in test_mqtt.py (``-m connectors``)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("paho.mqtt.client")

from paho.mqtt.client import MQTTProtocolVersion

from microfaas.sources.mqtt_wire import Publish, SocketReads, SocketWrites

pytestmark = pytest.mark.anyio


class FakePaho:
    """What the socket's reads and writes use of paho: the socket, the packet handler, the write queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._protocol = MQTTProtocolVersion.MQTTv311
        self.handled: list[tuple[int, bytes]] = []  # (first byte, rest) of what paho was given
        self.ended: list[str] = []
        self.queued: list[bytes] = []
        self._out_packet: collections.deque[Any] = collections.deque()
        self._in_packet: dict[str, Any] = {}
        self._last_bytes_received = 0.0
        self._last_msg_out = 0.0
        self.on_socket_open: Any = None

    def socket(self) -> socket.socket | None:
        return self.sock

    def is_connected(self) -> bool:
        return self.sock is not None

    def _packet_handle(self) -> int:
        self.handled.append((self._in_packet["command"], bytes(self._in_packet["packet"])))
        return 0

    def _loop_rc_handle(self, rc: int) -> int:
        self.ended.append(f"rc {rc}")
        self.sock = None
        return rc

    def loop_read(self) -> int:
        assert self.sock is not None
        self.ended.append(f"paho read {self.sock.recv(1)!r}")
        self.sock = None
        return 7

    def _packet_queue(self, command: int, packet: bytes, mid: int, qos: int) -> int:
        self.queued.append(packet)
        return 0


class FakeClient:
    def __init__(self, paho: FakePaho) -> None:
        self._client = paho
        self._disconnected = asyncio.get_running_loop().create_future()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    yield ours, broker
    ours.close()
    broker.close()


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 127, n >> 7
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, qos: int, mid: int = 0, dup: bool = False, retain: bool = False) -> bytes:
    body = struct.pack("!H", len(topic.encode())) + topic.encode() + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | qos << 1 | dup << 3 | retain]) + remaining_length(len(body)) + body


# A stream as a broker might send it: PUBLISH packets of every QoS, one of them with a long payload
# (a remaining length of two bytes), with DUP and retain set, and packets that are not PUBLISH.
PINGRESP = b"\xd0\x00"
SUBACK = b"\x90\x03\x00\x01\x01"
STREAM = [
    publish_packet("a/b", b"one", 1, mid=7),
    PINGRESP,
    publish_packet("a/c", b"x" * 300, 0, retain=True),
    publish_packet("a/b", b"", 1, mid=65535, dup=True),
    publish_packet("q/2", b"two", 2, mid=9),
    SUBACK,
    publish_packet("caf\u00e9", b"three", 1, mid=8),
]
DECODED: list[Publish] = [
    ("a/b", b"one", 1, False, False, 7),
    ("a/c", b"x" * 300, 0, False, True, 0),
    ("a/b", b"", 1, True, False, 65535),
    ("caf\u00e9", b"three", 1, False, False, 8),
]
TO_PAHO = [(0xD0, b""), (0x34, STREAM[4][2:]), (0x90, b"\x00\x01\x01")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(b"".join(STREAM)) - 1), max_size=6, unique=True))
async def test_every_packet_is_read_in_order_whatever_way_the_stream_is_cut(cuts: list[int]) -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    try:
        paho = FakePaho(ours)
        got: list[Publish] = []
        reads = SocketReads(FakeClient(paho), got.append)
        stream = b"".join(STREAM)
        bounds = [0, *sorted(cuts), len(stream)]
        for start, end in itertools.pairwise(bounds):
            broker.sendall(stream[start:end])
            reads.read(ours)
        assert got == DECODED
        assert paho.handled == TO_PAHO
        assert paho.ended == [] and not reads.rest
    finally:
        ours.close()
        broker.close()


async def test_a_stream_that_ends_is_left_to_paho_which_reads_the_end_itself(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    paho = FakePaho(ours)
    got: list[Publish] = []
    reads = SocketReads(FakeClient(paho), got.append)
    broker.sendall(STREAM[0] + STREAM[2][:3])  # a whole packet, then the start of one
    reads.read(ours)
    broker.close()
    reads.read(ours)
    assert got == DECODED[:1]
    assert paho.ended == ["paho read b''"]
    assert not reads.rest


async def test_a_remaining_length_of_five_bytes_is_a_protocol_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    paho = FakePaho(ours)
    reads = SocketReads(FakeClient(paho), lambda publish: None)
    broker.sendall(b"\x30\xff\xff\xff\xff\x01")
    reads.read(ours)
    assert paho.ended == ["rc 2"]  # MQTT_ERR_PROTOCOL: paho closes the connection


async def test_a_malformed_publish_goes_to_paho_to_say_so(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    paho = FakePaho(ours)
    got: list[Publish] = []
    reads = SocketReads(FakeClient(paho), got.append)
    broker.sendall(b"\x32\x03\x00\x09a")  # a topic of 9 bytes in a packet of 3
    reads.read(ours)
    assert got == [] and paho.handled == [(0x32, b"\x00\x09a")]


async def test_the_pubacks_of_one_turn_go_out_together_in_the_next(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    paho = FakePaho(ours)
    writes = SocketWrites(FakeClient(paho))
    writes.puback(1)
    writes.puback(258)
    broker.setblocking(False)
    with pytest.raises(BlockingIOError):
        broker.recv(100)  # nothing is sent in the turn the messages were acknowledged
    await asyncio.sleep(0)
    assert broker.recv(100) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    assert paho._last_msg_out > 0  # paho's keepalive counts it as sent


async def test_pubacks_go_after_the_packets_paho_has_queued(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    paho = FakePaho(ours)
    paho._out_packet.append({"packet": b"\xc0\x00"})  # a PINGREQ paho has not written yet
    writes = SocketWrites(FakeClient(paho))
    writes.puback(5)
    await asyncio.sleep(0)
    assert paho.queued == [b"\x40\x02\x00\x05"]  # behind it, in paho's own queue


async def test_no_puback_goes_to_a_lost_connection(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, broker = pair
    paho = FakePaho(ours)
    writes = SocketWrites(FakeClient(paho))
    writes.puback(1)
    paho.sock = None  # lost before the next turn: the broker sends the message again
    writes.puback(2)
    await asyncio.sleep(0)
    broker.setblocking(False)
    with pytest.raises(BlockingIOError):
        broker.recv(100)
    assert paho.queued == []
