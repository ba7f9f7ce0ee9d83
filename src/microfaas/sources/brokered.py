"""What the message-shaped connectors (RabbitMQ, MQTT) share: decoding, the pump, reconnecting.

How this works. A connector's reader turns each broker delivery into an ``Inbound``:
the ``Message`` the handler gets, the attempt the broker says it is on, and how to
acknowledge it (``ack``) or give it up (``reject``). It hands it to the connector's
``MessagePump``, whose buffer holds at most the broker's prefetch. The pump batches
inbound messages as a topic subscription batches published ones (``collect_batch``),
delivers each batch through the runtime's one delivery loop (a ``MessageDelivery``,
so a ``BatchResult`` retries only the messages it names), and only once the loop has
handled or dead-lettered the batch does it acknowledge each message to the broker:
``ack`` for those handled, ``reject`` for those in the dead letters. A delivery cut
short because the platform stopped settles nothing, so the broker delivers it again.

``connect_until_up`` is the connect loop both readers use: the first connection fails
``app.run`` with a ``ConnectionError`` naming the connector and the address (unless
the trigger says ``wait_for_broker=True``); a lost connection is retried with capped
exponential backoff, reporting ``connector_down`` and ``connector_up`` lifecycle events.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import attrs

from ..errors import SerializationError
from ..events import Message
from ..lifecycle import CONNECTOR_DOWN, CONNECTOR_UP
from .topics import MessageDelivery, collect_batch

if TYPE_CHECKING:
    from ..runtime.delivery import SourceRuntime
    from ..spec import Retries

__all__ = [
    "DECODINGS",
    "BrokerSource",
    "Inbound",
    "MessagePump",
    "check_delivery_settings",
    "connect_until_up",
    "decode_body",
    "redact",
]

T = TypeVar("T")
Link = TypeVar("Link")  # what a source holds while connected: a connection and its channel, a client

#: What ``decode=`` accepts: "auto" reads the content type (JSON, text, else bytes).
DECODINGS: Final = ("auto", "json", "text", "bytes")
# Backoff between connection attempts: doubles from the first to the cap.
RECONNECT_FIRST: Final = 0.1
RECONNECT_CAP: Final = 5.0
# Seconds a source waits for its broker to acknowledge a close.
CLOSE_TIMEOUT: Final = 5.0


def decode_body(body: bytes, content_type: str | None, decode: str) -> Any:
    """The handler's ``msg.data`` for a message body.

    ``"auto"``: JSON when the content type is ``application/json`` (or ``+json``), a str
    for ``text/*``, else the bytes as they came. ``"json"`` / ``"text"`` always decode.

    :raises SerializationError: the body is not what its content type or ``decode`` says.
    """
    kind = decode
    if decode == "auto":
        media = (content_type or "").partition(";")[0].strip().lower()
        kind = "json" if media == "application/json" or media.endswith("+json") else "text" if media.startswith("text/") else "bytes"
    try:
        if kind == "json":
            return json.loads(body)
        if kind == "text":
            return body.decode("utf-8")
    except (UnicodeDecodeError, ValueError) as exc:
        shown = f"content-type {content_type!r}" if decode == "auto" else f"decode={decode!r}"
        raise SerializationError(f"the message body is not valid {kind.upper()} ({shown}): {exc}") from None
    return body


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for errors and events)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_delivery_settings(owner: str, trigger: Any) -> None:
    """The settings every message connector shares: batching, retries, concurrency, decoding.

    :raises ValueError: naming ``owner`` and the field.
    """
    from ..validation import is_int, is_number

    def need(field: str, ok: bool, expectation: str) -> None:
        if not ok:
            raise ValueError(f"{owner}: {field} must be {expectation}, got {getattr(trigger, field)!r}")

    need("batch_size", is_int(trigger.batch_size) and trigger.batch_size >= 1, "an int >= 1")
    need("batch_window", is_number(trigger.batch_window) and trigger.batch_window >= 0, "a number >= 0 (seconds)")
    need("max_retries", is_int(trigger.max_retries) and trigger.max_retries >= 0, "an int >= 0")
    ok = trigger.max_concurrency is None or (is_int(trigger.max_concurrency) and trigger.max_concurrency >= 1)
    need("max_concurrency", ok, "an int >= 1 or None")
    need("decode", trigger.decode in DECODINGS, "one of " + ", ".join(map(repr, DECODINGS)))
    need("wait_for_broker", isinstance(trigger.wait_for_broker, bool), "a bool")


@attrs.frozen
class Inbound:
    """One broker delivery on its way through the pump.

    :param message: what the handler gets.
    :param attempt: the attempt the broker says this is (2 or more for a redelivery).
    :param ack: acknowledges it as handled (a no-op once its connection is gone).
    :param reject: gives it up after it was dead-lettered (to the broker's own dead letters, where it has them).
    """

    message: Message
    attempt: int
    ack: Callable[[], Awaitable[None]]
    reject: Callable[[], Awaitable[None]]


class _BrokerDelivery(MessageDelivery):
    """A batch of broker messages: remembers which went to the dead letters and whether it settled."""

    def __init__(self, function: str, source: str, invocation_id: str, messages: list[Message], *, batched: bool) -> None:
        super().__init__(function, source, invocation_id, messages, batched=batched)
        self.dead: set[str] = set()
        self.done = False

    def dead_events(self) -> list[Any]:
        events = super().dead_events()
        self.dead.update(m.id for m in self.remaining)
        return events

    def settled(self) -> None:
        self.done = True


class MessagePump:
    """Batches a connector's inbound messages, delivers them, and acknowledges them once settled.

    :param function: the function the messages go to.
    :param key: the source's key (``"rabbitmq:orders"``), as dead letters name it.
    :param trigger: the connector's settings (``batch_size``, ``batch_window``, ``max_retries``, ``max_concurrency``).
    :param buffer: inbound messages held before the pump takes them (the broker's prefetch bounds it too).
    """

    def __init__(self, function: str, key: str, trigger: Any, buffer: int) -> None:
        self.function = function
        self.key = key
        self.trigger = trigger
        self._send, self._receive = anyio.create_memory_object_stream[Inbound](buffer)
        self.in_hand = 0
        self.in_delivery = 0

    async def accept(self, runtime: SourceRuntime, inbound: Inbound) -> None:
        """Take ``inbound`` (waits while the buffer is full); it counts in flight until acknowledged."""
        runtime.in_flight.started()
        try:
            await self._send.send(inbound)
        except BaseException:
            runtime.in_flight.finished()
            raise

    async def dead_letter(self, runtime: SourceRuntime, inbound: Inbound, error: SerializationError) -> None:
        """Dead-letter ``inbound`` without attempting it (its body could not be decoded) and reject it."""
        delivery = _BrokerDelivery(self.function, self.key, inbound.message.id, [inbound.message], batched=False)
        runtime.dead_letter(delivery, error, attempts=0, first_attempt_at=time.time())
        await inbound.reject()

    def pending(self) -> list[str]:
        waiting = self._send.statistics().current_buffer_used + self.in_hand + self.in_delivery
        return [f"{waiting} message(s) of {self.key} for {self.function}"] if waiting else []

    async def serve(self, runtime: SourceRuntime) -> None:
        spec = runtime.function(self.function)
        retries = attrs.evolve(spec.retries, max_retries=self.trigger.max_retries)
        limit = self.trigger.max_concurrency
        limiter = anyio.Semaphore(limit) if limit is not None else None

        def taken(n: int) -> None:
            self.in_hand = n

        async with anyio.create_task_group() as tg:
            while True:
                # A free slot first, then the batch: what arrives while every slot is busy fills the next batch.
                if limiter is not None:
                    await limiter.acquire()
                batch = await collect_batch(self._receive, self.trigger.batch_size, self.trigger.batch_window, taken)
                self.in_delivery += len(batch)
                self.in_hand = 0
                tg.start_soon(self._deliver, runtime, batch, retries, limiter)

    async def _deliver(self, runtime: SourceRuntime, batch: list[Inbound], retries: Retries, limiter: anyio.Semaphore | None) -> None:
        messages = [inbound.message for inbound in batch]
        delivery = _BrokerDelivery(self.function, self.key, runtime.new_invocation_id(), messages, batched=self.trigger.batch_size > 1)
        delivery.attempts_made = min(inbound.attempt for inbound in batch) - 1
        try:
            await runtime.deliver(delivery, retries)
            if delivery.done:
                for inbound in batch:
                    await (inbound.reject() if inbound.message.id in delivery.dead else inbound.ack())
        finally:
            self.in_delivery -= len(batch)
            runtime.in_flight.finished(len(batch))
            if limiter is not None:
                limiter.release()


def new_message_id() -> str:
    return uuid.uuid4().hex


async def connect_until_up(
    connect: Callable[[], Awaitable[T]],
    runtime: SourceRuntime,
    *,
    name: str,
    function: str,
    key: str,
    address: str,
    wait: bool,
    reconnect: bool,
    errors: tuple[type[BaseException], ...],
) -> T:
    """``await connect()``, again and again with backoff until it succeeds.

    :param name: the connector as errors name it (``"RabbitMQ trigger of function 'f' (queue 'orders')"``).
    :param wait: keep trying the first connection too (else it raises at once).
    :param reconnect: whether this follows a lost connection (reported in ``connector_up``).
    :param errors: what counts as "cannot connect" (anything else propagates).
    :raises ConnectionError: the first connection failed and ``wait`` is False.
    """
    delay = RECONNECT_FIRST
    while True:
        try:
            connected = await connect()
        except errors as exc:
            if not (wait or reconnect):
                raise ConnectionError(f"{name}: cannot connect to {address}: {exc or type(exc).__name__}") from exc
            runtime.emit(CONNECTOR_DOWN, function=function, source=key, address=address, error=repr(exc), retry_in=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_CAP)
        else:
            runtime.emit(CONNECTOR_UP, function=function, source=key, address=address, reconnect=reconnect)
            return connected


class BrokerSource(Generic[Link]):
    """The running side both message connectors share: connect, pump, consume until the link is lost, reconnect.

    A subclass says how to ``open`` a link to its broker (connected, subscribed), ``consume``
    it (hand each message to ``self.pump`` until the link is lost), ``close`` it, and which
    exceptions mean the broker cannot be reached (``connection_errors``).

    :param key: the source's key, unique per platform (``"rabbitmq:orders:on_order"``).
    :param name: the connector as errors name it.
    :param url: the broker's address (its password is masked wherever it is shown).
    """

    def __init__(self, trigger: Any, function: str, *, key: str, name: str, url: str, buffer: int) -> None:
        self.trigger = trigger
        self.function = function
        self.key = key
        self.name = name
        self.address = redact(url)
        self.pump = MessagePump(function, key, trigger, buffer=buffer)

    def __repr__(self) -> str:
        return f"<{self.name} at {self.address}>"

    def pending(self) -> list[str]:
        return self.pump.pending()

    def prepare(self, runtime: SourceRuntime) -> None:
        """Settle what depends on the platform (a default client id), before the first connection."""

    async def open(self) -> Link:
        raise NotImplementedError

    async def consume(self, runtime: SourceRuntime, link: Link) -> None:
        raise NotImplementedError

    async def close(self, link: Link) -> None:
        raise NotImplementedError

    def connection_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        runtime.function(self.function)
        self.prepare(runtime)
        link = None if self.trigger.wait_for_broker else await self._connect(runtime, reconnect=False)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.pump.serve, runtime)
                task_status.started()
                if link is None:
                    link = await self._connect(runtime, reconnect=False)
                while True:
                    await self.consume(runtime, link)
                    await self._close(link)
                    link = await self._connect(runtime, reconnect=True)
        finally:
            if link is not None:
                with anyio.CancelScope(shield=True):
                    await self._close(link)

    async def _close(self, link: Link) -> None:
        # A broker that went away may never answer the goodbye: do not wait for it long.
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self.close(link)

    async def _connect(self, runtime: SourceRuntime, *, reconnect: bool) -> Link:
        return await connect_until_up(
            self.open,
            runtime,
            name=self.name,
            function=self.function,
            key=self.key,
            address=self.address,
            wait=self.trigger.wait_for_broker,
            reconnect=reconnect,
            errors=self.connection_errors(),
        )
