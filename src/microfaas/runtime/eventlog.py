"""The lifecycle event log: the ordered record of what the platform did, for tests and tools.

How this works. The platform calls ``LifecycleLog.emit`` at the points where
something happens to a function, a container or a node: a call got a cold or a
warm container, a container came up or failed to, was released for idleness or
evicted, a node was acquired or released, an invocation timed out, crashed or
ran out of memory, a delivery was retried or dead-lettered. Each becomes a
frozen ``LifecycleEvent``, appended to a log and sent to every subscriber.

``faas.events(kind=..., function=...)`` reads the log; ``faas.subscribe_events()``
returns a receive stream (an anyio memory object stream, unbounded, one per
subscriber) that gets every later event and ends when the platform stops.

The log keeps the latest ``EVENTS_KEPT`` events (a platform may run for a long
time in production, and ``warm_start`` is one event per call);
``microfaas.testing.running`` and the pytest fixture keep them all.
Emitting never awaits and never blocks: a slow subscriber only grows its buffer.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import ContainerCrashed, FaaSError, FunctionError, FunctionTimeout, OutOfMemory
from ..lifecycle import (
    COLD_START,
    CONTAINER_STARTED,
    CRASH,
    DEAD_LETTER,
    EVENTS_KEPT,
    FUNCTION_ERROR,
    KINDS,
    OUT_OF_MEMORY,
    RETRY,
    TIMEOUT,
    WARM_START,
    LifecycleEvent,
)

if TYPE_CHECKING:
    from ..nodes import Container

__all__ = ["LifecycleLog"]

# An event as recorded: (kind, function, container, node, time, wall_time, detail).
_Raw = tuple[str, str | None, str | None, str | None, float, float, dict[str, Any]]


def _event(entry: LifecycleEvent | _Raw) -> LifecycleEvent:
    if type(entry) is LifecycleEvent:
        return entry
    kind, function, container, node, at, wall_time, detail = entry  # type: ignore[misc]
    return LifecycleEvent(kind=kind, function=function, container=container, node=node, time=at, wall_time=wall_time, detail=detail)


def _kinds(kind: str | Iterable[str] | None) -> frozenset[str] | None:
    if kind is None:
        return None
    kinds = frozenset((kind,)) if isinstance(kind, str) else frozenset(kind)
    unknown = kinds - KINDS
    if unknown:
        raise ValueError(f"unknown lifecycle event kind(s) {sorted(unknown)}; the kinds are: {', '.join(sorted(KINDS))}")
    return kinds


def _matches(event: LifecycleEvent, kinds: frozenset[str] | None, function: str | None) -> bool:
    # A deployed function's events name its version ("resize@v2"); asking for "resize" gets them too.
    if kinds is not None and event.kind not in kinds:
        return False
    return function is None or event.function == function or (event.function or "").startswith(function + "@")


# The kind of event for an invocation that failed with each error (other errors make none:
# ColdStartFailed is reported per container as START_FAILED).
_FAILURES: Final = ((FunctionTimeout, TIMEOUT), (OutOfMemory, OUT_OF_MEMORY), (ContainerCrashed, CRASH), (FunctionError, FUNCTION_ERROR))


class _Subscriber:
    __slots__ = ("function", "kinds", "send")

    def __init__(self, send: MemoryObjectSendStream[LifecycleEvent], kinds: frozenset[str] | None, function: str | None) -> None:
        self.send = send
        self.kinds = kinds
        self.function = function


class LifecycleLog:
    """The platform's event log and its subscribers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int | None = EVENTS_KEPT) -> None:
        self._clock = clock
        self._events: collections.deque[LifecycleEvent | _Raw] = collections.deque(maxlen=limit)
        self._subscribers: list[_Subscriber] = []
        self._closed = False
        #: Events dropped from the front of the log because it was full.
        self.dropped = 0

    def keep(self, limit: int | None) -> None:
        """Keep at most ``limit`` events from now on (None: all of them)."""
        self._events = collections.deque(self._events, maxlen=limit)

    def emit(self, kind: str, *, function: str | None = None, container: str | None = None, node: str | None = None, **detail: Any) -> None:
        self._record(kind, function, container, node, detail)

    def _record(self, kind: str, function: str | None, container: str | None, node: str | None, detail: dict[str, Any]) -> None:
        # Kept as a tuple until someone reads the log: a warm start per call must stay cheap.
        raw = (kind, function, container, node, self._clock(), time.time(), detail)
        events = self._events
        if events.maxlen is not None and len(events) == events.maxlen:
            self.dropped += 1
        events.append(raw)
        if self._subscribers:
            event = _event(raw)
            for sub in list(self._subscribers):
                if _matches(event, sub.kinds, sub.function):
                    try:
                        sub.send.send_nowait(event)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self._subscribers.remove(sub)  # the subscriber closed its end

    def _logged(self) -> list[LifecycleEvent]:
        """The log, with every entry made a ``LifecycleEvent`` (the log keeps them, so each is converted once)."""
        logged = [_event(e) for e in self._events]
        self._events = collections.deque(logged, maxlen=self._events.maxlen)
        return logged

    # -- what the platform reports ----------------------------------------------------------------

    def call_started(self, function: str, container: Container, *, cold: bool, invocation_id: str, attempt: int) -> None:
        """A call got ``container``: a cold start (it was started for the call) or a warm one."""
        if cold:
            timings = {"start_s": container.start_s, "load_s": container.load_s, "init_s": container.init_s}
            detail = {"invocation_id": invocation_id, "attempt": attempt, **timings}
            self._record(COLD_START, function, container.id, container.node_id, detail)
        else:
            self._record(WARM_START, function, container.id, container.node_id, {"invocation_id": invocation_id, "attempt": attempt})

    def call_failed(self, error: FaaSError, *, attempt: int, injected: bool) -> None:
        """An attempt failed with ``error``: a timeout, out of memory, a crash or the handler's error."""
        kind = next((kind for error_type, kind in _FAILURES if isinstance(error, error_type)), None)
        if kind is None:
            return
        assert isinstance(error, FunctionTimeout | OutOfMemory | ContainerCrashed | FunctionError)
        detail: dict[str, Any] = {"invocation_id": error.invocation_id, "attempt": attempt, "error": str(error)}
        if isinstance(error, FunctionError):
            detail["remote_type"] = error.remote_type
        else:
            detail["injected"] = injected
        self.emit(kind, function=error.function_name, container=error.container_id, node=error.node_id, **detail)

    def container_started(self, function: str, container: Container, *, pinned: bool) -> None:
        timings = {"start_s": container.start_s, "load_s": container.load_s, "init_s": container.init_s}
        self.emit(
            CONTAINER_STARTED,
            function=function,
            container=container.id,
            node=container.node_id,
            pinned=pinned,
            pid=container.pid,
            **timings,
        )

    def retry(self, error: FaaSError, *, function: str, source: str, invocation_id: str, attempt: int, delay: float) -> None:
        """Attempt ``attempt`` failed with ``error`` and will be tried again in ``delay`` seconds."""
        where = {"container": getattr(error, "container_id", None), "node": getattr(error, "node_id", None)}
        detail: dict[str, Any] = {
            "source": source,
            "invocation_id": invocation_id,
            "attempt": attempt,
            "delay": delay,
            "error": type(error).__name__,
        }
        self.emit(RETRY, function=function, **where, **detail)

    def dead_letter(self, error: FaaSError, *, function: str, source: str, invocation_id: str, attempts: int) -> None:
        """An event of ``function`` failed all its ``attempts`` and went to the dead letters."""
        where = {"container": getattr(error, "container_id", None), "node": getattr(error, "node_id", None)}
        detail: dict[str, Any] = {"source": source, "invocation_id": invocation_id, "attempts": attempts}
        self.emit(DEAD_LETTER, function=function, **where, error=type(error).__name__, **detail)

    # -- reading ---------------------------------------------------------------------------------

    def events(self, kind: str | Iterable[str] | None = None, function: str | None = None) -> list[LifecycleEvent]:
        kinds = _kinds(kind)
        return [event for event in self._logged() if _matches(event, kinds, function)]

    def subscribe(
        self, kind: str | Iterable[str] | None = None, function: str | None = None, *, replay: bool = False
    ) -> MemoryObjectReceiveStream[LifecycleEvent]:
        kinds = _kinds(kind)
        send, receive = anyio.create_memory_object_stream[LifecycleEvent](math.inf)
        if replay:
            for event in self._logged():
                if _matches(event, kinds, function):
                    send.send_nowait(event)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(_Subscriber(send, kinds, function))
        return receive

    def close(self) -> None:
        """The platform stopped: end every subscription (the log stays readable)."""
        self._closed = True
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()
