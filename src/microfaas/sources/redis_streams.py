"""Redis Streams: a consumer group read in order, each entry acknowledged once handled or dead-lettered.

How this works. ``mf.RedisStream(url, stream=..., group=...)`` reads one or more Redis
streams through a consumer group (``XGROUP CREATE ... MKSTREAM`` when the group is
missing: from the first entry with ``start="earliest"``, from new ones with
``"latest"``). Each stream is a *shard*: it is read by one task, one batch at a time
(``XREADGROUP ... COUNT batch_size``), and each batch goes to the function as a
``RecordBatch`` through ``RecordsDelivery`` (``ordered.py``): the same bisection,
partial failure (``BatchResult``) and dead letters as microfaas's own streams. Its
entries are acknowledged (``XACK``) only once they are handled or dead-lettered, so
the next batch of a stream is read only after the one before it is settled: records
reach the handler in stream order.

Nothing is lost. Entries that were read and not acknowledged stay in the group's
pending list. When a source starts it first reads its own consumer's pending entries
(a platform that was killed left them there; the consumer name is stable, see
``consumer``), then new ones. Every ``claim_idle`` seconds it also takes over
(``XAUTOCLAIM``) the entries that another consumer of the group has held that long
without acknowledging them: a consumer that crashed for good. A claimed entry is
delivered again (at least once), so ``claim_idle`` must be longer than a batch can
take with its retries. A connection lost mid-stream is reopened (``reconnect.py``); a
batch already read is delivered, and acknowledged once the server is back.

Each record: ``key`` is the entry id (``"1700000000000-0"``), ``value`` the entry's
fields (a ``dict`` of ``str``, or of ``bytes`` with ``decode=None``), ``sequence`` the
id as one int (milliseconds * 2**64 + the id's sequence part: in stream order),
``shard`` the stream's index in ``stream``, ``put_at`` the id's time. An entry that will
not decode, or that was deleted while pending, goes to the dead letters with the
reason and is acknowledged.

A Kafka consumer (aiokafka) is the same shape: one task per assigned partition, the
batch as ``RecordsDelivery``, and ``done`` committing the offset after the last record
settled (docs/connectors.md).
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from ..errors import FaaSError, SerializationError
from ..events import Record
from ..runtime.delivery import Undeliverable
from ..validation import is_int, is_number
from .connector import Connector
from .ordered import RecordsDelivery
from .reconnect import Connection, redacted

if TYPE_CHECKING:
    from ..runtime.delivery import Source, SourceRuntime
    from ..spec import Retries

__all__ = ["RedisStream", "RedisStreamSource", "entry_sequence"]

_SCHEMES: Final = ("redis", "rediss", "unix")
_STARTS: Final = {"earliest": "0", "latest": "$"}
# How long one XREADGROUP waits for new entries before the loop looks at claims again.
_BLOCK_MS: Final = 1000


def entry_sequence(entry_id: str) -> int:
    """A Redis stream entry id (``"<ms>-<seq>"``) as one int in stream order: ms * 2**64 + seq."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms) << 64) | int(seq or 0)


def _streams(value: object) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, Sequence) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"RedisStream: stream must be a stream name or a list of them, got {value!r}")


def _check(field: str, ok: bool, expectation: str, value: object) -> None:
    if not ok:
        raise ValueError(f"RedisStream: {field} must be {expectation}, got {value!r}")


@attrs.frozen
class RedisStream(Connector):
    """A trigger reading Redis streams through a consumer group, in order (the extra ``connectors``).

    :param url: the server, ``redis://[:password@]host:port/db`` (also ``rediss://``, ``unix://``).
    :param stream: a stream's name, or a list of names: each is a shard, read in order.
    :param group: the consumer group (created, with the stream, when missing).
    :param batch_size: entries per batch, at most.
    :param consumer: this platform's consumer name in the group (None: ``<function>@<host name>``,
        the same after a restart, so the entries it had not acknowledged come back to it at once).
    :param start: where a group created here starts: ``"earliest"`` (the first entry) or ``"latest"`` (new entries).
    :param bisect_on_error: split a failing batch in halves to isolate the bad entry.
    :param max_retries: retries of a failing batch (or half) before its entries are dead-lettered.
    :param claim_idle: seconds an entry may stay unacknowledged with another consumer before this one takes it over.
    :param decode: the text encoding of field values (None: keep them ``bytes``).
    :param wait_for_server: when the server is unreachable at start, wait for it instead of failing.
    :raises ValueError: a bad setting (the message names it).
    """

    url: str
    stream: tuple[str, ...] = attrs.field(converter=_streams)
    group: str = "microfaas"
    batch_size: int = 100
    consumer: str | None = None
    start: str = "earliest"
    bisect_on_error: bool = True
    max_retries: int = 3
    claim_idle: float = 60.0
    decode: str | None = "utf-8"
    wait_for_server: bool = False

    def __attrs_post_init__(self) -> None:
        scheme = urllib.parse.urlsplit(self.url).scheme if isinstance(self.url, str) else None
        _check("url", scheme in _SCHEMES, "a redis://, rediss:// or unix:// URL", self.url)
        _check("group", isinstance(self.group, str) and bool(self.group), "a non-empty str", self.group)
        _check("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an int >= 1", self.batch_size)
        ok = self.consumer is None or (isinstance(self.consumer, str) and bool(self.consumer))
        _check("consumer", ok, "a non-empty str or None", self.consumer)
        _check("start", self.start in _STARTS, "'earliest' or 'latest'", self.start)
        _check("bisect_on_error", isinstance(self.bisect_on_error, bool), "a bool", self.bisect_on_error)
        _check("max_retries", is_int(self.max_retries) and self.max_retries >= 0, "an int >= 0", self.max_retries)
        _check("claim_idle", is_number(self.claim_idle) and self.claim_idle > 0, "a number of seconds > 0", self.claim_idle)
        if self.decode is not None:
            try:
                "".encode(self.decode)
            except (LookupError, TypeError):
                raise ValueError(f"RedisStream: decode must be a text encoding or None, got {self.decode!r}") from None
        _check("wait_for_server", isinstance(self.wait_for_server, bool), "a bool", self.wait_for_server)

    def source(self, function: str) -> Source:
        return RedisStreamSource(self, function)


class _StreamReader:
    """One stream of a ``RedisStreamSource``: what its ``RecordsDelivery``s report back to (a ``ShardReader``)."""

    def __init__(self, owner: RedisStreamSource, index: int, name: str) -> None:
        self.owner = owner
        self.index = index
        self.name = name
        self.function = owner.function
        self.source = f"redis:{name}"
        self.bisect_on_error = owner.trigger.bisect_on_error
        self.to_ack: list[str] = []
        self.unacked = 0  # read, not yet acknowledged

    def record_id(self, record: Record) -> str:
        assert record.key is not None
        return record.key

    def done(self, records: list[Record]) -> None:
        self.to_ack += [self.record_id(r) for r in records]


class RedisStreamSource:
    """A running ``RedisStream`` trigger: one reader task per stream."""

    def __init__(self, trigger: RedisStream, function: str) -> None:
        self.trigger = trigger
        self.function = function
        self.key = f"redis:{function}:{','.join(trigger.stream)}"
        self.consumer = trigger.consumer or f"{function}@{socket.gethostname()}"
        self._readers = [_StreamReader(self, i, name) for i, name in enumerate(trigger.stream)]
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<RedisStream {list(self.trigger.stream)} group {self.trigger.group!r} at {redacted(self.trigger.url)} for {self.function}>"

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import redis.asyncio
        import redis.exceptions

        self._client = redis.asyncio.Redis.from_url(self.trigger.url, socket_connect_timeout=5.0)
        what = f"RedisStream {', '.join(map(repr, self.trigger.stream))}"
        errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._connection = Connection(
            runtime,
            function=self.function,
            what=what,
            address=self.trigger.url,
            connect=self._connect,
            errors=errors,
            wait_for_server=self.trigger.wait_for_server,
        )
        waits = self.trigger.wait_for_server
        try:
            if waits:
                task_status.started()  # the platform runs while this waits for its server
            await self._connection.first()
            spec = runtime.function(self.function)
            retries = attrs.evolve(spec.retries, max_retries=self.trigger.max_retries)
            async with anyio.create_task_group() as tg:
                for reader in self._readers:
                    tg.start_soon(self._serve, runtime, retries, reader)
                if not waits:
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._client.aclose()

    async def _connect(self) -> None:
        """Reach the server and make sure every stream has the group (MKSTREAM creates the stream too)."""
        import redis.exceptions

        await self._client.ping()
        for name in self.trigger.stream:
            try:
                await self._client.xgroup_create(name, self.trigger.group, id=_STARTS[self.trigger.start], mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _serve(self, runtime: SourceRuntime, retries: Retries, reader: _StreamReader) -> None:
        """Deliver one stream's entries in order: this consumer's pending ones, then claimed and new ones."""
        own: str | None = "0"  # re-read what this consumer was given and did not acknowledge (before a restart)
        next_claim = time.monotonic() + self.trigger.claim_idle
        reconnects = self._connection.reconnects
        while True:
            if reconnects != self._connection.reconnects:
                # A read whose reply was lost with the connection left its entries pending for this
                # consumer, unseen: read the pending ones again (what was delivered is acknowledged by now).
                reconnects, own = self._connection.reconnects, "0"
            if own is not None:
                entries = await self._read(reader, own, block=None)
                own = entries[-1][0] if entries else None
            elif time.monotonic() >= next_claim:
                entries = await self._claim(reader)
                if not entries:
                    next_claim = time.monotonic() + self.trigger.claim_idle
            else:
                entries = await self._read(reader, ">", block=_BLOCK_MS)
            if reconnects != self._connection.reconnects:
                # Reconnected during this read, which then ran again: entries a lost reply gave this
                # consumer come before these, and these are pending for it too. Reading its pending
                # ones from the start (the top of the loop) brings both, in stream order.
                continue
            if entries:
                await self._deliver(runtime, retries, reader, entries)

    async def _read(self, reader: _StreamReader, after: str, *, block: int | None) -> list[tuple[str, Any]]:
        import redis.exceptions

        async def read() -> Any:
            return await self._client.xreadgroup(
                self.trigger.group, self.consumer, {reader.name: after}, count=self.trigger.batch_size, block=block
            )

        try:
            reply = await self._connection.call(read)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._connection.call(self._connect)  # the server lost the group (restarted without its data): make it again
            return []
        return [(_text(entry_id), fields) for _, batch in reply or () for entry_id, fields in batch]

    async def _claim(self, reader: _StreamReader) -> list[tuple[str, Any]]:
        """Take over entries another consumer has held for ``claim_idle`` seconds (one batch of them)."""
        trigger = self.trigger

        async def claim() -> Any:
            return await self._client.xautoclaim(
                reader.name,
                trigger.group,
                self.consumer,
                min_idle_time=int(trigger.claim_idle * 1000),
                start_id="0-0",
                count=trigger.batch_size,
            )

        reply = await self._connection.call(claim)
        return [(_text(entry_id), fields) for entry_id, fields in reply[1]]

    async def _deliver(self, runtime: SourceRuntime, retries: Retries, reader: _StreamReader, entries: list[tuple[str, Any]]) -> None:
        runtime.in_flight.started(len(entries))
        reader.unacked = len(entries)
        try:
            records: list[Record] = []
            for entry_id, fields in entries:
                record, error = self._record(reader, entry_id, fields)
                if error is None:
                    records.append(record)
                else:
                    runtime.dead_letter(
                        Undeliverable(reader.function, reader.source, runtime.new_invocation_id(), record),
                        error,
                        attempts=0,
                        first_attempt_at=time.time(),
                    )
                    reader.to_ack.append(entry_id)
            if records:
                await runtime.deliver(RecordsDelivery(reader, runtime, reader.name, reader.index, records), retries)
            await self._ack(reader)
        finally:
            reader.unacked = 0
            runtime.in_flight.finished(len(entries))

    async def _ack(self, reader: _StreamReader) -> None:
        ids, reader.to_ack = reader.to_ack, []
        if ids:
            await self._connection.call(lambda: self._client.xack(reader.name, self.trigger.group, *ids))

    def _record(self, reader: _StreamReader, entry_id: str, fields: Any) -> tuple[Record, FaaSError | None]:
        ms = int(entry_id.partition("-")[0])
        raw = Record(key=entry_id, value=fields, sequence=entry_sequence(entry_id), shard=reader.index, put_at=ms / 1000)
        where = f"{self.function}: entry {entry_id} of Redis stream {reader.name!r}"
        if fields is None:
            return raw, SerializationError(f"{where} was deleted from the stream before it was handled (XDEL or a trim)")
        encoding = self.trigger.decode
        try:
            value = {_text(k): (v.decode(encoding) if encoding is not None else v) for k, v in fields.items()}
        except UnicodeDecodeError as exc:
            return raw, SerializationError(f"{where} does not decode as {encoding}: {exc}; pass decode=None to get bytes")
        return attrs.evolve(raw, value=value), None

    def pending(self) -> list[str]:
        return [f"{r.unacked} entry(ies) of Redis stream {r.name!r} for {self.function}" for r in self._readers if r.unacked]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
