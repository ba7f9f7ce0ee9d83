"""MQTT: topic filters as a trigger, read with aiomqtt, acknowledged (PUBACK) once handled.

How this works. The source connects with a stable client id and ``clean_session=False``
(MQTT 3.1.1), so the broker keeps its subscriptions and its QoS 1 and 2 messages while
the platform is away, and subscribes to each filter at the trigger's QoS. Each PUBLISH
becomes one ``mf.Message`` (``attributes["topic"]`` is its topic) and goes through the
shared pump (``brokered.py``): batched, delivered through the one delivery loop.

Acknowledgement. The paho client under aiomqtt acknowledges a message as soon as it
receives it, unless manual acks are on (``manual_ack_set``, which aiomqtt does not expose:
the source sets it on aiomqtt's paho client, which still reads QoS 2 packets). The source
reads QoS 0 and 1 PUBLISH packets itself (``mqtt_wire``) and sends a QoS 1 PUBACK only
once the message was handled or dead-lettered, so a message whose handler had not
finished when the platform died or lost its connection is sent again by the broker
(at least once). QoS 2 is settled in two steps: the broker releases the message
(PUBREL) before the handler runs and the source sends the final PUBCOMP once it is
handled; a platform that dies in between loses that message. QoS 0 is at most once.
A PUBACK goes only to the connection that delivered the message.

Attempts. MQTT counts no deliveries; it marks a QoS 1 or 2 PUBLISH the broker sends again
(the DUP flag: sent before, never acknowledged). Such a message is attempt 2 (and
``attributes["dup"]`` says ``"true"``); every other one is attempt 1.

The event loop. aiomqtt runs paho on the loop through socket callbacks; the source replaces
its reader, its write watch and paho's PUBLISH handler (``mqtt_wire``: one ``recv`` for what
the socket holds, QoS 0 and 1 PUBLISH packets decoded there, the PUBACKs of a turn of the
loop sent together in one ``send``). They are loop callbacks and a bare asyncio future, not
anyio: this is the connector's hot path.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import attrs

from ..errors import SerializationError
from ..events import Message
from .brokered import BrokerSource, Inbound, check_delivery_settings, decode_body, new_message_id
from .connector import Connector

if TYPE_CHECKING:
    from ..runtime.delivery import SourceRuntime
    from .mqtt_wire import Publish

__all__ = ["MQTT", "MQTTSource"]

DEFAULT_PORT: Final = 1883
# Messages the pump buffers; for QoS 1 and 2 the broker's in-flight window bounds them first.
BUFFER: Final = 1000
# Deliveries in flight at once without max_concurrency. mosquitto 2.0 keeps to its in-flight window
# (max_inflight_messages) only until acknowledgements flow, then sends what the session holds.
WINDOW: Final = 100
_QOS: Final = ("0", "1", "2")


def _topics(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class MQTT(Connector):
    """MQTT topic filters as a trigger: each PUBLISH is one ``mf.Message`` (a list with ``batch_size > 1``).

    :param url: the broker, ``mqtt://[user:password@]host[:port]``.
    :param topic: a topic filter (``"sensors/#"``, ``"sensors/+/temp"``) or several.
    :param qos: 0 (at most once), 1 (at least once) or 2 (where the broker offers it).
    :param client_id: the id of the broker's session for this trigger (None: ``microfaas-<app>-<function>``);
        keep it stable so the messages published while the platform was down reach it.
    :param batch_size: messages per invocation; above 1 the handler gets ``list[mf.Message]``
        and may return ``mf.BatchResult(failed=[ids])`` to have only those retried.
    :param batch_window: seconds to wait for a batch to fill.
    :param max_retries: retries of a failing message before it is dead-lettered.
    :param max_concurrency: deliveries in flight at once (None: up to 100, or the broker's in-flight window if it keeps to a smaller one).
    :param decode: how a payload becomes ``msg.data``: ``"auto"`` (MQTT 3.1.1 has no content type: bytes),
        ``"json"``, ``"text"`` or ``"bytes"``.
    :param keepalive: seconds between pings; a broker that does not answer is taken as lost after 1.5 times it.
    :param wait_for_server: when the broker cannot be reached at start, keep trying (with
        ``connector_down`` events) instead of failing ``app.run``.
    """

    url: str
    topic: tuple[str, ...] = attrs.field(converter=_topics)
    qos: int = 1
    client_id: str | None = None
    batch_size: int = 1
    batch_window: float = 0.0
    max_retries: int = 2
    max_concurrency: int | None = None
    decode: str = "auto"
    keepalive: int = 60
    wait_for_server: bool = False

    def __attrs_post_init__(self) -> None:
        owner = f"MQTT topic {', '.join(self.topic)!r}"
        if not self.topic:
            raise ValueError("MQTT: topic must be a topic filter or a non-empty list of them, got ()")
        for filter_ in self.topic:
            problem = _filter_problem(filter_)
            if problem:
                raise ValueError(f"MQTT: topic filter {filter_!r} is not valid: {problem}")
        parts = _split(self.url)
        if parts is None or parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"{owner}: url must be mqtt://[user:password@]host[:port], got {self.url!r}")
        if self.qos not in (0, 1, 2) or isinstance(self.qos, bool):
            raise ValueError(f"{owner}: qos must be 0, 1 or 2, got {self.qos!r}")
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise ValueError(f"{owner}: client_id must be a non-empty str or None, got {self.client_id!r}")
        check_delivery_settings(owner, self)
        if not (isinstance(self.keepalive, int) and not isinstance(self.keepalive, bool) and self.keepalive >= 1):
            raise ValueError(f"{owner}: keepalive must be an int >= 1 (seconds), got {self.keepalive!r}")

    def source(self, function: str) -> MQTTSource:
        return MQTTSource(self, function)


def _split(url: object) -> urllib.parse.SplitResult | None:
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return None
    return parts


def _filter_problem(filter_: object) -> str | None:
    """Why ``filter_`` is not an MQTT topic filter (None: it is one)."""
    if not isinstance(filter_, str) or not filter_:
        return "it must be a non-empty str"
    levels = filter_.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level, and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _client() -> Any:
    try:
        import aiomqtt
    except ImportError:  # pragma: no cover - the extra is installed wherever the tests run
        raise ImportError("mf.MQTT needs aiomqtt: pip install 'microfaas[connectors]'") from None
    return aiomqtt


class MQTTSource(BrokerSource[Any]):
    """The running source of one ``MQTT`` trigger of one function (its link: a connected ``aiomqtt.Client``)."""

    def __init__(self, trigger: MQTT, function: str) -> None:
        topics = ", ".join(trigger.topic)
        super().__init__(
            trigger,
            function,
            key=f"mqtt:{','.join(trigger.topic)}:{function}",
            what=f"MQTT topic {topics!r}",
            url=trigger.url,
            buffer=BUFFER,
            workers=WINDOW,
        )
        self.trigger: MQTT = trigger
        self._client_id = trigger.client_id

    def prepare(self, runtime: SourceRuntime) -> None:
        if self._client_id is None:
            self._client_id = f"microfaas-{runtime.app_name}-{self.function}"

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError, _client().MqttError)

    async def close(self, link: _Link) -> None:
        await _close_quietly(link.client)

    async def open(self) -> _Link:
        aiomqtt = _client()
        parts = urllib.parse.urlsplit(self.trigger.url)
        client = aiomqtt.Client(
            parts.hostname or "",
            parts.port or DEFAULT_PORT,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            identifier=self._client_id,
            clean_session=False,
            keepalive=self.trigger.keepalive,
        )
        # aiomqtt has no setting for it: paho's manual acks hold each PUBACK until ``ack`` (see the module's docstring).
        client._client.manual_ack_set(True)
        link = _Link(client)
        await client.__aenter__()
        link.connected()
        try:
            await client.subscribe([(filter_, self.trigger.qos) for filter_ in self.trigger.topic])
        except BaseException:
            await _close_quietly(client)
            raise
        return link

    async def consume(self, runtime: SourceRuntime, link: _Link) -> None:
        """Hand every message to the pump until the connection is lost (those read before it was, too)."""
        inbox = link.inbox
        while True:
            while inbox:
                await self._accept(runtime, link, inbox.popleft())
            if link.lost():
                return
            await link.arrived()

    async def _accept(self, runtime: SourceRuntime, link: _Link, incoming: Publish) -> None:
        topic, payload, qos, dup, retain, mid = incoming
        try:
            data = decode_body(payload, None, self.trigger.decode)
            error = None
        except SerializationError as exc:
            data, error = payload, exc
        message = Message(
            id=new_message_id(),
            topic=topic,
            data=data,
            attributes={
                "topic": topic,
                "qos": _QOS[qos],
                "retain": "true" if retain else "false",
                "dup": "true" if dup else "false",
            },
        )
        ack = _Ack(link, mid, qos)
        # A QoS 1 or 2 PUBLISH with DUP set is one the broker sent before and saw no acknowledgement of.
        inbound = Inbound(message, 2 if dup and qos else 1, ack, ack)  # MQTT has no reject: a dead-lettered message is acknowledged
        if error is not None:
            reason = SerializationError(f"{self.function}: {self.what}: message on {topic!r} could not be decoded: {error}")
            await self.pump.dead_letter(runtime, inbound, reason)
        else:
            await self.pump.accept(runtime, inbound)


class _Ack:
    """Acknowledges one message on the connection that delivered it (``Inbound.ack``)."""

    __slots__ = ("link", "mid", "qos")

    def __init__(self, link: _Link, mid: int, qos: int) -> None:
        self.link, self.mid, self.qos = link, mid, qos

    async def __call__(self) -> None:
        if self.qos == 1:
            self.link.writes.puback(self.mid)
        elif self.qos == 2 and self.link.paho.is_connected():  # a lost connection's: the broker resends it
            self.link.paho.ack(self.mid, 2)


async def _close_quietly(client: Any) -> None:
    aiomqtt = _client()
    try:
        await client.__aexit__(None, None, None)
    except (OSError, aiomqtt.MqttError):
        pass


class _Link:
    """One connection to the broker: the aiomqtt client, and the PUBLISH packets read on it, in order.

    The socket's reader (``mqtt_wire.SocketReads``) hands each QoS 0 or 1 PUBLISH to
    ``publish``; paho hands a QoS 2 one to ``received`` once the broker released it. The
    source takes them from ``inbox``. aiomqtt's own message iterator is not used: it starts a
    task and an ``asyncio.wait`` per message, and hands over aiomqtt's copy of the message,
    which leaves out the DUP flag that says the broker is sending it again.
    """

    def __init__(self, client: Any) -> None:
        from .mqtt_wire import SocketReads, SocketWrites

        self.client = client
        self.paho = client._client
        self.inbox: collections.deque[Publish] = collections.deque()
        self._arrived = asyncio.Event()
        self.paho.on_message = self.received
        SocketReads(client, self.publish).install()
        self.writes = SocketWrites(client)
        self.writes.install()

    def connected(self) -> None:
        """Call once aiomqtt has connected (it replaces its ``_disconnected`` future on connecting)."""
        self._disconnected = self.client._disconnected
        self._disconnected.add_done_callback(self._ended)

    def publish(self, incoming: Publish) -> None:
        self.inbox.append(incoming)
        self._arrived.set()

    def received(self, paho: Any, userdata: Any, message: Any) -> None:
        topic = str(message._topic, "utf-8", "replace")
        self.publish((topic, message.payload, message.qos, bool(message.dup), bool(message.retain), message.mid))

    def _ended(self, disconnected: asyncio.Future[None]) -> None:
        if not disconnected.cancelled():
            disconnected.exception()  # seen here: aiomqtt's iterator, which would look at it, is not used
        self._arrived.set()

    def lost(self) -> bool:
        return self._disconnected.done()

    async def arrived(self) -> None:
        """Wait until a message arrives or the connection is lost."""
        await self._arrived.wait()
        self._arrived.clear()
