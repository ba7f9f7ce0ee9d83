"""RabbitMQ: a queue as a trigger, read with aio-pika, acknowledged once handled or dead-lettered.

How this works. The source opens one connection and one channel with a prefetch limit
(``basic.qos``: the broker sends at most that many unacknowledged messages), declares
the queue (passively first: an existing queue is used as it is), and consumes it. Each
delivery becomes an ``mf.Message`` and goes through the shared pump (``brokered.py``):
batched, delivered through the one delivery loop, and only then acknowledged: ``basic.ack``
when handled, ``basic.reject(requeue=False)`` when it went to microfaas's dead letters,
which RabbitMQ routes to the queue's dead-letter exchange when the queue has one (and
drops otherwise, as an ack would).

A delivery tag belongs to its channel. When the connection is lost, the messages it
had delivered and not yet settled are redelivered by the broker to the next connection;
their handlers may run again (at least once), and their tags are never acknowledged on
the new channel: an ack is sent only while the channel that delivered the message is open.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import attrs

from ..errors import SerializationError
from ..events import Message
from .brokered import BrokerSource, Inbound, check_delivery_settings, decode_body, new_message_id
from .connector import Connector

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

    from ..runtime.delivery import SourceRuntime

    _Link = tuple[AbstractConnection, AbstractChannel, AbstractQueue]

__all__ = ["RabbitMQ", "RabbitMQSource"]

# Seconds one connection attempt may take (TCP connect and the AMQP handshake).
CONNECT_TIMEOUT: Final = 10.0
# The AMQP properties copied into a message's attributes (where they are set).
_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
    "priority",
    "routing_key",
    "exchange",
)


@attrs.frozen
class RabbitMQ(Connector):
    """A RabbitMQ queue as a trigger: each message is one ``mf.Message`` (a list with ``batch_size > 1``).

    :param url: the broker, ``amqp://user:password@host:port/vhost`` (or ``amqps://``).
    :param queue: the queue to consume.
    :param batch_size: messages per invocation; above 1 the handler gets ``list[mf.Message]``
        and may return ``mf.BatchResult(failed=[ids])`` to have only those retried.
    :param batch_window: seconds to wait for a batch to fill.
    :param prefetch: unacknowledged messages the broker sends at once (None: ``max(100, 2 * batch_size)``).
    :param max_retries: retries of a failing message before it is dead-lettered.
    :param max_concurrency: deliveries in flight at once (None: as many as the prefetch allows).
    :param decode: how a body becomes ``msg.data``: ``"auto"`` (by content type: JSON, text, else bytes),
        ``"json"``, ``"text"`` or ``"bytes"``.
    :param declare: declare the queue (durable) when it does not exist; False: it must exist.
    :param wait_for_server: when the broker cannot be reached at start, keep trying (with
        ``connector_down`` events) instead of failing ``app.run``.
    """

    url: str
    queue: str
    batch_size: int = 1
    batch_window: float = 0.0
    prefetch: int | None = None
    max_retries: int = 2
    max_concurrency: int | None = None
    decode: str = "auto"
    declare: bool = True
    wait_for_server: bool = False

    def __attrs_post_init__(self) -> None:
        owner = f"RabbitMQ queue {self.queue!r}"
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError(f"RabbitMQ: queue must be a non-empty str, got {self.queue!r}")
        scheme, host = _scheme_and_host(self.url)
        if scheme not in ("amqp", "amqps") or not host:
            raise ValueError(f"{owner}: url must be amqp://[user:password@]host[:port][/vhost] (or amqps://), got {self.url!r}")
        check_delivery_settings(owner, self)
        if self.prefetch is not None:
            from ..validation import is_int

            if not (is_int(self.prefetch) and self.prefetch >= self.batch_size):
                raise ValueError(f"{owner}: prefetch must be an int >= batch_size ({self.batch_size}) or None, got {self.prefetch!r}")
        if not isinstance(self.declare, bool):
            raise ValueError(f"{owner}: declare must be a bool, got {self.declare!r}")

    @property
    def prefetch_count(self) -> int:
        """The prefetch the channel asks for."""
        return self.prefetch if self.prefetch is not None else max(100, 2 * self.batch_size)

    def source(self, function: str) -> RabbitMQSource:
        return RabbitMQSource(self, function)


def _scheme_and_host(url: object) -> tuple[str, str]:
    if not isinstance(url, str):
        return "", ""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme, parts.hostname or ""
    except ValueError:
        return "", ""


def _client() -> Any:
    try:
        import aio_pika
    except ImportError:  # pragma: no cover - the extra is installed wherever the tests run
        raise ImportError("mf.RabbitMQ needs aio-pika: pip install 'microfaas[connectors]'") from None
    return aio_pika


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost or unreachable broker raises (a channel that closed under a call included)."""
    import aiormq

    return (OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError)


class RabbitMQSource(BrokerSource["_Link"]):
    """The running source of one ``RabbitMQ`` trigger of one function."""

    def __init__(self, trigger: RabbitMQ, function: str) -> None:
        super().__init__(
            trigger,
            function,
            key=f"rabbitmq:{trigger.queue}:{function}",
            what=f"RabbitMQ queue {trigger.queue!r}",
            url=trigger.url,
            buffer=trigger.prefetch_count,
        )
        self.trigger: RabbitMQ = trigger

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return _connection_errors()

    async def close(self, link: _Link) -> None:
        await _close_quietly(link[0])

    async def open(self) -> _Link:
        import aiormq

        aio_pika = _client()
        connection = await aio_pika.connect(self.trigger.url, timeout=CONNECT_TIMEOUT)
        try:
            channel = await self._channel(connection)
            try:
                queue = await channel.declare_queue(self.trigger.queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                if not self.trigger.declare:
                    raise
                channel = await self._channel(connection)  # the broker closed the first one
                queue = await channel.declare_queue(self.trigger.queue, durable=True)
        except BaseException:
            await _close_quietly(connection)
            raise
        return connection, channel, queue

    async def _channel(self, connection: AbstractConnection) -> AbstractChannel:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.trigger.prefetch_count)
        return channel

    async def consume(self, runtime: SourceRuntime, link: _Link) -> None:
        """Hand every delivery to the pump until the channel or its connection is lost."""
        _, channel, queue = link
        try:
            async with queue.iterator() as deliveries:
                async for incoming in deliveries:
                    await self._accept(runtime, channel, incoming)
        except _connection_errors():
            pass

    async def _accept(self, runtime: SourceRuntime, channel: AbstractChannel, incoming: AbstractIncomingMessage) -> None:
        try:
            data = decode_body(incoming.body, incoming.content_type, self.trigger.decode)
            error = None
        except SerializationError as exc:
            data, error = incoming.body, exc
        message = Message(
            id=incoming.message_id or new_message_id(),
            topic=self.trigger.queue,
            data=data,
            attributes=_attributes(incoming),
            published_at=incoming.timestamp.timestamp() if incoming.timestamp else 0.0,
        )

        async def ack() -> None:
            if not channel.is_closed:
                await _quietly(incoming.ack())

        async def reject() -> None:
            if not channel.is_closed:
                await _quietly(incoming.reject(requeue=False))

        inbound = Inbound(message, _attempt(incoming), ack, reject)
        if error is not None:
            reason = SerializationError(f"{self.function}: {self.what}: message {message.id} could not be decoded: {error}")
            await self.pump.dead_letter(runtime, inbound, reason)
        else:
            await self.pump.accept(runtime, inbound)


def _attempt(incoming: AbstractIncomingMessage) -> int:
    """The attempt this delivery is: a quorum queue counts them (``x-delivery-count``); a classic one only flags a redelivery."""
    count = (incoming.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and count >= 0:
        return count + 1
    return 2 if incoming.redelivered else 1


def _attributes(incoming: AbstractIncomingMessage) -> dict[str, str]:
    """The message's headers, then its properties (a property wins over a header of the same name), as str."""
    out = {str(k): _text(v) for k, v in (incoming.headers or {}).items()}
    for name in _PROPERTIES:
        value = getattr(incoming, name, None)
        if value is not None and value != "":
            out[name] = _text(value)
    out["redelivered"] = "true" if incoming.redelivered else "false"
    return out


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _quietly(settle: Any) -> None:
    """An ack or reject that may find its channel closed under it: the broker then redelivers the message."""
    try:
        await settle
    except _connection_errors():
        pass


async def _close_quietly(connection: AbstractConnection) -> None:
    try:
        await connection.close()
    except _connection_errors():
        pass
