"""Streams: ordered, partitioned logs read in order by their consumers.

How this works. ``put(value, key=...)`` appends a ``Record`` to one shard's
in-memory log: the shard is ``zlib.crc32(key.encode()) % shards`` (stable across
processes and runs, unlike ``hash()``); records without a key go round robin over
the shards. Each shard numbers its records 0, 1, 2, ... in put order.

Every consuming function has, on every shard, a cursor: the *checkpoint* is the
highest sequence below which (inclusive) every record is done -- handled, or
dead-lettered. The cursor reads the shard through ``parallelization`` lanes; a
record goes to lane ``blake2b(key) % parallelization`` (keyless records:
``sequence % parallelization``), so records of one key always share a lane. Each
lane takes up to ``batch_size`` of its records in order (waiting at most
``batch_window`` for more), invokes the function with a ``RecordBatch`` and only
then takes the next batch: a lane never skips ahead while its batch is retried.

A batch is delivered as a ``RecordsDelivery`` (``ordered.py``, shared with the
outside ordered sources): a failing batch is, with ``bisect_on_error``, split in
halves until the bad record is alone; a single record that fails is retried with
the function's backoff up to the consumer's ``max_retries`` and then dead-lettered
alone (``event`` is the ``Record``). Without bisection the whole batch is retried
and then dead-lettered as one ``RecordBatch``. Either way the shard then moves on.
Delivery is at least once: a retried batch may hold records its handler already
processed. A handler that returns ``BatchResult(failed=[sequence numbers, as str])``
reports a partial failure: the records before the lowest listed one are done, and
the rest of the batch is retried from it.

``drain`` sees every record put as in flight once per consumer, until that
consumer's checkpoint passes it. Records every consumer has checkpointed are
trimmed from the log.

Durability. ``put`` takes the record's sequence at once but returns only once the
record is stored, and the record joins the shard's log then, in sequence order
(a write that finished early waits for the earlier ones). A put whose write failed
leaves a gap that the consumers step over. Every checkpoint that advances is
written down, and so is each consumer's starting point. A platform that starts on
the store resumes every shard where the store left it: its records and next
sequence, and each consumer after its checkpoint (records handled above a gap in
the checkpoint are handled again: at least once, in per-key order). The stream
retention of the store drops records nobody handled in time. A shard no consumer
reads keeps nothing, and stores nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from ..errors import PlatformClosed
from ..events import Record
from ..store import StoredStream
from .ordered import RecordsDelivery
from .triggers import Stream, StreamConsumer

if TYPE_CHECKING:
    from ..runtime.delivery import SourceRuntime
    from ..spec import Retries
    from ..store import Store

__all__ = ["StreamSource", "shard_for_key"]

# Trim a shard's log once this many leading records are checkpointed by every consumer.
_TRIM_EVERY = 1024


_EMPTY: Final = StoredStream()


def shard_for_key(key: str, shards: int) -> int:
    """The shard of records put with ``key`` on a stream of ``shards`` shards (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(key.encode("utf-8")) % shards


def _lane_hash(key: str) -> int:
    # A hash independent of the shard's CRC-32, so lanes of one shard are evenly used.
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"mf-lane").digest(), "big")


class _Shard:
    """One shard: an append-only log of records, the oldest checkpointed ones trimmed.

    ``log[i]`` is the record of sequence ``base + i``, or None where a put's write failed.
    """

    def __init__(self, stream: str, index: int) -> None:
        self.stream = stream
        self.index = index
        self.log: list[Record | None] = []
        self.lane_hashes: list[int] = []  # parallel to log
        self.base = 0  # the sequence of log[0]
        self.next_sequence = 0  # of the next record to join the log
        self.next_reserved = 0  # of the next record put
        self.cursors: list[_Cursor] = []
        self.store: Store | None = None  # set when the platform runs
        self._stored: dict[int, Record | None] = {}  # written, waiting for earlier sequences
        self._grew: anyio.Event | None = None

    def reserve(self, key: str | None, value: Any) -> Record:
        """The next record of this shard (it joins the log with ``resolve``)."""
        record = Record(key=key, value=value, sequence=self.next_reserved, shard=self.index, put_at=time.time())
        self.next_reserved += 1
        return record

    def resolve(self, sequence: int, record: Record | None) -> None:
        """Record ``sequence`` was stored (None: its write failed); join the log in sequence order."""
        self._stored[sequence] = record
        while self.next_sequence in self._stored:
            entry = self._stored.pop(self.next_sequence)
            self.log.append(entry)
            self.lane_hashes.append(_lane_hash(entry.key) if entry is not None and entry.key is not None else self.next_sequence)
            self.next_sequence += 1
        if self._grew is not None:
            self._grew.set()
            self._grew = None
        if not self.cursors:
            self.trim()  # nobody will read it

    def restore(self, stored: StoredStream) -> None:
        """Start from what the store kept of this shard: its records (gaps as None) and next sequence."""
        records = stored.records.get(self.index, ())
        top = max(stored.next_sequence.get(self.index, 0), records[-1].sequence + 1 if records else 0)
        self.base = records[0].sequence if records else top
        by_sequence = {r.sequence: r for r in records}
        self.log = [by_sequence.get(sequence) for sequence in range(self.base, top)]
        self.lane_hashes = [_lane_hash(r.key) if r is not None and r.key is not None else self.base + i for i, r in enumerate(self.log)]
        self.next_sequence = self.next_reserved = top

    async def wait_beyond(self, sequence: int) -> None:
        """Wait until a record with ``sequence`` (or a later one) has been put."""
        while self.next_sequence <= sequence:
            if self._grew is None:
                self._grew = anyio.Event()
            await self._grew.wait()

    def trim(self) -> None:
        low = min((c.checkpoint + 1 for c in self.cursors), default=self.next_sequence)
        count = low - self.base
        if count > 0 and (count >= _TRIM_EVERY or count == len(self.log)):
            del self.log[:count]
            del self.lane_hashes[:count]
            self.base = low
            if self.store is not None and self.cursors:
                self.store.trim_records(self.stream, self.index, low)


class _Cursor:
    """One consuming function on one shard: its lanes and its checkpoint."""

    def __init__(self, stream: str, function: str, trigger: StreamConsumer, shard: _Shard) -> None:
        self.stream = stream
        self.function = function
        self.trigger = trigger
        self.shard = shard
        self.start = 0  # the first sequence this consumer handles (set when it starts)
        self.checkpoint = -1  # every record up to this sequence is done
        self._done: set[int] = set()  # done records above the checkpoint
        self._started = False
        self._runtime: SourceRuntime | None = None
        self.retries: Retries | None = None  # the function's, with the consumer's max_retries (set when it serves)
        self.stopping = False
        self.stopped: anyio.Event | None = None  # set once its lanes have ended after ``stop`` (made by ``begin``)
        self._waits: dict[int, anyio.CancelScope] = {}  # per lane: the wait for its next batch

    @property
    def lag(self) -> int:
        return self.shard.next_sequence - 1 - self.checkpoint

    def begin(self, runtime: SourceRuntime, checkpoint: int | None = None, done: set[int] | None = None) -> None:
        """Fix where this consumer starts (after ``checkpoint``, the one the store kept, if any),
        write it down, and count what it has to do as in flight."""
        shard = self.shard
        if checkpoint is not None:
            self.start = max(checkpoint + 1, shard.base)
        else:
            self.start = shard.next_sequence if self.trigger.start == "latest" else shard.base
            runtime.store.set_checkpoint(self.stream, self.function, shard.index, self.start - 1)
        self.checkpoint = self.start - 1
        self._done = {sequence for sequence in done or () if sequence > self.checkpoint}
        self._started = True
        self._runtime = runtime
        self.stopped = anyio.Event()
        runtime.in_flight.started(shard.next_reserved - self.start)  # the records put, and those being stored

    def stop(self) -> None:
        """Stop after the batches being delivered: no lane takes another one (``stopped`` is set then)."""
        self.stopping = True
        for wait in self._waits.values():
            wait.cancel()

    async def serve(self, runtime: SourceRuntime) -> None:
        if self.retries is None:
            self.retries = attrs.evolve(runtime.function(self.function).retries, max_retries=self.trigger.max_retries)
        async with anyio.create_task_group() as tg:
            for lane in range(self.trigger.parallelization):
                tg.start_soon(self._serve_lane, runtime, lane)
        runtime.in_flight.finished(self.shard.next_reserved - 1 - self.checkpoint)  # stopped: what it leaves is not its any more
        assert self.stopped is not None
        self.stopped.set()

    async def _serve_lane(self, runtime: SourceRuntime, lane: int) -> None:
        scan = self.start
        while not self.stopping:
            with anyio.CancelScope() as self._waits[lane]:
                batch, scan = await self._collect(lane, scan)
            if self.stopping:
                return  # a batch taken as it was stopped is not delivered: the next consumer starts after the checkpoint
            assert self.retries is not None
            await self._deliver(runtime, self.retries, batch)

    def _take(self, lane: int, scan: int, batch: list[Record]) -> int:
        """Append this lane's records from ``scan`` on to ``batch``; the next sequence to scan."""
        shard, size, lanes = self.shard, self.trigger.batch_size, self.trigger.parallelization
        scan = max(scan, shard.base)  # records below base are done by everyone, so none is this lane's
        gaps = []
        while scan < shard.next_sequence and len(batch) < size:
            i = scan - shard.base
            if lanes == 1 or shard.lane_hashes[i] % lanes == lane:
                record = shard.log[i]
                if record is None:
                    gaps.append(scan)
                else:
                    batch.append(record)
            scan += 1
        if gaps and self._runtime is not None:
            self._mark_done(self._runtime, gaps)  # nothing to handle: a put whose write failed
        return scan

    async def _collect(self, lane: int, scan: int) -> tuple[list[Record], int]:
        batch: list[Record] = []
        while True:
            scan = self._take(lane, scan, batch)
            if batch:
                break
            await self.shard.wait_beyond(scan)
        window, size = self.trigger.batch_window, self.trigger.batch_size
        if len(batch) < size and window > 0:
            with anyio.move_on_after(window):
                while len(batch) < size:
                    await self.shard.wait_beyond(scan)
                    scan = self._take(lane, scan, batch)
        return batch, scan

    async def _deliver(self, runtime: SourceRuntime, retries: Retries, records: list[Record]) -> None:
        """Deliver one batch until every record in it is handled or dead-lettered."""
        await runtime.deliver(RecordsDelivery(self, runtime, self.stream, self.shard.index, records), retries)

    # -- what a RecordsDelivery asks (ShardReader) --

    @property
    def source(self) -> str:
        return f"stream:{self.stream}/{self.shard.index}"

    @property
    def bisect_on_error(self) -> bool:
        return self.trigger.bisect_on_error

    def record_id(self, record: Record) -> str:
        return str(record.sequence)

    def done(self, records: list[Record]) -> None:
        assert self._runtime is not None
        self._mark_done(self._runtime, [r.sequence for r in records])

    def _mark_done(self, runtime: SourceRuntime, sequences: list[int]) -> None:
        self._done.update(sequences)
        advanced = 0
        while self.checkpoint + 1 in self._done:
            self.checkpoint += 1
            self._done.discard(self.checkpoint)
            advanced += 1
        if advanced:
            runtime.in_flight.finished(advanced)
            runtime.store.set_checkpoint(self.stream, self.function, self.shard.index, self.checkpoint)
            self.shard.trim()


class StreamSource:
    """A running stream: ``faas.stream(name)``. Put records on it; each consumer reads every shard in order."""

    def __init__(self, stream: Stream, consumers: list[tuple[str, StreamConsumer]]) -> None:
        self.name = stream.name
        self.key = f"stream:{stream.name}"
        self.shards = stream.shards
        self._shards = [_Shard(stream.name, i) for i in range(stream.shards)]
        self._cursors: list[_Cursor] = []
        for function, trigger in consumers:
            for shard in self._shards:
                cursor = _Cursor(stream.name, function, trigger, shard)
                shard.cursors.append(cursor)
                self._cursors.append(cursor)
        self._round_robin = itertools.count()
        self._runtime: SourceRuntime | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._checkpoints: dict[tuple[str, int], int] = {}  # of consumers not running now: where they would resume

    def __repr__(self) -> str:
        functions = sorted({c.function for c in self._cursors})
        return f"<stream {self.name!r} with {self.shards} shards, consumed by {functions}>"

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        stored = runtime.snapshot.streams.get(self.name)
        early = [r for shard in self._shards for r in shard.log if r is not None]  # put before the platform ran
        for shard in self._shards:
            shard.store = runtime.store
            if stored is not None:
                shard.restore(stored)
            else:
                shard.restore(_EMPTY)  # the early records are put again below, stored this time
        for record in early:  # stored now, after what the store kept
            await self._store(runtime, self._shards[record.shard].reserve(record.key, record.value))
        self._runtime = runtime
        self._checkpoints = dict(stored.checkpoints) if stored is not None else {}
        async with anyio.create_task_group() as tg:
            for cursor in self._cursors:
                cursor.begin(runtime, self._checkpoints.pop((cursor.function, cursor.shard.index), None))
                tg.start_soon(cursor.serve, runtime)
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()  # the task group stays open for consumers added later

    def consumers(self) -> dict[str, StreamConsumer]:
        """The functions that consume this stream now, with their consumer settings."""
        return {c.function: c.trigger for c in self._cursors if not c.stopping}

    def consume(self, function: str, trigger: StreamConsumer, retries: Retries) -> None:
        """Make ``function`` (a deployed one) a consumer from now on, or give its consumer new settings.

        A new consumer starts after the checkpoint it had (on this store), else as its
        ``start`` says. A consumer whose settings changed hands over on every shard once
        its batches being delivered are done: the new one starts after the old one's
        checkpoint, so per-key order holds. Only the retry settings change in place.
        """
        retries = attrs.evolve(retries, max_retries=trigger.max_retries)
        current = [c for c in self._cursors if c.function == function and not c.stopping]
        if current and current[0].trigger == trigger:
            for cursor in current:
                cursor.retries = retries
            return
        for shard in self._shards:
            cursor = _Cursor(self.name, function, trigger, shard)
            cursor.retries = retries
            old = next((c for c in current if c.shard is shard), None)
            self._cursors.append(cursor)
            if self._tg is None or self._runtime is None:  # not running yet: it begins with the others
                shard.cursors.append(cursor)
                if old is not None:
                    self._drop(old)
            elif old is not None:
                old.stop()
                self._tg.start_soon(self._hand_over, old, cursor)
            else:
                shard.cursors.append(cursor)
                cursor.begin(self._runtime, self._checkpoints.pop((function, shard.index), None))
                self._tg.start_soon(cursor.serve, self._runtime)

    def unconsume(self, function: str) -> None:
        """Stop ``function``'s consumer after its batches being delivered; its checkpoint is kept
        (in the store too), so if it consumes again it resumes after it, as far as the log still reaches."""
        for cursor in [c for c in self._cursors if c.function == function and not c.stopping]:
            if self._tg is None:
                self._drop(cursor)
            else:
                cursor.stop()
                self._tg.start_soon(self._hand_over, cursor, None)

    async def _hand_over(self, old: _Cursor, new: _Cursor | None) -> None:
        """Once ``old`` has stopped, ``new`` (if any) takes its place on its shard, after its checkpoint."""
        assert old.stopped is not None
        await old.stopped.wait()
        shard = old.shard
        self._drop(old)
        if new is None:
            self._checkpoints[(old.function, shard.index)] = old.checkpoint
        elif self._runtime is not None and self._tg is not None:
            shard.cursors.append(new)
            new.begin(self._runtime, old.checkpoint, old._done)
            self._tg.start_soon(new.serve, self._runtime)
        shard.trim()

    def _drop(self, cursor: _Cursor) -> None:
        self._cursors.remove(cursor)
        if cursor in cursor.shard.cursors:
            cursor.shard.cursors.remove(cursor)

    async def _store(self, runtime: SourceRuntime, record: Record) -> None:
        """Store ``record`` (reserved on its shard), then let it join the log; a failed write leaves a gap."""
        shard = self._shards[record.shard]
        if not shard.cursors:
            shard.resolve(record.sequence, record)  # nobody reads this shard: nothing to keep
            return
        try:
            await runtime.store.put_record(self.name, record)
        except BaseException:
            shard.resolve(record.sequence, None)
            raise
        shard.resolve(record.sequence, record)

    def shard_for(self, key: str | None) -> int:
        """The shard a record put with ``key`` goes to (keyless: the next in round robin)."""
        if key is None:
            return next(self._round_robin) % self.shards
        return shard_for_key(key, self.shards)

    async def put(self, value: Any, key: Any = None) -> Record:
        """Append a record to the shard of ``key`` and return it (with its shard and sequence).

        ``key`` is turned into a ``str``; records with one key share a shard and are
        handled in put order. Records without a key go round robin over the shards.
        A stream takes records from the moment ``app.run()`` returns its platform, so
        records may be put before ``async with`` starts the consumers: ``start="earliest"``
        consumers get them, ``start="latest"`` ones do not; they are stored when the
        platform starts (after what the store kept, so their sequences may then move).
        Inside ``async with`` it returns once the record is stored; it never waits for
        the consumers (the log is unbounded).

        :raises PlatformClosed: the platform has stopped.
        :raises StoreError: the record could not be stored; it was not put.
        :raises SerializationError: ``value`` would not pickle for the store.
        """
        runtime = self._runtime
        if runtime is not None and runtime.closed:
            raise PlatformClosed(f"stream {self.name!r} is not running; put inside `async with app.run()`")
        if key is not None and not isinstance(key, str):
            key = str(key)
        shard = self._shards[self.shard_for(key)]
        record = shard.reserve(key, value)
        if runtime is None:
            shard.resolve(record.sequence, record)  # stored when the platform starts
            return record
        runtime.in_flight.started(len(shard.cursors))  # the record, or its gap, is done by each consumer
        await self._store(runtime, record)
        return record

    def lag(self) -> dict[int, int]:
        """Per shard, the records put but not yet checkpointed (the most behind consumer's count; 0 without consumers)."""
        return {shard.index: max((c.lag for c in shard.cursors), default=0) for shard in self._shards}

    def checkpoints(self, function: str) -> dict[int, int]:
        """Per shard, the highest sequence ``function`` has fully processed (-1: none yet)."""
        found: dict[int, int] = {}
        for c in self._cursors:  # a consumer taking over from another has not begun: the other's counts
            if c.function == function and (c._started or c.shard.index not in found):
                found[c.shard.index] = c.checkpoint
        if not found:
            raise ValueError(f"function {function!r} does not consume stream {self.name!r}")
        return found

    def pending(self) -> list[str]:
        return [
            f"{c.lag} record(s) of stream {self.name!r} shard {c.shard.index} for {c.function}"
            for c in self._cursors
            if c._started and c.lag > 0
        ]
