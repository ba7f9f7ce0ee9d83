"""The runtime's side of the store: resuming what an earlier platform left, calls by id, redrive.

How this works. At start the runtime opens its store and gets a ``Snapshot`` of
everything unfinished. ``Durable.resume`` keeps the dead letters and starts every
unfinished spawned call again (``attempts_made`` from the store, so attempt numbers
keep counting); the sources take their own part of the snapshot (topic messages,
stream records and checkpoints) when they start, and batch jobs resume with their
tasks. A spawned call is looked up by id among the running ones, then the recently
finished ones kept here (a finished call's write may not be committed yet), then
in the store. ``redrive`` turns dead letters back into accepted events: a topic's
go back to their subscription, every other kind becomes a spawned call with the
arguments its handler had, stored (and the letters removed) before it returns.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import anyio

from ..errors import FaaSError, PlatformClosed, StoreCorrupt, UnknownCall, UnknownFunction, UnknownSource
from ..events import BatchTask, Message, Record, RecordBatch
from ..store import StoredCall
from .call import Call
from .delivery import CallDelivery, Undeliverable, expired_at_restart
from .shipping import dump_args

if TYPE_CHECKING:
    from ..spec import FunctionSpec, Retries
    from ..store import DeadLetter, Snapshot, Store
    from .delivery import Deliverer, Source

__all__ = ["RECENT_CALLS", "Durable", "DurableOwner", "Redrivable", "TakesBatches"]

# Finished calls kept in memory for ``faas.call(id)``, newest last; older ones are read from the store.
RECENT_CALLS: Final = 10_000
# How often finished calls and stream records past their time are dropped from the store.
PRUNE_EVERY: Final = 60.0


@runtime_checkable
class Redrivable(Protocol):
    """A source that takes its dead letters back (a topic: into the subscription that failed them)."""

    async def redrive(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Accept these letters' events again, durably, before returning; the letters it took."""
        ...


@runtime_checkable
class TakesBatches(Protocol):
    """A source whose handler takes a list of its messages (a connector with ``batch_size > 1``):
    a redriven letter's message is handed to it as a list of one."""

    @property
    def takes_batches(self) -> bool: ...


class DurableOwner(Protocol):
    """What ``Durable`` asks of the runtime that owns it (``Runtime``; runtime.py imports this
    module, so it is not imported back)."""

    deliverer: Deliverer
    functions: dict[str, FunctionSpec]
    sources: dict[str, Source]
    running_calls: dict[str, Call[Any]]

    @property
    def app_name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def new_invocation_id(self) -> str: ...

    def start_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """Run ``call`` from now on."""
        ...


class Durable:
    """The runtime's store, and what it knows of calls from before this platform."""

    def __init__(self, runtime: DurableOwner, store: Store) -> None:
        self.runtime = runtime
        self.store = store
        self.recent: collections.OrderedDict[str, Call[Any]] = collections.OrderedDict()

    def resume(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``'s dead letters and start its unfinished calls again."""
        runtime = self.runtime
        for letter in snapshot.dead_letters:
            runtime.deliverer.dead_letters[letter.function].append(letter)
        for row in snapshot.calls:
            self.start(row, Call(row.id, row.function), resumed=True)
        for pending in snapshot.messages:
            if f"topic:{pending.topic}" not in runtime.sources:  # the others resume with their topic
                error = UnknownSource(
                    f"app {runtime.app_name!r} has no topic {pending.topic!r} any more; message {pending.message.id} was not delivered"
                )
                leftover = Undeliverable(pending.function, f"topic:{pending.topic}", pending.message.id, pending.message)
                runtime.deliverer.dead_letter(leftover, error, attempts=pending.attempt, first_attempt_at=pending.message.published_at)
                self.store.messages_done(pending.topic, pending.function, [pending.message.id])

    def start(self, row: StoredCall, call: Call[Any], *, resumed: bool = False, event: Any = None) -> None:
        """Run the stored call ``row`` (whose caller, if any, holds ``call``) in the platform's task group."""
        runtime = self.runtime
        delivery = CallDelivery(row.function, row.source, row.id, row.args, event, store=self.store)
        delivery.first_attempt_at = row.accepted_at
        if resumed:
            delivery.attempts_made = call.attempts = row.attempt
            delivery.not_before = row.not_before
        spec = runtime.functions.get(row.function)
        error: FaaSError | None = None
        if spec is None:  # the function is no longer in the app
            known = ", ".join(sorted(runtime.functions)) or "none"
            error = UnknownFunction(
                f"app {runtime.app_name!r} has no function {row.function!r} any more (it has: {known}); call {row.id} was not run"
            )
        elif resumed:
            error = expired_at_restart(delivery, spec.retries, row.accepted_at)
        if error is not None:
            runtime.deliverer.dead_letter(delivery, error, attempts=row.attempt, first_attempt_at=row.accepted_at)
            call._fail(error)
            self.finished(call, delivery)
            return
        assert spec is not None
        runtime.start_call(call, delivery, spec.retries)  # found by id (``running_calls``) from now on

    def finished(self, call: Call[Any], delivery: CallDelivery) -> None:
        """``call`` has ended: write down its outcome (unless the platform's stop cut it short) and remember it."""
        recent = self.recent
        recent[call.id] = call
        if len(recent) > RECENT_CALLS:
            recent.popitem(last=False)
        if delivery.store is not None and not (self.runtime.closed and call.status == "failed" and _cut_short(call)):
            succeeded = call.status == "succeeded"
            outcome = call._value if succeeded else call._error
            delivery.store.call_finished(call.id, succeeded=succeeded, outcome=outcome, finished_at=time.time())

    def call(self, call_id: str) -> Call[Any]:
        """The spawned call ``call_id``: running, recently finished, or as the store has it.

        :raises UnknownCall: no call by that id.
        """
        running = self.runtime.running_calls.get(call_id)
        if running is not None:
            return running
        call = self.recent.get(call_id)
        if call is not None:
            return call
        row = self.store.get_call(call_id)
        if row is None:
            raise UnknownCall(f"no call {call_id!r} on this platform's store (never spawned here, or finished more than result_ttl ago)")
        call = Call(row.id, row.function)
        call.attempts = row.attempt
        if row.state == "succeeded":
            call._succeed(row.outcome)
        elif row.state == "failed":
            call._fail(row.outcome)
        return call

    async def redrive(self, name: str, sources: dict[str, Any]) -> int:
        """Send ``name``'s dead letters back into their sources; how many went.

        Letters that could not be loaded from the store (``StoreCorrupt``) stay.
        """
        runtime = self.runtime
        letters = [letter for letter in runtime.deliverer.dead_letters.get(name, ()) if not isinstance(letter.error, StoreCorrupt)]
        if not letters:
            return 0
        by_source: dict[str, list[DeadLetter]] = collections.defaultdict(list)
        rows: list[tuple[StoredCall, DeadLetter]] = []
        now = time.time()
        for letter in letters:
            source = sources.get(letter.source)
            if isinstance(source, Redrivable):
                by_source[letter.source].append(letter)
            else:
                call_id = runtime.new_invocation_id()
                args = redrive_args(name, letter, batched=isinstance(source, TakesBatches) and source.takes_batches)
                rows.append((StoredCall(id=call_id, function=name, source=letter.source, args=args, accepted_at=now), letter))
        writes: list[Awaitable[None]] = [self.store.put_call(row) for row, _ in rows]
        for write in writes:
            await write
        taken = [letter for _, letter in rows]
        for key, group in by_source.items():
            taken += await sources[key].redrive(group)
        await self.store.remove_dead_letters([letter.id for letter in taken])
        redriven = {id(letter) for letter in taken}
        runtime.deliverer.dead_letters[name] = [kept for kept in runtime.deliverer.dead_letters[name] if id(kept) not in redriven]
        for row, letter in rows:
            self.start(row, Call(row.id, name), event=letter.event if not isinstance(letter.event, tuple) else None)
        return len(taken)

    async def prune(self) -> None:
        """Drop what is past its time from the store, now and every ``PRUNE_EVERY`` seconds (until cancelled)."""
        while True:
            self.store.prune(time.time())
            await anyio.sleep(PRUNE_EVERY)


def _cut_short(call: Call[Any]) -> bool:
    return isinstance(call._error, PlatformClosed)


def redrive_args(name: str, letter: DeadLetter, *, batched: bool = False) -> bytes:
    """The pickled ``(args, kwargs)`` that call ``name`` again with what the letter's handler had
    (``batched``: its source hands the handler a list of messages)."""
    event = letter.event
    if batched and isinstance(event, Message):
        return dump_args(name, ([event],), {})
    if isinstance(event, bytes):
        return event  # the arguments as the store kept them (they did not unpickle here)
    if isinstance(event, tuple) and len(event) == 2 and isinstance(event[0], tuple) and isinstance(event[1], dict):
        return dump_args(name, event[0], event[1])  # a spawned call's (args, kwargs)
    if isinstance(event, BatchTask):
        return dump_args(name, (event.item,), {})
    if isinstance(event, Record):
        kind, _, where = letter.source.partition(":")  # "stream:clicks/0", or an outside source's "redis:clicks", "files:<path>"
        stream = where.rpartition("/")[0] if kind == "stream" else where
        return dump_args(name, (RecordBatch(stream=stream, shard=event.shard, records=[event]),), {})
    return dump_args(name, (event,), {})  # a RecordBatch, a Tick, ...
