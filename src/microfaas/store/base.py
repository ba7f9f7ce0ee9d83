"""The store protocol: what the runtime keeps durable, and the records it keeps.

How this works. A store is where accepted work is kept until it is done, so that
a platform that dies (kill -9, an OOM kill, a redeploy of its host) resumes it on
the next ``app.run(store=<the same store>)``. The runtime talks to it through
``Store``: a handful of writes, two point reads, and ``open``, which takes the
store for this platform and returns a ``Snapshot`` of everything unfinished.

Writes. Every write method returns an awaitable and is applied in the order the
methods were called. Writes made in one event-loop iteration are committed
together (group commit), and the awaitable completes once its write is durable,
or raises a ``StoreError`` when it could not be stored. Callers await the writes
that accept an event (``spawn`` returns only once its call is stored) and may
drop the others (a result, a checkpoint, an ack): losing one of those in a crash
only means the event is handled again, which at-least-once delivery allows.

Payloads. Fields typed ``Any`` (a call's outcome, a message, a record's value, a
dead letter's event and error) hold Python objects: a durable store pickles them
with cloudpickle when it writes and unpickles them when it loads; a row that will
not load is moved to the dead letters with ``StoreCorrupt`` and the reason, and
the rest loads. Fields typed ``bytes`` (a call's arguments, a deployment's code)
are pickled by the runtime and kept as they are.

To add a store (PostgreSQL, Redis, ...): implement ``Store`` and hand an instance
to ``app.run(store=...)``; ``tests/test_store_protocol.py`` runs the same property
tests against every store it is given, and nothing above this package changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from ..errors import FaaSError
from ..events import Message, Record

__all__ = [
    "DONE",
    "RESULT_TTL",
    "STREAM_RETENTION",
    "CallState",
    "DeadLetter",
    "PendingMessage",
    "Snapshot",
    "Store",
    "StoredCall",
    "StoredDeployment",
    "StoredJob",
    "StoredStream",
    "check_retention",
]

# How long finished calls (their results) and stream records are kept: a day, as
# Kinesis keeps records by default and Modal keeps a call's result.
RESULT_TTL: Final = 24 * 3600.0
STREAM_RETENTION: Final = 24 * 3600.0

CallState = Literal["pending", "succeeded", "failed"]


def check_retention(owner: str, **seconds: float) -> None:
    """Reject a retention setting that is not a positive number of seconds.

    :raises ValueError: naming ``owner`` and the setting.
    """
    for name, value in seconds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{owner}: {name} must be a number of seconds > 0, got {value!r}")


class _Done:
    """An awaitable that is already complete: what a store returns for a write it applied at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator that never suspends

    def __repr__(self) -> str:
        return "<store write: done>"


DONE: Final = _Done()


@attrs.frozen(kw_only=True)
class DeadLetter:
    """An event that exhausted its attempts (or could not be loaded from the store).

    :param function: the function that could not handle it.
    :param source: where it came from: ``"spawn"``, ``"topic:orders"``, ``"stream:clicks/0"``, ...
    :param event: what the handler was given (the envelope, or ``(args, kwargs)`` for spawn).
    :param error: the last attempt's error (``StoreCorrupt`` for a row that would not load).
    :param attempts: how many attempts were made.
    :param invocation_id: the id every attempt shared.
    :param first_attempt_at: wall-clock time (``time.time()``) of the first attempt.
    :param failed_at: wall-clock time it was given up.
    :param id: this letter's id in the store (``faas.redrive`` removes it by id).
    """

    function: str
    source: str
    event: Any
    error: FaaSError
    attempts: int
    invocation_id: str
    first_attempt_at: float
    failed_at: float
    id: str = ""


@attrs.frozen(kw_only=True)
class StoredCall:
    """A spawned call (or a batch task) as kept until it finishes, then for ``result_ttl``.

    :param id: the call's id (its invocation id; every attempt shares it).
    :param function: the function it calls.
    :param source: ``"spawn"``, ``"batch:<job id>"``, or what a dead letter was redriven from.
    :param args: the pickled ``(args, kwargs)``.
    :param accepted_at: wall-clock time it was accepted; its max event age counts from here.
    :param attempt: the highest attempt that may have started (1 once accepted): a call
        resumed after a crash runs attempt ``attempt + 1``, so no number is used twice.
    :param not_before: wall-clock time before which its next attempt must not start (a backoff).
    :param job_id: the batch job it is a task of, if any.
    :param index: its index in that job.
    :param state: ``"pending"``, ``"succeeded"`` or ``"failed"``.
    :param outcome: the handler's value (succeeded) or the ``FaaSError`` (failed).
    :param finished_at: wall-clock time it finished.
    """

    id: str
    function: str
    source: str
    args: bytes
    accepted_at: float
    attempt: int = 1
    not_before: float = 0.0
    job_id: str | None = None
    index: int | None = None
    state: CallState = "pending"
    outcome: Any = None
    finished_at: float | None = None


@attrs.frozen(kw_only=True)
class StoredJob:
    """A batch job: its tasks are ``StoredCall`` rows with its ``job_id``.

    :param tasks: filled in by reads and by ``open``: every task of the job, by index.
    """

    id: str
    function: str
    total: int
    max_parallel: int
    created_at: float
    finished_at: float | None = None
    tasks: tuple[StoredCall, ...] = ()


@attrs.frozen(kw_only=True)
class PendingMessage:
    """A topic message one subscription (``function``) has not yet handled or dead-lettered.

    :param attempt: the highest attempt that may have started (1 once published).
    """

    topic: str
    function: str
    message: Message
    attempt: int = 1


@attrs.frozen(kw_only=True)
class StoredStream:
    """What a stream left: per shard, its next sequence, its records kept, and each consumer's checkpoint.

    :param next_sequence: per shard, the sequence the next record put will get.
    :param records: per shard, the records kept (not expired, not yet trimmed), in sequence order.
    :param checkpoints: per ``(function, shard)``, the highest sequence that consumer has finished.
    """

    next_sequence: Mapping[int, int] = attrs.field(factory=dict)
    records: Mapping[int, tuple[Record, ...]] = attrs.field(factory=dict)
    checkpoints: Mapping[tuple[str, int], int] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class StoredDeployment:
    """One deployed version of a function.

    :param code: the pickled ``(fn, settings)``, made by the runtime (the function by value).
    :param active: whether this is the version that serves (the newest, unless undeployed).
    """

    name: str
    version: int
    code: bytes
    deployed_at: float
    active: bool = True


@attrs.frozen(kw_only=True)
class Snapshot:
    """Everything unfinished a store holds, as ``open`` finds it.

    :param calls: unfinished calls that are not batch tasks, in the order they were accepted.
    :param jobs: unfinished batch jobs, each with all its tasks.
    :param messages: topic messages not yet handled, per subscription, in publish order.
    :param streams: per stream name, its records and checkpoints.
    :param dead_letters: every dead letter kept, oldest first (rows that would not load among them).
    :param deployments: every deployed version, by name and version.
    :param offsets: per ``(source, function)`` of an outside source (files), each part's offset (``set_offset``).
    """

    calls: tuple[StoredCall, ...] = ()
    jobs: tuple[StoredJob, ...] = ()
    messages: tuple[PendingMessage, ...] = ()
    streams: Mapping[str, StoredStream] = attrs.field(factory=dict)
    dead_letters: tuple[DeadLetter, ...] = ()
    deployments: tuple[StoredDeployment, ...] = ()
    offsets: Mapping[tuple[str, str], Mapping[str, int]] = attrs.field(factory=dict)


@runtime_checkable
class Store(Protocol):
    """Where a platform keeps accepted work durable (see the module's header for the rules).

    ``durable`` says whether what it holds outlives this process (``MemoryStore``: no).
    """

    durable: bool

    async def open(self) -> Snapshot:
        """Take the store for this platform and return what is unfinished.

        Migrates an older schema forward; moves rows that will not load to the dead letters.

        :raises StoreLocked: another platform has it open.
        :raises StoreCorrupt: it is not a microfaas store.
        :raises StoreVersionError: a newer microfaas wrote it.
        :raises StoreReadOnly, StoreFull, StoreError: it cannot be written.
        """
        ...

    async def close(self) -> None:
        """Commit every write made so far and give the store up (another platform may open it)."""
        ...

    # -- calls and batch jobs --------------------------------------------------------------

    def put_call(self, call: StoredCall) -> Awaitable[None]:
        """Keep a newly accepted call."""
        ...

    def call_attempted(self, call_id: str, attempt: int, not_before: float) -> Awaitable[None]:
        """Call ``call_id`` may start attempt ``attempt`` from wall-clock time ``not_before``."""
        ...

    def call_finished(self, call_id: str, *, succeeded: bool, outcome: Any, finished_at: float) -> Awaitable[None]:
        """Call ``call_id`` finished with ``outcome`` (its value, or its ``FaaSError``); keep it for ``result_ttl``."""
        ...

    def put_job(self, job: StoredJob, tasks: Sequence[StoredCall]) -> Awaitable[None]:
        """Keep a newly accepted batch job and all its tasks."""
        ...

    def job_finished(self, job_id: str, finished_at: float) -> Awaitable[None]:
        """Every task of batch job ``job_id`` has finished; keep it for ``result_ttl``."""
        ...

    # -- topics and streams ----------------------------------------------------------------

    def put_message(self, message: Message, functions: Sequence[str]) -> Awaitable[None]:
        """Keep a published message until each of its subscriptions (``functions``) is done with it."""
        ...

    def messages_attempted(self, topic: str, function: str, ids: Sequence[str], attempt: int) -> Awaitable[None]:
        """The subscription of ``function`` may start attempt ``attempt`` of these messages."""
        ...

    def messages_done(self, topic: str, function: str, ids: Sequence[str]) -> Awaitable[None]:
        """The subscription of ``function`` handled (or dead-lettered) these messages."""
        ...

    def put_record(self, stream: str, record: Record) -> Awaitable[None]:
        """Keep a record put on ``stream`` (its shard and sequence are in it) for the stream retention."""
        ...

    def set_checkpoint(self, stream: str, function: str, shard: int, sequence: int) -> Awaitable[None]:
        """Consumer ``function`` finished every record of ``shard`` up to ``sequence``."""
        ...

    def trim_records(self, stream: str, shard: int, below: int) -> Awaitable[None]:
        """Every consumer is past the records of ``shard`` below sequence ``below``: drop them."""
        ...

    def set_offset(self, source: str, function: str, part: str, offset: int) -> Awaitable[None]:
        """An outside source (``"files:data/*.csv"``) has finished the first ``offset`` items of ``part``
        (a file: its rows) for ``function``; it resumes after them."""
        ...

    def forget_offsets(self, source: str, function: str, parts: Sequence[str]) -> Awaitable[None]:
        """Drop these parts' offsets (a directory's files that are gone); a part never set is no error."""
        ...

    # -- dead letters and deployments ----------------------------------------------------

    def put_dead_letter(self, letter: DeadLetter) -> Awaitable[None]:
        """Keep a dead letter (its ``id`` is set)."""
        ...

    def remove_dead_letters(self, ids: Sequence[str]) -> Awaitable[None]:
        """Drop these dead letters (they were redriven)."""
        ...

    def put_deployment(self, deployment: StoredDeployment) -> Awaitable[None]:
        """Keep a deployed version; it becomes its name's active one (the others are no longer)."""
        ...

    def undeploy(self, name: str) -> Awaitable[None]:
        """No version of ``name`` is active any more (they are kept, for ``versions``)."""
        ...

    # -- housekeeping and reads ----------------------------------------------------------

    def prune(self, now: float) -> Awaitable[None]:
        """Drop finished calls and jobs older than ``result_ttl`` and records older than the stream retention."""
        ...

    def get_call(self, call_id: str) -> StoredCall | None:
        """Call ``call_id`` as stored (None: never stored, or pruned); sees every write already committed."""
        ...

    def get_job(self, job_id: str) -> StoredJob | None:
        """Batch job ``job_id`` with all its tasks (None: never stored, or pruned)."""
        ...

    def get_offsets(self, source: str, function: str) -> dict[str, int]:
        """The parts' offsets of ``source`` for ``function`` (``set_offset``), as committed now."""
        ...
