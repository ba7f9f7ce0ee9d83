"""The MQTT source's socket: its reads and writes, on the event loop, around aiomqtt's paho client.

aiomqtt runs paho on the loop through socket callbacks: a reader that has paho read one
packet per turn of the loop (in three ``recv`` calls: the first byte, the length, the rest),
and a write watch per packet paho queues. On the source's hot path -- a PUBLISH in, a
PUBACK out, for every message -- both are replaced here:

- ``SocketReads`` reads what the socket holds in one ``recv`` and splits it into packets.
  A QoS 0 or 1 PUBLISH is decoded here and handed to the source; every other packet
  (CONNACK, SUBACK, PINGRESP, a QoS 2 PUBLISH and its PUBREL) goes to paho's own handler,
  as paho would have read it. The end of the connection, or a read error, is left to paho
  itself: it reads the socket again, meets the same end, and closes (aiomqtt hears of it).
- ``SocketWrites`` writes the packets paho queued in one turn in the next, and the PUBACKs
  acknowledged in one turn together in one ``send`` (each only once its message was
  acknowledged: see ``puback``).

Both use paho internals (``_in_packet``, ``_packet_handle``, ``_out_packet``,
``_packet_queue``, its keepalive clocks), as they stand in paho-mqtt 2.x.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from paho.mqtt.client import MQTT_ERR_PROTOCOL, PUBACK, MalformedPacket, MQTTProtocolVersion

__all__ = ["Publish", "SocketReads", "SocketWrites"]

# One read takes what the socket holds, up to this.
READ_SIZE: Final = 65536
_PUBACK: Final = struct.Struct("!BBH")
_PUBLISH: Final = 0x30

# A PUBLISH as the source takes it: topic, payload, QoS, DUP flag, retain flag, packet id.
Publish = tuple[str, bytes, int, bool, bool, int]


def _fresh_in_packet() -> dict[str, Any]:
    """paho's state of the packet it is reading, when it is reading none."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


class SocketReads:
    """paho's socket reads, in place of aiomqtt's reader: every packet the socket holds, in one turn.

    :param client: the aiomqtt client (its reader is replaced once paho has opened the socket).
    :param publish: takes each QoS 0 or 1 PUBLISH, in order, as it is read.
    """

    def __init__(self, client: Any, publish: Callable[[Publish], None]) -> None:
        self.client = client
        self.paho = client._client
        self.loop = asyncio.get_running_loop()
        self.publish = publish
        self.rest = bytearray()  # the start of a packet not yet wholly read
        self.decodes = self.paho._protocol in (MQTTProtocolVersion.MQTTv31, MQTTProtocolVersion.MQTTv311)

    def install(self) -> None:
        opened = self.paho.on_socket_open  # aiomqtt's: it adds its reader and starts its keepalive task

        def on_socket_open(paho: Any, userdata: Any, sock: Any) -> None:
            opened(paho, userdata, sock)
            # From the connecting thread, after aiomqtt's own add_reader: this one takes its place.
            self.loop.call_soon_threadsafe(self._watch, sock)

        self.paho.on_socket_open = on_socket_open

    def _watch(self, sock: Any) -> None:
        if self.paho.socket() is sock:  # not closed in the meantime
            self.loop.add_reader(sock.fileno(), self.read, sock)

    def read(self, sock: Any) -> None:
        paho = self.paho
        if paho.socket() is not sock:
            return
        try:
            data: bytes | bytearray = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if not data:
                self.rest = bytearray()
                paho.loop_read()  # paho meets the end (or the error) itself, and closes the connection
                return
            paho._last_bytes_received = time.monotonic()
            if self.rest:
                self.rest += data
                data = self.rest
            used = self._packets(data)
            self.rest = bytearray(data[used:]) if used < len(data) and paho.socket() is sock else bytearray()
        except Exception as exc:  # noqa: BLE001 - as aiomqtt's reader does: end the connection with the error
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)

    def _packets(self, data: bytes | bytearray) -> int:
        """Handle every whole packet in ``data``; where the rest (a packet not wholly read) starts."""
        start, end = 0, len(data)
        while start + 1 < end:
            header = data[start]
            length, shift, at = 0, 0, start + 1
            while True:  # the remaining length: 7 bits a byte, at most 4 bytes
                if at == end:
                    return start
                byte = data[at]
                at += 1
                length |= (byte & 127) << shift
                if not byte & 128:
                    break
                shift += 7
                if shift == 28:
                    self.paho._loop_rc_handle(MQTT_ERR_PROTOCOL)
                    return end
            stop = at + length
            if stop > end:
                return start
            decoded = header & 0xF0 == _PUBLISH and header & 0x06 < 0x04 and self.decodes and self._publish(header, data, at, stop)
            if not decoded and not self._paho_handles(header, data[at:stop]):
                return end  # the connection is closed
            start = stop
        return start

    def _publish(self, header: int, data: bytes | bytearray, at: int, stop: int) -> bool:
        """Decode a QoS 0 or 1 PUBLISH and hand it over (False: it is malformed, for paho to say so)."""
        topic_end = at + 2 + (data[at] << 8 | data[at + 1]) if stop - at >= 2 else stop + 1
        qos = (header >> 1) & 3
        body = topic_end + 2 if qos else topic_end
        if body > stop or topic_end == at + 2:
            return False
        mid = data[topic_end] << 8 | data[topic_end + 1] if qos else 0
        topic = str(data[at + 2 : topic_end], "utf-8", "replace")
        self.publish((topic, bytes(data[body:stop]), qos, bool(header & 0x08), bool(header & 0x01), mid))
        return True

    def _paho_handles(self, header: int, body: bytes | bytearray) -> bool:
        """Have paho handle a packet as if it had read it; False once the connection is closed."""
        paho = self.paho
        packet = _fresh_in_packet()
        packet.update(command=header, have_remaining=1, remaining_length=len(body), packet=bytearray(body))
        paho._in_packet = packet
        try:
            rc = paho._packet_handle()
        except MalformedPacket:
            rc = MQTT_ERR_PROTOCOL
        finally:
            paho._in_packet = _fresh_in_packet()
        if rc > 0:
            paho._loop_rc_handle(rc)
        return paho.socket() is not None


class SocketWrites:
    """paho's socket writes, run on the event loop in place of aiomqtt's register/unregister callbacks.

    paho asks for its socket to be watched for writing whenever it queues a packet (a PUBACK,
    a ping, the DISCONNECT). aiomqtt's callback schedules ``loop.add_writer(fd)`` for a later
    turn of the loop; when the connection is closed before that turn (the broker went away
    while a PUBACK was being queued), the loop is handed a closed descriptor -- ``OSError``
    EBADF in the loop's exception handler -- or, worse, the number of the next connection's
    socket, watched with the old client's callback. Here every request is checked, when it
    runs, against the socket paho holds *then*: a closed or replaced socket is left alone.
    The packets queued in one turn are written together in the next, with no writer
    registered at all unless the socket's buffer is full (asyncio on this module's hot path:
    the loop callbacks are cheaper than a task, and paho's callbacks are plain functions).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.paho = client._client
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.watched: int | None = None  # the descriptor the loop watches for writing, while paho's buffer is full
        self.acks = bytearray()  # PUBACKs acknowledged in this turn of the loop, sent in the next
        self.flushing = False

    def install(self) -> None:
        self.paho.on_socket_register_write = self.wanted
        self.paho.on_socket_unregister_write = self.unwanted

    def puback(self, mid: int) -> None:
        """Acknowledge QoS 1 message ``mid`` (read on this connection; nothing once it is lost).

        The PUBACKs of one turn of the loop go out together at the start of the next, in one ``send``.
        """
        if self.paho.is_connected():  # the PUBACK of a lost connection's message is never sent: the broker resends it
            self.acks += _PUBACK.pack(PUBACK, 2, mid)
            if not self.flushing:
                self.flushing = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flushing = False
        packets, self.acks = bytes(self.acks), bytearray()
        paho = self.paho
        sock = paho.socket()
        if sock is None or not paho.is_connected():
            return
        if paho._out_packet:  # paho is writing packets of its own (maybe one half written): these go after them
            paho._packet_queue(PUBACK, packets, 0, 0)
            return
        try:
            sent = sock.send(packets)
        except OSError:  # the socket's buffer is full, or the connection broke: paho writes them, or meets the error itself
            sent = 0
        else:
            paho._last_msg_out = time.monotonic()
        if sent < len(packets):
            paho._packet_queue(PUBACK, packets[sent:], 0, 0)

    def wanted(self, paho: Any, userdata: Any, sock: Any) -> None:
        # paho calls it from the connecting thread too (for CONNECT, while aiomqtt connects in an executor).
        if threading.get_ident() == self.thread:
            self.loop.call_soon(self.write, sock)
        else:
            self.loop.call_soon_threadsafe(self.write, sock)

    def unwanted(self, paho: Any, userdata: Any, sock: Any) -> None:
        # Called before paho closes the socket too, while its descriptor is still open.
        if self.watched is not None:
            self.loop.remove_writer(self.watched)
            self.watched = None

    def write(self, sock: Any) -> None:
        if self.paho.socket() is not sock:
            return  # closed (or replaced) since the packet was queued: there is nothing left to write to
        try:
            # A socket error closes the connection inside paho, which reports the disconnect to aiomqtt.
            self.paho.loop_write()
        except Exception as exc:  # noqa: BLE001 - as aiomqtt's own callback does: end the connection with the error
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)
            return
        if self.watched is None and self.paho.socket() is sock and self.paho.want_write():
            self.watched = sock.fileno()
            self.loop.add_writer(self.watched, self.write, sock)
