"""Blocking views of what a running platform hands out: calls, batch jobs, topics, streams, event streams.

Each wraps an object that lives on the platform's event loop and reaches it only
through a ``Portal`` (``blocking.PlatformThread``): a blocking call runs there and
waits for the result. Reading a plain attribute does not need the loop.

This module sits just below ``blocking``: it imports ``runtime`` and ``sources``,
never ``platform``, ``blocking`` or above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .runtime.call import Call, CallStatus
from .sources.batch import BatchJob, BatchProgress
from .sources.streams import StreamSource
from .sources.topics import TopicSource

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from .events import Record
    from .lifecycle import LifecycleEvent

__all__ = ["Portal", "SyncBatchJob", "SyncCall", "SyncEvents", "SyncStream", "SyncTopic", "blocking_view"]

T = TypeVar("T")
R = TypeVar("R")


class Portal(Protocol):
    """The way into the platform's loop (``blocking.PlatformThread``)."""

    @property
    def running(self) -> bool: ...

    def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]: ...


def blocking_view(value: Any, thread: Portal) -> Any:
    """``value`` as a caller on another thread can use it: loop-bound objects get their blocking views."""
    if isinstance(value, Call):
        return SyncCall(value, thread)
    if isinstance(value, BatchJob):
        return SyncBatchJob(value, thread)
    if isinstance(value, TopicSource):
        return SyncTopic(value, thread)
    if isinstance(value, StreamSource):
        return SyncStream(value, thread)
    if isinstance(value, AsyncIterator):
        return thread.iterate(value)
    return value


class SyncCall(Generic[R]):
    """A spawned invocation, for blocking code: ``call.result(timeout=5)``."""

    def __init__(self, call: Call[R], thread: Portal) -> None:
        self._call = call
        self._thread = thread

    def __repr__(self) -> str:
        return repr(self._call)

    @property
    def id(self) -> str:
        return self._call.id

    @property
    def function_name(self) -> str:
        return self._call.function_name

    @property
    def status(self) -> CallStatus:
        return self._call.status

    @property
    def attempts(self) -> int:
        return self._call.attempts

    def done(self) -> bool:
        return self._call.done()

    def result(self, timeout: float | None = None) -> R:
        """Wait for the call to finish and return its value.

        :param timeout: seconds to wait (None: as long as it takes).
        :raises TimeoutError: it did not finish in ``timeout`` seconds (it keeps running).
        :raises FaaSError: the invocation failed; ``CallCancelled`` after ``cancel()``.
        """
        return self._thread.call(self._call.result, timeout)  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Stop waiting for a container, or abandon the running invocation."""
        if not self._call.done():
            self._thread.call(self._call.cancel)


class SyncBatchJob(Generic[R]):
    """A running batch job, for blocking code: ``job.wait()``, then ``job.results()``."""

    def __init__(self, job: BatchJob[R], thread: Portal) -> None:
        self._job = job
        self._thread = thread

    def __repr__(self) -> str:
        return repr(self._job)

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def function_name(self) -> str:
        return self._job.function_name

    @property
    def progress(self) -> BatchProgress:
        """``(done, failed, total)`` now."""
        return self._job.progress

    def done(self) -> bool:
        return self._job.done()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every task has finished (task failures do not raise).

        :raises TimeoutError: the job did not finish in ``timeout`` seconds (it keeps running).
        """
        self._thread.call(self._job.wait, timeout)

    def results(self) -> list[Any]:
        """Every task's result in input order; a failed task's slot holds its ``FaaSError``.

        :raises RuntimeError: the job has not finished (``job.wait()`` first).
        """
        return self._job.results()

    def failures(self) -> list[tuple[int, Any]]:
        return self._job.failures()

    def progress_updates(self) -> Iterator[BatchProgress]:
        """The progress now, then again after each task finishes, until the job is done."""
        return self._thread.iterate(self._job.progress_updates())

    def cancel(self) -> None:
        """Stop the job: running tasks are abandoned, the others never start."""
        self._thread.call(self._job.cancel)


class SyncTopic:
    """A running topic, for blocking code: ``faas.topic("orders").publish(data)``."""

    def __init__(self, topic: TopicSource, thread: Portal) -> None:
        self._topic = topic
        self._thread = thread
        self.name = topic.name

    def __repr__(self) -> str:
        return repr(self._topic)

    def publish(self, data: Any, attributes: dict[str, str] | None = None) -> str:
        """Publish to every subscription and return the message id (blocks while a buffer is full)."""
        return self._thread.call(self._topic.publish, data, attributes)  # type: ignore[no-any-return]

    def pending(self) -> list[str]:
        return self._thread.call(self._topic.pending)  # type: ignore[no-any-return]


class SyncStream:
    """A running stream, for blocking code: ``faas.stream("clicks").put(value, key=...)``."""

    def __init__(self, stream: StreamSource, thread: Portal) -> None:
        self._stream = stream
        self._thread = thread
        self.name = stream.name
        self.shards = stream.shards

    def __repr__(self) -> str:
        return repr(self._stream)

    def put(self, value: Any, key: Any = None) -> Record:
        """Append a record to the shard of ``key`` and return it (see ``StreamSource.put``)."""
        return self._thread.call(self._stream.put, value, key)  # type: ignore[no-any-return]

    def shard_for(self, key: str | None) -> int:
        return self._thread.call(self._stream.shard_for, key)  # type: ignore[no-any-return]

    def lag(self) -> dict[int, int]:
        return self._thread.call(self._stream.lag)  # type: ignore[no-any-return]

    def checkpoints(self, function: str) -> dict[int, int]:
        return self._thread.call(self._stream.checkpoints, function)  # type: ignore[no-any-return]

    def pending(self) -> list[str]:
        return self._thread.call(self._stream.pending)  # type: ignore[no-any-return]


class SyncEvents:
    """Lifecycle events as they happen, for blocking code; ends when the platform stops."""

    def __init__(self, stream: MemoryObjectReceiveStream[LifecycleEvent], thread: Portal) -> None:
        self._stream = stream
        self._thread = thread

    def __enter__(self) -> SyncEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[LifecycleEvent]:
        return self._thread.iterate(self._stream)

    def close(self) -> None:
        """Unsubscribe."""
        if self._thread.running:
            self._thread.call(self._stream.aclose)
