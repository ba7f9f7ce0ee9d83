"""Topics: pub/sub with fan-out, batching, retries and dead letters.

How this works. ``publish`` puts the message into every subscription's bounded
buffer (an anyio memory object stream), waiting while a buffer is full: that is
the backpressure, and nothing is dropped. Each subscription runs one collector
that takes up to ``batch_size`` messages (waiting at most ``batch_window`` for a
batch to fill) and starts a delivery for it, at most ``max_concurrency`` at once.
A delivery invokes the function and retries the messages that failed -- all of
them when the invocation raised, only those named in a returned
``BatchResult(failed=[...])`` otherwise -- with the function's backoff, up to the
subscription's ``max_retries``; what is left goes to the dead letters.
Delivery is at least once: a retried batch may hold messages already handled.

Durability. ``publish`` stores the message for every subscription before it
returns; a subscription's delivery marks its messages done in the store once they
are handled or dead-lettered, and writes down each next attempt. A platform that
starts on the store delivers what its subscriptions had not finished first, in
publish order, batched by the attempt each message had reached (which keeps
counting). Messages of a subscription the app no longer has go to the dead letters.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import attrs

from ..errors import FaaSError, FunctionError, PlatformClosed, UnknownFunction
from ..events import BatchResult, Message
from ..runtime.delivery import Delivery
from ..runtime.shipping import dump_args
from .triggers import Topic, TopicSubscription

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ..runtime.delivery import SourceRuntime
    from ..spec import Retries
    from ..store import DeadLetter, PendingMessage, Store

__all__ = ["MessageDelivery", "TopicSource", "collect_batch"]

T = TypeVar("T")


class _Subscription:
    def __init__(self, topic: str, function: str, trigger: TopicSubscription) -> None:
        self.topic = topic
        self.function = function
        self.trigger = trigger
        self.send, self.receive = anyio.create_memory_object_stream[Message](trigger.buffer_size)
        self.in_delivery = 0
        self.hand: list[Message] = []  # taken from the buffer, not yet handed to a delivery
        self.resumed: list[PendingMessage] = []  # left by an earlier platform on the store
        self.retries: Retries | None = None  # the function's, with the subscription's max_retries (set when it serves)
        self.limiter: anyio.Semaphore | None = None  # made when first needed (max_concurrency), in the event loop
        self.intake: anyio.CancelScope | None = None  # the collector; cancelled when the subscription is removed
        self.removed: FaaSError | None = None  # why it was removed while running

    def buffered(self) -> int:
        return self.send.statistics().current_buffer_used

    def reconfigure(self, trigger: TopicSubscription, retries: Retries) -> None:
        """Take a new version's settings (its ``buffer_size`` is the same): from the next batch on."""
        if trigger.max_concurrency != self.trigger.max_concurrency:
            self.limiter = None  # the next batch makes one of the new size; deliveries running release the old one
        self.trigger = trigger
        self.retries = attrs.evolve(retries, max_retries=trigger.max_retries)

    async def serve(self, runtime: SourceRuntime) -> None:
        if self.retries is None:
            self.reconfigure(self.trigger, runtime.function(self.function).retries)
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as self.intake:
                if self.removed is not None:
                    return
                for batch, attempts_made in self._resumed_batches():
                    limiter = await self._acquire()
                    self.in_delivery += len(batch)
                    tg.start_soon(self._deliver, runtime, batch, limiter, attempts_made)
                while self.removed is None:
                    try:
                        batch = await self._collect()
                    except (anyio.ClosedResourceError, anyio.EndOfStream):
                        break  # removed: what was left went to the dead letters
                    limiter = await self._acquire()
                    if self.removed is not None:  # removed while this waited: the batch went to the dead letters
                        if limiter is not None:
                            limiter.release()
                        break
                    self.in_delivery += len(batch)
                    self.hand = []
                    tg.start_soon(self._deliver, runtime, batch, limiter)

    async def _acquire(self) -> anyio.Semaphore | None:
        if self.limiter is None and self.trigger.max_concurrency is not None:
            self.limiter = anyio.Semaphore(self.trigger.max_concurrency)
        limiter = self.limiter
        if limiter is not None:
            await limiter.acquire()
        return limiter

    async def _collect(self) -> list[Message]:
        self.hand = []
        return await collect_batch(self.receive, self.trigger.batch_size, self.trigger.batch_window, self.hand)

    def remove(self, runtime: SourceRuntime, error: FaaSError) -> None:
        """Stop taking messages; those accepted for this subscription and not yet delivered go to the
        dead letters with ``error`` (deliveries already running finish)."""
        self.removed = error
        if self.intake is not None:
            self.intake.cancel()
        leftover = [(m, 0) for m in self.hand] + [(p.message, p.attempt) for p in self.resumed]
        self.hand, self.resumed = [], []
        while True:
            try:
                leftover.append((self.receive.receive_nowait(), 0))
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        self.receive.close()  # a publisher still waiting for room gets BrokenResourceError: see TopicSource._send
        for message, attempts in leftover:
            self.refuse(runtime, message, attempts)

    def refuse(self, runtime: SourceRuntime, message: Message, attempts: int = 0) -> None:
        """Dead-letter ``message``, accepted for this removed subscription, without delivering it."""
        assert self.removed is not None
        delivery = MessageDelivery(self.function, f"topic:{self.topic}", message.id, [message], batched=False, store=runtime.store)
        runtime.dead_letter(delivery, self.removed, attempts=attempts, first_attempt_at=message.published_at)
        delivery.settled()
        runtime.in_flight.finished()

    def _resumed_batches(self) -> list[tuple[list[Message], int]]:
        """The messages an earlier platform left, in publish order, in batches of one attempt count."""
        batches: list[tuple[list[Message], int]] = []
        for pending in self.resumed:
            if batches and batches[-1][1] == pending.attempt and len(batches[-1][0]) < self.trigger.batch_size:
                batches[-1][0].append(pending.message)
            else:
                batches.append(([pending.message], pending.attempt))
        self.resumed = []
        return batches

    async def _deliver(self, runtime: SourceRuntime, batch: list[Message], limiter: anyio.Semaphore | None, attempts_made: int = 0) -> None:
        delivery = MessageDelivery(
            self.function,
            f"topic:{self.topic}",
            runtime.new_invocation_id(),
            batch,
            batched=self.trigger.batch_size > 1,
            store=runtime.store,
        )
        if attempts_made:
            delivery.attempts_made = attempts_made
            delivery.first_attempt_at = min(m.published_at for m in batch)
        try:
            assert self.retries is not None
            await runtime.deliver(delivery, self.retries)
        finally:
            self.in_delivery -= len(batch)
            runtime.in_flight.finished(len(batch))
            if limiter is not None:
                limiter.release()


async def collect_batch(receive: MemoryObjectReceiveStream[T], size: int, window: float, batch: list[T]) -> list[T]:
    """Up to ``size`` items from ``receive`` into ``batch`` (which the caller holds, to see what is in
    hand): waits for the first, takes what is there, then waits at most ``window`` seconds for more."""
    try:
        batch.append(receive.receive_nowait())  # no checkpoint (a turn of the loop) for one already there
    except anyio.WouldBlock:
        batch.append(await receive.receive())
    while len(batch) < size:
        try:
            batch.append(receive.receive_nowait())
        except anyio.WouldBlock:
            break
    if len(batch) < size and window > 0:
        with anyio.move_on_after(window):
            while len(batch) < size:
                batch.append(await receive.receive())
    return batch


class MessageDelivery(Delivery):
    """A batch of messages (one, unless the subscription batches): each attempt sends those not yet handled."""

    def __init__(
        self, function: str, source: str, invocation_id: str, messages: list[Message], *, batched: bool, store: Store | None = None
    ) -> None:
        super().__init__(function, source, invocation_id)
        self.remaining = messages
        self.ids = [m.id for m in messages]
        self.batched = batched
        self.store = store
        self.topic = source.removeprefix("topic:")

    def payload(self, attempt: int) -> bytes:
        self.remaining = [m if m.attempt == attempt else attrs.evolve(m, attempt=attempt) for m in self.remaining]
        arg: Any = self.remaining if self.batched else self.remaining[0]
        return dump_args(self.function, (arg,), {})

    def settle(self, value: Any) -> FaaSError | None:
        if not (self.batched and isinstance(value, BatchResult)):
            return None
        failed = set(value.failed)
        self.remaining = [m for m in self.remaining if m.id in failed]
        if not self.remaining:
            return None
        return FunctionError(
            f"{self.function}: the handler reported these messages as failed in its BatchResult",
            remote_type="microfaas.BatchResult",
            remote_message="reported as failed by the handler",
            remote_traceback="",
            function_name=self.function,
            invocation_id=self.invocation_id,
        )

    def dead_events(self) -> list[Any]:
        return list(self.remaining)

    def attempted(self, attempt: int, not_before: float) -> None:
        if self.store is not None:
            self.store.messages_attempted(self.topic, self.function, [m.id for m in self.remaining], attempt)

    def settled(self) -> None:
        if self.store is not None:
            self.store.messages_done(self.topic, self.function, self.ids)


class TopicSource:
    """A running topic: ``faas.topic(name)``. Publish to it; every subscription gets each message."""

    def __init__(self, topic: Topic, subscriptions: list[tuple[str, TopicSubscription]]) -> None:
        self.name = topic.name
        self.key = f"topic:{topic.name}"
        self._subscriptions = [_Subscription(topic.name, function, trigger) for function, trigger in subscriptions]
        self._runtime: SourceRuntime | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<topic {self.name!r} with {len(self._subscriptions)} subscriptions>"

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._runtime = runtime
        self._resume(runtime)
        async with anyio.create_task_group() as tg:
            for subscription in self._subscriptions:
                tg.start_soon(subscription.serve, runtime)
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()  # the task group stays open for subscriptions added later

    def subscribers(self) -> dict[str, TopicSubscription]:
        """The functions that subscribe to this topic now, with their subscriptions."""
        return {s.function: s.trigger for s in self._subscriptions}

    def subscribe(self, function: str, trigger: TopicSubscription, retries: Retries) -> None:
        """Subscribe ``function`` (a deployed one) from now on, or give its subscription new settings.

        A new subscription gets the messages published from now on. A changed one keeps
        its buffer (``buffer_size`` cannot change while it runs) and takes the new
        settings from its next batch.
        """
        for subscription in self._subscriptions:
            if subscription.function == function:
                subscription.reconfigure(trigger, retries)
                return
        subscription = _Subscription(self.name, function, trigger)
        subscription.reconfigure(trigger, retries)
        self._subscriptions = [*self._subscriptions, subscription]
        if self._tg is not None and self._runtime is not None:
            self._tg.start_soon(subscription.serve, self._runtime)

    def unsubscribe(self, function: str, error: FaaSError) -> None:
        """End ``function``'s subscription: its running deliveries finish; the messages it had
        accepted and not yet delivered go to the dead letters with ``error``."""
        [subscription] = [s for s in self._subscriptions if s.function == function]
        self._subscriptions = [s for s in self._subscriptions if s is not subscription]
        if self._runtime is not None:
            subscription.remove(self._runtime, error)

    def _resume(self, runtime: SourceRuntime) -> None:
        """Hand each subscription what it left unfinished; dead-letter what no subscription takes any more."""
        by_function = {s.function: s for s in self._subscriptions}
        for pending in runtime.snapshot.messages:
            if pending.topic != self.name:
                continue
            subscription = by_function.get(pending.function)
            if subscription is not None:
                subscription.resumed.append(pending)
                runtime.in_flight.started()
                continue
            error = UnknownFunction(
                f"topic {self.name!r} has no subscription of {pending.function!r} any more; message {pending.message.id} was not delivered"
            )
            delivery = MessageDelivery(
                pending.function, self.key, pending.message.id, [pending.message], batched=False, store=runtime.store
            )
            runtime.dead_letter(delivery, error, attempts=pending.attempt, first_attempt_at=pending.message.published_at)
            delivery.settled()

    async def publish(self, data: Any, attributes: dict[str, str] | None = None) -> str:
        """Publish ``data`` to every subscription and return the message id.

        Returns once the message is stored for every subscription; waits while a
        subscription's buffer is full (backpressure); never drops.

        :raises StoreError: the message could not be stored; it was not published.
        :raises SerializationError: ``data`` would not pickle for the store.
        """
        runtime = self._runtime
        if runtime is None or runtime.closed:
            raise PlatformClosed(f"topic {self.name!r} is not running; publish inside `async with app.run()`")
        message = Message(id=uuid.uuid4().hex, topic=self.name, data=data, attributes=attributes or {}, published_at=time.time())
        subscriptions = self._subscriptions
        if subscriptions:
            await runtime.store.put_message(message, [s.function for s in subscriptions])
        await self._send(runtime, message, subscriptions)
        return message.id

    async def _send(self, runtime: SourceRuntime, message: Message, subscriptions: list[_Subscription]) -> None:
        for subscription in subscriptions:
            runtime.in_flight.started()
            if subscription.removed is not None:
                subscription.refuse(runtime, message)
                continue
            try:
                await subscription.send.send(message)
            except anyio.BrokenResourceError:
                subscription.refuse(runtime, message)  # removed while this waited for room
            except BaseException:
                runtime.in_flight.finished()
                raise

    async def redrive(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Publish the letters' messages again, each to the subscription that failed it (attempt 1);
        the letters taken (those of a function that no longer subscribes stay)."""
        runtime = self._runtime
        if runtime is None or runtime.closed:
            raise PlatformClosed(f"topic {self.name!r} is not running; redrive inside `async with app.run()`")
        by_function = {s.function: s for s in self._subscriptions}
        taken = [letter for letter in letters if letter.function in by_function and isinstance(letter.event, Message)]
        messages = [attrs.evolve(letter.event, attempt=1) for letter in taken]
        writes = [runtime.store.put_message(m, [letter.function]) for m, letter in zip(messages, taken, strict=True)]
        for write in writes:
            await write
        for message, letter in zip(messages, taken, strict=True):
            await self._send(runtime, message, [by_function[letter.function]])
        return taken

    def pending(self) -> list[str]:
        out = []
        for s in self._subscriptions:
            waiting = s.buffered() + len(s.hand) + s.in_delivery + len(s.resumed)
            if waiting:
                out.append(f"{waiting} message(s) of topic {self.name!r} for {s.function}")
        return out
