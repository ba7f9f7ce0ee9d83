"""SqliteStore: a platform's accepted work in one SQLite file (the standard library's sqlite3).

How this works. The file is in WAL mode. Writes never run on the event loop, nor in
its process: each write method turns its record into SQL parameters (pickling payloads
there, so a payload that will not pickle fails the call that made it) and appends them
to the current group; the first write of a loop iteration schedules the group's hand-off
for the next iteration, so every write made in one iteration shares one group (a group
of ``GROUP_LIMIT`` writes goes at once, so a burst is committed in parts while the loop
makes the rest; a group of writes nobody waits for, a finished call's outcome, waits up
to ``LAZY_FLUSH_S`` for more).
A writer process of the store's own (``writer.py``, ``writer_child.py``: it holds the
only writing connection, and a GIL that is not the platform's) takes every group waiting
and runs them in one transaction (group commit: the busier the loop, the more each
commit carries), and answers which groups it committed; the answer resolves each group's
future on the loop. A write's awaitable is that future: awaiting it returns once the
transaction holding it has committed, or raises the ``StoreError`` it failed with (the
whole transaction is rolled back). A writer process that dies fails the writes it had
not answered (they may or may not have been stored) and is started again for the next.

Reads (``get_call``, ``get_job``) run on the loop, on a second connection, and see
what has been committed (WAL readers never wait for the writer).

Durability. ``synchronous="normal"`` (the default) makes a committed write survive
a crash of the process (kill -9, an OOM kill): that is what WAL promises. Only a
power loss or an OS crash may lose the last commits; ``synchronous="full"`` syncs
every commit to the disk as well, at the price of a disk flush per group.

The file holds pickles: open only stores you trust (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import anyio
import attrs

from ..errors import StoreError, StoreLocked
from ..events import Message, Record
from .base import (
    RESULT_TTL,
    STREAM_RETENTION,
    DeadLetter,
    Snapshot,
    StoredCall,
    StoredDeployment,
    StoredJob,
    check_retention,
)
from .loading import load_snapshot
from .rows import (
    CALL_COLUMNS,
    Damaged,
    call_from_row,
    call_params,
    dump,
    dump_outcome,
    job_from_row,
    letter_params,
    pending_call_params,
)
from .schema import FileLock, check_header, migrate, store_error, store_error_from
from .transactions import ATTEMPTED, FINISHED, PUT_CALL, PUT_LETTER, PUT_PENDING, Statement, run_statements
from .writer import WriterProcess

__all__ = ["SqliteStore"]

logger = logging.getLogger("microfaas.store")

_SYNCHRONOUS: Final = ("normal", "full")
# How long a group holding only writes nobody waits for (a finished call's outcome) may
# collect more before it goes to the writer: results arrive one or a few per loop
# iteration, and a commit per iteration would write the same pages again and again.
LAZY_FLUSH_S: Final = 0.02
# A group this long goes to the writer at once, without waiting for the loop iteration to
# end: a burst of accepts (a thousand spawns at once) is committed in parts while the loop
# is still making the rest, and only the last part's commit is left to wait for.
GROUP_LIMIT: Final = 256
_PAGE_SIZE: Final = 4096
_PUT_MESSAGE: Final = "INSERT OR REPLACE INTO messages (topic, function, id, message, attempt) VALUES (?, ?, ?, ?, 1)"
_PUT_RECORD: Final = "INSERT OR REPLACE INTO records (stream, shard, sequence, key, value, put_at) VALUES (?, ?, ?, ?, ?, ?)"
_MARK: Final = (
    "INSERT INTO shards (stream, shard, next_sequence) VALUES (?, ?, ?) "
    "ON CONFLICT (stream, shard) DO UPDATE SET next_sequence = max(next_sequence, excluded.next_sequence)"
)


class SqliteStore:
    """Keeps a platform's accepted work in a SQLite file, so a restart resumes it.

    ``app.run(store="faas.db")`` is ``app.run(store=mf.SqliteStore("faas.db"))``.

    :param path: the database file (created when missing; its folder must exist).
    :param result_ttl: seconds a finished call's result (and a finished batch job) is kept.
    :param stream_retention: seconds a stream record is kept, handled or not.
    :param synchronous: ``"normal"`` (survives a crash of the process) or ``"full"``
        (also a power loss; every commit waits for the disk).
    :param max_size_mb: refuse to grow the file past this size (``StoreFull``); None: no limit.
    :raises ValueError: a bad setting (the message names it).
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        result_ttl: float = RESULT_TTL,
        stream_retention: float = STREAM_RETENTION,
        synchronous: str = "normal",
        max_size_mb: float | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ValueError(f"SqliteStore: path must be a file path (str or os.PathLike), got {path!r}")
        check_retention("SqliteStore", result_ttl=result_ttl, stream_retention=stream_retention)
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"SqliteStore: synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        if max_size_mb is not None:
            check_retention("SqliteStore", max_size_mb=max_size_mb)
        self.path = os.fspath(path)
        self.result_ttl = float(result_ttl)
        self.stream_retention = float(stream_retention)
        self.synchronous = synchronous
        self.max_size_mb = max_size_mb
        self._lock = FileLock(self.path)
        self._reader: sqlite3.Connection | None = None
        self._writer: WriterProcess | None = None
        self._sent: dict[int, tuple[asyncio.Future[None], int]] = {}  # by group: its future and its number of writes
        self._seq = 0
        self._group: list[Statement] | None = None
        self._future: asyncio.Future[None] | None = None
        self._urgent = False  # whether the group's hand-off is scheduled for the next iteration
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}{' open' if self._writer is not None else ''}>"

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    # -- opening and closing ---------------------------------------------------------------

    async def open(self) -> Snapshot:
        if self._writer is not None:
            raise StoreLocked(f"{self.path} is already open in a running platform; stop that one first")
        self._loop = asyncio.get_running_loop()
        snapshot = await anyio.to_thread.run_sync(self._open)
        writer = WriterProcess(
            self.path,
            synchronous=self.synchronous,
            max_page_count=self._max_page_count(),
            lock_fd=self._lock.fd,
            on_committed=self._committed,
            on_lost=self._lost,
        )
        try:
            writer.start()  # on the loop's thread (see WriterProcess.start)
        except OSError as exc:
            self._close_files()
            raise store_error(exc, self.path, "start the writer process of") from exc
        self._writer = writer
        return snapshot

    def _max_page_count(self) -> int | None:
        return None if self.max_size_mb is None else max(1, int(self.max_size_mb * 2**20) // _PAGE_SIZE)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        if (pages := self._max_page_count()) is not None:
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    def _open(self) -> Snapshot:
        path = self.path
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise store_error(PermissionError(13, "the file is read-only"), path, "open")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise StoreError(f"could not open store {path}: its folder {folder} does not exist; create it first")
        check_header(path)
        self._lock.acquire(path)
        try:
            try:
                writer = self._connect()
                if writer.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise StoreError(f"could not open store {path}: SQLite would not put it in WAL mode")
                try:
                    migrate(writer, path)
                    snapshot, fixes = load_snapshot(writer, self.path)
                    run_statements(writer, fixes)
                finally:
                    writer.close()  # from now on the writer process writes
                self._reader = self._connect()
            except (sqlite3.Error, OSError) as exc:
                raise store_error(exc, path, "open") from exc
        except BaseException:
            self._close_files()
            raise
        return snapshot

    async def close(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._flush()
        self._writer = None  # writes from now on fail: the store is not open
        await writer.close()  # shielded: what was sent is committed and answered first
        self._close_files()

    def _close_files(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._lock.release()

    # -- the writer ------------------------------------------------------------------------

    def _write(self, *statements: Statement, lazy: bool = False) -> asyncio.Future[None]:
        """Add ``statements`` to the current group; its future.

        The group goes to the writer in the next loop iteration, or, while it holds only
        ``lazy`` writes (that nobody waits for, and that may be lost in a crash: a result),
        after ``LAZY_FLUSH_S``; an urgent write hands it over, the lazy ones with it, in order.
        """
        return self._add(statements, lazy)

    def _write_one(self, statement: Statement, lazy: bool = False) -> asyncio.Future[None]:
        """``_write(statement, lazy=lazy)``, without gathering arguments (a spawn's writes)."""
        return self._add((statement,), lazy)

    def _add(self, statements: tuple[Statement, ...], lazy: bool) -> asyncio.Future[None]:
        group = self._group
        if group is None:
            loop = self._loop
            if self._writer is None or loop is None:
                raise StoreError(f"store {self.path} is not open; it opens with `async with app.run(store=...)`")
            group = self._group = []
            self._future = loop.create_future()
            self._urgent = not lazy
            if lazy:
                loop.call_later(LAZY_FLUSH_S, self._flush)
            else:
                loop.call_soon(self._flush)
        elif not lazy and not self._urgent:
            self._urgent = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        group += statements
        future = self._future
        assert future is not None
        if self._urgent and len(group) >= GROUP_LIMIT:
            self._flush()
        return future

    def _flush(self) -> None:
        group, future, writer = self._group, self._future, self._writer
        if group is None or future is None:
            return
        self._group = self._future = None
        if writer is None:  # written while the store was closing
            _settle([future], StoreError(f"could not write to store {self.path}: it was closed first"))
            return
        self._seq += 1
        self._sent[self._seq] = (future, len(group))
        if not writer.running:  # the last one died
            try:
                writer.start()
            except OSError as exc:
                error = store_error(exc, self.path, "start the writer process of")
                logger.error("%s (%d writes were not stored)", error, len(group))
                _settle([self._sent.pop(self._seq)[0]], error)
                return
        writer.send(self._seq, group)

    def _committed(self, seqs: list[int], failure: Any) -> None:
        """The writer process committed groups ``seqs`` in one transaction, or (``failure``) could not."""
        error: StoreError | None = None
        if failure is not None:
            error = store_error_from(failure, self.path, "write to")
            logger.error("%s (%d writes were not stored)", error, self._writes(seqs))
        _settle([self._sent.pop(seq)[0] for seq in seqs], error)

    def _lost(self, seqs: list[int], why: str) -> None:
        """The writer process ended before answering for groups ``seqs``."""
        count = self._writes(seqs)
        error = StoreError(
            f"could not write to store {self.path}: {why} before it answered for {count} writes; they may or may not be stored"
        )
        logger.error("%s", error)
        _settle([self._sent.pop(seq)[0] for seq in seqs], error)

    def _writes(self, seqs: list[int]) -> int:
        return sum(self._sent[seq][1] for seq in seqs if seq in self._sent)

    # -- calls and batch jobs ----------------------------------------------------------------

    def put_call(self, call: StoredCall) -> Awaitable[None]:
        pending = pending_call_params(call)
        return self._write_one((PUT_CALL, call_params(call)) if pending is None else (PUT_PENDING, pending))

    def call_attempted(self, call_id: str, attempt: int, not_before: float) -> Awaitable[None]:
        return self._write((ATTEMPTED, (attempt, not_before, call_id)))

    def call_finished(self, call_id: str, *, succeeded: bool, outcome: Any, finished_at: float) -> Awaitable[None]:
        blob = dump_outcome(call_id, outcome)
        return self._write_one((FINISHED, ("succeeded" if succeeded else "failed", blob, finished_at, call_id)), lazy=True)

    def put_job(self, job: StoredJob, tasks: Sequence[StoredCall]) -> Awaitable[None]:
        statement = (
            "INSERT OR REPLACE INTO jobs (id, function, total, max_parallel, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, job.function, job.total, job.max_parallel, job.created_at, job.finished_at),
        )
        return self._write(statement, *((PUT_CALL, call_params(task)) for task in tasks))

    def job_finished(self, job_id: str, finished_at: float) -> Awaitable[None]:
        return self._write(("UPDATE jobs SET finished_at = ? WHERE id = ? AND finished_at IS NULL", (finished_at, job_id)))

    # -- topics and streams ---------------------------------------------------------------------

    def put_message(self, message: Message, functions: Sequence[str]) -> Awaitable[None]:
        blob = dump(message, f"message {message.id} of topic {message.topic!r}")
        return self._write(*((_PUT_MESSAGE, (message.topic, function, message.id, blob)) for function in functions))

    def messages_attempted(self, topic: str, function: str, ids: Sequence[str], attempt: int) -> Awaitable[None]:
        sql = "UPDATE messages SET attempt = ? WHERE topic = ? AND function = ? AND id = ?"
        return self._write(*((sql, (attempt, topic, function, message_id)) for message_id in ids))

    def messages_done(self, topic: str, function: str, ids: Sequence[str]) -> Awaitable[None]:
        sql = "DELETE FROM messages WHERE topic = ? AND function = ? AND id = ?"
        return self._write(*((sql, (topic, function, message_id)) for message_id in ids))

    def put_record(self, stream: str, record: Record) -> Awaitable[None]:
        blob = dump(record.value, f"a record of stream {stream!r}")
        return self._write((_PUT_RECORD, (stream, record.shard, record.sequence, record.key, blob, record.put_at)))

    def set_checkpoint(self, stream: str, function: str, shard: int, sequence: int) -> Awaitable[None]:
        sql = (
            "INSERT INTO checkpoints (stream, function, shard, sequence) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (stream, function, shard) DO UPDATE SET sequence = excluded.sequence"
        )
        return self._write((sql, (stream, function, shard, sequence)))

    def set_offset(self, source: str, function: str, part: str, offset: int) -> Awaitable[None]:
        sql = (
            "INSERT INTO offsets (source, function, part, offset) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source, function, part) DO UPDATE SET offset = excluded.offset"
        )
        return self._write((sql, (source, function, part, offset)))

    def forget_offsets(self, source: str, function: str, parts: Sequence[str]) -> Awaitable[None]:
        sql = "DELETE FROM offsets WHERE source = ? AND function = ? AND part = ?"
        return self._write(*((sql, (source, function, part)) for part in parts))

    def trim_records(self, stream: str, shard: int, below: int) -> Awaitable[None]:
        if below <= 0:
            return self._write()
        return self._write(
            (_MARK, (stream, shard, below)),
            ("DELETE FROM records WHERE stream = ? AND shard = ? AND sequence < ?", (stream, shard, below)),
        )

    # -- dead letters and deployments ---------------------------------------------------------

    def put_dead_letter(self, letter: DeadLetter) -> Awaitable[None]:
        return self._write((PUT_LETTER, letter_params(letter)))

    def remove_dead_letters(self, ids: Sequence[str]) -> Awaitable[None]:
        return self._write(*(("DELETE FROM dead_letters WHERE id = ?", (letter_id,)) for letter_id in ids))

    def put_deployment(self, deployment: StoredDeployment) -> Awaitable[None]:
        return self._write(
            ("UPDATE deployments SET active = 0 WHERE name = ?", (deployment.name,)),
            (
                "INSERT OR REPLACE INTO deployments (name, version, code, deployed_at, active) VALUES (?, ?, ?, ?, 1)",
                (deployment.name, deployment.version, deployment.code, deployment.deployed_at),
            ),
        )

    def undeploy(self, name: str) -> Awaitable[None]:
        return self._write(("UPDATE deployments SET active = 0 WHERE name = ?", (name,)))

    # -- housekeeping and reads --------------------------------------------------------------

    def _prune_statements(self, now: float) -> list[Statement]:
        results_before, records_before = now - self.result_ttl, now - self.stream_retention
        return [
            ("DELETE FROM calls WHERE finished_at < ? AND job_id IS NULL", (results_before,)),
            ("DELETE FROM calls WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?)", (results_before,)),
            ("DELETE FROM jobs WHERE finished_at < ?", (results_before,)),
            (
                "INSERT INTO shards (stream, shard, next_sequence) "
                "SELECT stream, shard, max(sequence) + 1 FROM records WHERE put_at < ? GROUP BY stream, shard "
                "ON CONFLICT (stream, shard) DO UPDATE SET next_sequence = max(next_sequence, excluded.next_sequence)",
                (records_before,),
            ),
            ("DELETE FROM records WHERE put_at < ?", (records_before,)),
        ]

    def prune(self, now: float) -> Awaitable[None]:
        return self._write(*self._prune_statements(now))

    def get_call(self, call_id: str) -> StoredCall | None:
        row = self._read(f"SELECT rowid, {CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
        return _loaded(call_from_row, row[0]) if row else None

    def get_job(self, job_id: str) -> StoredJob | None:
        rows = self._read("SELECT rowid, * FROM jobs WHERE id = ?", (job_id,))
        job = _loaded(job_from_row, rows[0]) if rows else None
        if job is None:
            return None
        tasks = self._read(f"SELECT rowid, {CALL_COLUMNS} FROM calls WHERE job_id = ? ORDER BY idx", (job_id,))
        return attrs.evolve(job, tasks=tuple(t for row in tasks if (t := _loaded(call_from_row, row)) is not None))

    def get_offsets(self, source: str, function: str) -> dict[str, int]:
        rows = self._read("SELECT part, offset FROM offsets WHERE source = ? AND function = ?", (source, function))
        return {part: offset for part, offset in rows}

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        reader = self._reader
        if reader is None:
            raise StoreError(f"store {self.path} is not open; it opens with `async with app.run(store=...)`")
        try:
            return reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "read") from exc


def _loaded(decode: Any, row: sqlite3.Row) -> Any:
    try:
        return decode(row)
    except Damaged as bad:
        logger.warning("store: %s", bad.letter.error)
        return None


def _settle(futures: list[asyncio.Future[None]], error: StoreError | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # a write nobody awaited was logged by the writer; do not log it again
