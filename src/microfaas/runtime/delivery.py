"""Asynchronous delivery: the one loop of attempts, backoff, max event age and dead letters.

How this works. Every asynchronous event -- a spawned call, a topic message (or a
batch of them), a stream batch, a batch job's task, a timer's tick -- is handed to
``Deliverer.deliver`` as a ``Delivery``: what to invoke with for each attempt, and
what a handler's value means for it. The loop invokes; when the attempt fails
with a retryable error (the handler raised, the container timed out, crashed,
ran out of memory, could not start, or was throttled) it waits the backoff of
``Retries`` (with full jitter, as AWS advises against retry storms) and tries
again, keeping the invocation id, until the retries run out or the event would
be older than ``max_event_age`` (Lambda's MaximumEventAgeInSeconds) by the next
attempt. What is left goes to the dead letters, with its last error.

A delivery may narrow itself between attempts (a topic batch whose handler
reported some messages failed in a ``BatchResult`` retries only those), or split
itself instead of retrying (a stream batch bisected on error, as Lambda's
BisectBatchOnFunctionError: each half is a new delivery whose attempts start at 1).

This is the one place where an accepted event is handled or dead-lettered, so it
is where a durable store records both: before it waits to retry, the loop tells the
delivery its next attempt (``attempted``), which a stored one writes down, and every
dead letter goes to the store. A delivery resumed after a restart (``attempts_made``
> 0) runs its next attempt at once, after ``not_before``, unless it is already past
``max_event_age``; its attempt numbers keep counting and its retries are not renewed.
An attempt cut short because the platform stopped (``PlatformClosed``) is neither
retried nor dead-lettered: the event stays accepted, for the next platform on the store.
"""

from __future__ import annotations

import collections
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc
import attrs

from ..errors import ColdStartFailed, ContainerCrashed, FaaSError, FunctionError, FunctionTimeout, OutOfMemory, PlatformClosed, Throttled
from ..store import DeadLetter
from .shipping import loads_or_blob

if TYPE_CHECKING:
    from ..spec import FunctionSpec, Retries
    from ..store import Snapshot, Store
    from .call import Call
    from .eventlog import LifecycleLog

__all__ = [
    "RETRYABLE",
    "CallDelivery",
    "DeadLetter",
    "Delivered",
    "Deliverer",
    "Delivery",
    "InFlight",
    "Source",
    "SourceRuntime",
    "Undeliverable",
    "expired_at_restart",
    "retry_delay",
]

# Errors after which an event is tried again (as Lambda retries asynchronous invocations);
# the others (a result that would not pickle, the platform stopping, ...) would only fail again.
RETRYABLE: Final = (FunctionError, FunctionTimeout, OutOfMemory, ContainerCrashed, ColdStartFailed, Throttled)


def retry_delay(retries: Retries, retry: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1-based), jittered when asked."""
    delay = retries.delay(retry)
    if retries.jitter:
        return (rng or random).uniform(0.0, delay)
    return delay


class InFlight:
    """Counts work in flight; ``wait_idle`` returns once the count is back to zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = anyio.Event()
        self._idle.set()

    def started(self, n: int = 1) -> None:
        if n <= 0:
            return
        if self.count == 0:
            self._idle = anyio.Event()
        self.count += n

    def finished(self, n: int = 1) -> None:
        self.count -= n
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            await self._idle.wait()


class Delivery:
    """One accepted event (or batch of events) on its way to a function.

    Subclasses say what each attempt sends (``payload``) and, where it applies, what
    a handler's value means (``settle``), how the delivery splits on failure
    (``split``) and what is done once it is handled or dead-lettered (``settled``).

    :param function: the function that handles it.
    :param source: where it came from (``"spawn"``, ``"topic:orders"``, ...), as its dead letter says.
    :param invocation_id: the id every attempt shares.

    A delivery resumed from a store sets ``attempts_made`` (the attempts that may have
    started before the restart), ``not_before`` and ``first_attempt_at`` (wall clock).
    """

    __slots__ = ("attempts_made", "first_attempt_at", "function", "invocation_id", "not_before", "source")

    def __init__(self, function: str, source: str, invocation_id: str) -> None:
        self.function = function
        self.source = source
        self.invocation_id = invocation_id
        self.attempts_made = 0
        self.not_before = 0.0
        self.first_attempt_at: float | None = None

    def payload(self, attempt: int) -> bytes:
        """The pickled ``(args, kwargs)`` of attempt number ``attempt``.

        :raises SerializationError: what is to be sent would not pickle.
        """
        raise NotImplementedError

    def settle(self, value: Any) -> FaaSError | None:
        """The handler returned ``value``: None when that handled everything, else the error
        to retry (and narrow what the next attempt sends to what is left)."""
        return None

    def split(self) -> list[Delivery]:
        """After a failed attempt: deliveries to make instead of retrying this one (none: retry)."""
        return []

    def dead_events(self) -> list[Any]:
        """What goes to the dead letters when every attempt failed, one letter each."""
        raise NotImplementedError

    def settled(self) -> None:
        """The delivery was handled or dead-lettered (split ones settle each part instead)."""

    def attempted(self, attempt: int, not_before: float) -> None:
        """Attempt ``attempt`` may start from wall-clock time ``not_before``: a stored delivery writes it down."""


class CallDelivery(Delivery):
    """A call with fixed arguments: a spawned call, a batch task, a timer's tick.

    :param blob: the pickled ``(args, kwargs)``, made when the call was accepted.
    :param event: what its dead letter records (None: the call's ``(args, kwargs)``).
    :param store: where the call is kept (None: it is not), to count its attempts there.
    """

    __slots__ = ("blob", "event", "store")

    def __init__(
        self, function: str, source: str, invocation_id: str, blob: bytes, event: Any = None, *, store: Store | None = None
    ) -> None:
        super().__init__(function, source, invocation_id)
        self.blob = blob
        self.event = event
        self.store = store

    def attempted(self, attempt: int, not_before: float) -> None:
        if self.store is not None:
            self.store.call_attempted(self.invocation_id, attempt, not_before)

    def payload(self, attempt: int) -> bytes:
        return self.blob

    def dead_events(self) -> list[Any]:
        return [loads_or_blob(self.blob) if self.event is None else self.event]


class Undeliverable(Delivery):
    """An event that goes straight to the dead letters, never attempted: one that will not decode,
    or one a source no longer in the app left in the store."""

    __slots__ = ("event",)

    def __init__(self, function: str, source: str, invocation_id: str, event: Any) -> None:
        super().__init__(function, source, invocation_id)
        self.event = event

    def dead_events(self) -> list[Any]:
        return [self.event]


@attrs.frozen
class Delivered:
    """How a delivery ended: ``error`` is None when it was handled (``value`` is the handler's),
    else the last attempt's error (the event was dead-lettered, or split and its parts delivered)."""

    value: Any
    error: FaaSError | None
    attempts: int


Invoke = Callable[[str, bytes, str, int], Awaitable[Any]]


class Deliverer:
    """The retry loop and the dead letters it keeps.

    :param invoke: runs one attempt: ``(function, args blob, invocation id, attempt)`` -> value.
    :param lifecycle: where retries and dead letters are reported.
    :param store: where dead letters are kept (None: only here).
    """

    def __init__(self, invoke: Invoke, lifecycle: LifecycleLog, store: Store | None = None) -> None:
        self._invoke = invoke
        self._lifecycle = lifecycle
        self.store = store
        self.dead_letters: dict[str, list[DeadLetter]] = collections.defaultdict(list)

    async def deliver(self, delivery: Delivery, retries: Retries, *, first_attempt_at: float | None = None) -> Delivered:
        """Attempt ``delivery`` until it is handled or dead-lettered, per ``retries``."""
        if first_attempt_at is None:
            first_attempt_at = delivery.first_attempt_at
        first = time.time() if first_attempt_at is None else first_attempt_at
        attempt = delivery.attempts_made
        if attempt:
            expired = expired_at_restart(delivery, retries, first)
            if expired is not None:
                self.dead_letter(delivery, expired, attempts=attempt, first_attempt_at=first)
                delivery.settled()
                return Delivered(None, expired, attempt)
            if delivery.not_before > time.time():
                await anyio.sleep(delivery.not_before - time.time())
            delivery.attempted(attempt + 1, time.time())
        return await self._attempts(delivery, retries, attempt, first, None)

    async def deliver_after(self, delivery: Delivery, retries: Retries, error: FaaSError) -> Delivered:
        """Go on with ``delivery`` after its first attempt, made elsewhere (``Invoker.start``),
        failed with ``error``: retried or dead-lettered as ``deliver`` would have."""
        first = time.time() if delivery.first_attempt_at is None else delivery.first_attempt_at
        return await self._attempts(delivery, retries, 1, first, error)

    async def _attempts(self, delivery: Delivery, retries: Retries, attempt: int, first: float, error: FaaSError | None) -> Delivered:
        """The loop: ``attempt`` attempts made so far, the last of which failed with ``error`` (None: attempt now)."""
        while True:
            if error is None:
                attempt += 1
                try:
                    value = await self._invoke(delivery.function, delivery.payload(attempt), delivery.invocation_id, attempt)
                except FaaSError as exc:
                    error = exc
                else:
                    error = delivery.settle(value)
                    if error is None:
                        delivery.settled()
                        return Delivered(value, None, attempt)
            if isinstance(error, PlatformClosed):
                return Delivered(None, error, attempt)  # interrupted: it stays accepted, for the next run
            parts = delivery.split()
            if parts:
                for part in parts:
                    await self.deliver(part, retries, first_attempt_at=first)
                return Delivered(None, error, attempt)
            delay = retry_delay(retries, attempt)
            if not (isinstance(error, RETRYABLE) and may_retry(retries, attempt, first, delay)):
                break
            delivery.attempted(attempt + 1, time.time() + delay)
            self._lifecycle.retry(
                error,
                function=delivery.function,
                source=delivery.source,
                invocation_id=delivery.invocation_id,
                attempt=attempt,
                delay=delay,
            )
            await anyio.sleep(delay)
            error = None
        self.dead_letter(delivery, error, attempts=attempt, first_attempt_at=first)
        delivery.settled()
        return Delivered(None, error, attempt)

    def dead_letter(self, delivery: Delivery, error: FaaSError, *, attempts: int, first_attempt_at: float) -> None:
        """Keep each of ``delivery``'s events as a dead letter with ``error``."""
        failed_at = time.time()
        for event in delivery.dead_events():
            letter = DeadLetter(
                function=delivery.function,
                source=delivery.source,
                event=event,
                error=error,
                attempts=attempts,
                invocation_id=delivery.invocation_id,
                first_attempt_at=first_attempt_at,
                failed_at=failed_at,
                id=uuid.uuid4().hex,
            )
            self.dead_letters[delivery.function].append(letter)
            if self.store is not None:
                self.store.put_dead_letter(letter)
            where = {"function": delivery.function, "source": delivery.source, "invocation_id": delivery.invocation_id}
            self._lifecycle.dead_letter(error, **where, attempts=attempts)


def expired_at_restart(delivery: Delivery, retries: Retries, first_attempt_at: float) -> FaaSError | None:
    """The error a resumed delivery is dead-lettered with when it is past its max event age (else None)."""
    age = time.time() - first_attempt_at
    if retries.max_event_age is None or age <= retries.max_event_age:
        return None
    return PlatformClosed(
        f"{delivery.function}: {delivery.invocation_id} was cut short when the platform stopped (after attempt "
        f"{delivery.attempts_made}); when it restarted the event was {age:.0f}s old, past max_event_age={retries.max_event_age}s"
    )


def may_retry(retries: Retries, attempt: int, first_attempt_at: float, delay: float) -> bool:
    """Whether another attempt is allowed: retries left, and the event not too old by then."""
    if attempt > retries.max_retries:
        return False
    return retries.max_event_age is None or time.time() + delay - first_attempt_at <= retries.max_event_age


class SourceRuntime(Protocol):
    """What an event source may ask of the runtime, and nothing more.

    Sources accept events, count them in ``in_flight`` until they are handled or
    dead-lettered, and hand them to ``deliver`` (or, for calls whose callers hold a
    ``Call``, to ``run_call``).
    """

    @property
    def app_name(self) -> str: ...

    @property
    def closed(self) -> bool:
        """Whether the platform has stopped (accepting an event then raises ``PlatformClosed``)."""
        ...

    @property
    def in_flight(self) -> InFlight: ...

    def function(self, name: str) -> FunctionSpec:
        """The settings of function ``name``.

        :raises UnknownFunction: the app has no such function.
        :raises PlatformClosed: the platform is not running.
        """
        ...

    def new_invocation_id(self) -> str: ...

    @property
    def store(self) -> Store:
        """Where accepted events are kept: a source stores each before accepting it returns."""
        ...

    @property
    def snapshot(self) -> Snapshot:
        """What the store held when the platform started (a source resumes its own part of it)."""
        ...

    def dead_letter(self, delivery: Delivery, error: FaaSError, *, attempts: int, first_attempt_at: float) -> None:
        """Keep ``delivery``'s events as dead letters with ``error``, without attempting them."""
        ...

    async def deliver(self, delivery: Delivery, retries: Retries) -> Delivered:
        """Attempt ``delivery`` until it is handled or dead-lettered (``Deliverer.deliver``)."""
        ...

    async def run_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """Deliver a call whose caller holds ``call``, and settle ``call`` with its value or error."""
        ...

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the platform's task group (it is cancelled when the platform stops)."""
        ...

    def emit(self, kind: str, *, function: str | None = None, **detail: Any) -> None:
        """Record a lifecycle event of ``kind`` (one of ``microfaas.lifecycle.KINDS``) about ``function``."""
        ...


class Source(Protocol):
    """An event source run by the platform (see ``sources/``)."""

    key: str  # e.g. "topic:orders"; unique per platform

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve until cancelled; call ``task_status.started()`` once ready."""
        ...

    def pending(self) -> list[str]:
        """What is accepted but not yet handled or dead-lettered, described for people."""
        ...
