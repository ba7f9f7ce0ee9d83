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
Deliveries run in worker tasks that stay for the next batch (a task is started only when
every worker is busy, and without ``max_concurrency`` only up to the source's ``workers``
where it sets them: past it, messages wait in the buffer); an idle worker waits on a bare
asyncio future, and the buffer is used without a checkpoint while it has room or items: the
pump's hot path, one message at a time, is where a task or a turn of the loop per message shows.

``BrokerSource`` is the running side both share: it keeps its link to the broker with
``reconnect.Connection`` (the first connect fails ``app.run`` with ``ConnectorUnreachable``
unless the trigger says ``wait_for_server=True``; a lost link is opened again with backoff,
with ``connector_down`` and ``connector_up`` lifecycle events) and consumes it meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import attrs

from ..errors import SerializationError
from ..events import Message
from ..runtime.delivery import Undeliverable
from .reconnect import Connection, redacted
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
    "decode_body",
]

T = TypeVar("T")
Link = TypeVar("Link")  # what a source holds while connected: a connection and its channel, a client

#: What ``decode=`` accepts: "auto" reads the content type (JSON, text, else bytes).
DECODINGS: Final = ("auto", "json", "text", "bytes")
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
    need("wait_for_server", isinstance(trigger.wait_for_server, bool), "a bool")


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
    :param workers: deliveries in flight at once when the trigger sets no ``max_concurrency`` (None: as
        many as the broker sends).
    """

    def __init__(self, function: str, key: str, trigger: Any, buffer: int, workers: int | None = None) -> None:
        self.function = function
        self.key = key
        self.trigger = trigger
        self._send, self._receive = anyio.create_memory_object_stream[Inbound](buffer)
        self.hand: list[Inbound] = []  # taken for the next batch, not yet handed to a delivery
        self.in_delivery = 0
        self.workers = workers
        self._workers = 0  # running now
        self._max_workers = sys.maxsize
        self._freed: asyncio.Future[None] | None = None  # set when a worker goes idle while serve waits for one

    async def accept(self, runtime: SourceRuntime, inbound: Inbound) -> None:
        """Take ``inbound`` (waits while the buffer is full); it counts in flight until acknowledged."""
        runtime.in_flight.started()
        try:
            try:
                self._send.send_nowait(inbound)  # no checkpoint (a turn of the loop) while there is room
            except anyio.WouldBlock:
                await self._send.send(inbound)
        except BaseException:
            runtime.in_flight.finished()
            raise

    async def dead_letter(self, runtime: SourceRuntime, inbound: Inbound, error: SerializationError) -> None:
        """Dead-letter ``inbound`` without attempting it (its body could not be decoded) and reject it."""
        delivery = Undeliverable(self.function, self.key, inbound.message.id, inbound.message)
        runtime.dead_letter(delivery, error, attempts=0, first_attempt_at=time.time())
        await inbound.reject()

    def pending(self) -> list[str]:
        waiting = self._send.statistics().current_buffer_used + len(self.hand) + self.in_delivery
        return [f"{waiting} message(s) of {self.key} for {self.function}"] if waiting else []

    async def serve(self, runtime: SourceRuntime) -> None:
        spec = runtime.function(self.function)
        retries = attrs.evolve(spec.retries, max_retries=self.trigger.max_retries)
        limit = self.trigger.max_concurrency
        limiter = anyio.Semaphore(limit) if limit is not None else None

        # A delivery runs in a worker task; a worker that finished one waits for the next batch, so a
        # task is started only when every worker is busy (starting one costs more than a hand-over,
        # which is a bare asyncio future: this is the pump's hot path). Without max_concurrency, only
        # up to ``workers`` (where the source sets it): a broker that sends past its in-flight window
        # (mosquitto does, once acknowledgements flow) has the rest wait in the buffer for a worker,
        # not a task started for each.
        self._max_workers = self.workers if limit is None and self.workers is not None else sys.maxsize
        loop = asyncio.get_running_loop()
        idle: collections.deque[asyncio.Future[list[Inbound]]] = collections.deque()
        async with anyio.create_task_group() as tg:
            while True:
                # A free slot first, then the batch: what arrives while every slot is busy fills the next batch.
                if limiter is not None:
                    await limiter.acquire()
                while not (self._waiting(idle) or self._workers < self._max_workers):
                    self._freed = loop.create_future()
                    await self._freed
                self.hand = []
                batch = await collect_batch(self._receive, self.trigger.batch_size, self.trigger.batch_window, self.hand)
                self.in_delivery += len(batch)
                self.hand = []
                if self._waiting(idle):
                    idle.popleft().set_result(batch)
                else:
                    self._workers += 1
                    tg.start_soon(self._worker, runtime, batch, retries, limiter, idle)

    @staticmethod
    def _waiting(idle: collections.deque[asyncio.Future[list[Inbound]]]) -> bool:
        """Whether a worker waits for a batch (first in ``idle``)."""
        while idle and idle[0].done():
            idle.popleft()  # its worker was cancelled and has not yet taken itself off
        return bool(idle)

    async def _worker(
        self,
        runtime: SourceRuntime,
        batch: list[Inbound],
        retries: Retries,
        limiter: anyio.Semaphore | None,
        idle: collections.deque[asyncio.Future[list[Inbound]]],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._deliver(runtime, batch, retries, limiter)
                if self._freed is not None and not self._freed.done() and self.trigger.batch_size == 1:
                    # serve waits for a worker (every one is busy): take the next message as serve would
                    try:
                        batch = [self._receive.receive_nowait()]
                    except anyio.WouldBlock:
                        pass
                    else:
                        self.in_delivery += 1
                        continue
                waiting = loop.create_future()
                idle.append(waiting)
                if self._freed is not None and not self._freed.done():
                    self._freed.set_result(None)
                try:
                    batch = await waiting
                except BaseException:  # cancelled (the platform stops): take no more, and let go of one handed over
                    if waiting in idle:
                        idle.remove(waiting)
                    elif waiting.done() and not waiting.cancelled():
                        self._let_go(runtime, waiting.result(), limiter)
                    raise
        finally:
            self._workers -= 1
            if self._freed is not None and not self._freed.done():
                self._freed.set_result(None)

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
            self._let_go(runtime, batch, limiter)

    def _let_go(self, runtime: SourceRuntime, batch: list[Inbound], limiter: anyio.Semaphore | None) -> None:
        """``batch`` is out of the pump: settled, or left for the broker to deliver again."""
        self.in_delivery -= len(batch)
        runtime.in_flight.finished(len(batch))
        if limiter is not None:
            limiter.release()


def new_message_id() -> str:
    return uuid.uuid4().hex


class BrokerSource(Generic[Link]):
    """The running side both message connectors share: keep a link to the broker, pump what it delivers.

    A subclass says how to ``open`` a link to its broker (connected, subscribed), ``consume``
    it (hand each message to ``self.pump``; return once the link is lost), ``close`` it, and
    which exceptions mean the broker cannot be reached (``connection_errors``).

    :param key: the source's key, unique per platform (``"rabbitmq:orders:on_order"``).
    :param what: the connector as messages name it (``"RabbitMQ queue 'orders'"``).
    :param url: the broker's address (its password is hidden wherever it is shown).
    :param buffer: the pump's buffer (``MessagePump``).
    :param workers: deliveries in flight at once without ``max_concurrency`` (None: as many as the broker sends).
    """

    def __init__(self, trigger: Any, function: str, *, key: str, what: str, url: str, buffer: int, workers: int | None = None) -> None:
        self.trigger = trigger
        self.function = function
        self.key = key
        self.what = what
        self.url = url
        self.address = redacted(url)
        self.pump = MessagePump(function, key, trigger, buffer=buffer, workers=workers)
        self._link: Link | None = None

    def __repr__(self) -> str:
        return f"<{self.what} at {self.address} for {self.function}>"

    @property
    def takes_batches(self) -> bool:
        """Whether the handler takes a list of messages (``batch_size > 1``); a redriven dead letter comes as a list of one."""
        return bool(self.trigger.batch_size > 1)

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
        connection = Connection(
            runtime,
            function=self.function,
            what=self.what,
            address=self.url,
            connect=self._ensure_open,
            errors=self.connection_errors(),
            wait_for_server=self.trigger.wait_for_server,
        )
        if not self.trigger.wait_for_server:
            await connection.first()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.pump.serve, runtime)
                task_status.started()
                if self.trigger.wait_for_server:
                    await connection.first()
                while True:
                    # Returns at once while the link is up; after a loss it reconnects first (with the events).
                    await connection.call(self._linked)
                    assert self._link is not None
                    await self.consume(runtime, self._link)
                    await self._drop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop()

    async def _linked(self) -> None:
        if self._link is None:
            raise ConnectionError(f"{self.what}: the connection to {self.address} was lost")

    async def _ensure_open(self) -> None:
        if self._link is None:
            self._link = await self.open()

    async def _drop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            # A broker that went away may never answer the goodbye: do not wait for it long.
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self.close(link)
