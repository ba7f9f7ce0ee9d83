"""Files read as an ordered stream of records: CSV, JSON Lines or Parquet, with a checkpoint per file.

How this works. ``mf.Files("data/*.csv", format="csv")`` looks for files matching its
glob (``**`` matches folders at any depth) when the platform starts and then every
``poll_interval`` seconds, and reads them one after the other, in name order. Each
file is a shard of its own: its rows, in file order, go to the function in batches of
at most ``batch_size`` as a ``RecordBatch`` whose ``stream`` is the file's path,
through ``RecordsDelivery`` (``ordered.py``): the same bisection, partial failure
(``BatchResult``) and dead letters as microfaas's own streams. A record's ``sequence``
is its row number in the file (0 is the first data row; a CSV header is not a row, a
blank JSON line is a row that is skipped), its ``value`` the row (a ``dict``), its
``put_at`` the file's modification time.

The checkpoint. Once rows are handled or dead-lettered, the store keeps ``(file, row)``
(``Store.set_offset``: the rows of that file done so far), so a platform started again
on the same store resumes every file after its checkpoint: nothing accepted is lost,
and rows in flight at a crash are handled again (at least once). Files are logs: a file
that grows (rows appended) is read on from its checkpoint at the next look; one that is
rewritten in place would be misread, so write a new file and rename it into place.

Bad input. A row that cannot be decoded -- JSON that does not parse, a CSV row with more
or fewer fields than its header, bytes that are not UTF-8, a Parquet file that will not
open -- goes to the dead letters with the reason (``SerializationError``) and the file
reads on. A bad glob or format is a ``ValueError`` when the trigger is made.
"""

from __future__ import annotations

import csv
import glob as globbing
import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from ..errors import FaaSError, SerializationError
from ..events import Record
from ..runtime.delivery import Undeliverable
from ..validation import is_int, is_number
from .connector import Connector
from .ordered import RecordsDelivery

if TYPE_CHECKING:
    from ..runtime.delivery import Source, SourceRuntime
    from ..spec import Retries

__all__ = ["FORMATS", "Files", "FilesSource"]

FORMATS: Final = ("csv", "jsonl", "parquet")

# A row, decoded or not: (row number, the row or None, the raw text, why it did not decode).
_Row = tuple[int, Any, Any, str | None]


def _check(field: str, ok: bool, expectation: str, value: object) -> None:
    if not ok:
        raise ValueError(f"Files: {field} must be {expectation}, got {value!r}")


@attrs.frozen
class Files(Connector):
    """A trigger reading the files that match ``glob`` as ordered records, with a checkpoint per file.

    :param glob: the files to read (``"data/*.csv"``, ``"logs/**/*.jsonl"``), relative to the working directory or absolute.
    :param format: ``"csv"`` (a header row, then rows: ``dict`` of ``str``), ``"jsonl"`` (one JSON value per line)
        or ``"parquet"`` (rows as ``dict``; needs pyarrow, in the extra ``connectors``).
    :param batch_size: rows per batch, at most (a batch holds rows of one file).
    :param poll_interval: seconds between looks for new files and new rows.
    :param bisect_on_error: split a failing batch in halves to isolate the bad row.
    :param max_retries: retries of a failing batch (or half) before its rows are dead-lettered.
    :raises ValueError: a bad glob, format or setting (the message names it).
    """

    glob: str
    format: str = "csv"
    batch_size: int = 500
    poll_interval: float = 1.0
    bisect_on_error: bool = True
    max_retries: int = 3

    def __attrs_post_init__(self) -> None:
        pattern = self.glob
        ok = isinstance(pattern, str) and bool(pattern.strip()) and "\0" not in pattern and not pattern.endswith(("/", os.sep))
        _check("glob", ok, "a pattern of file names (not empty, not ending in '/')", pattern)
        bad = [part for part in pattern.split("/") if "**" in part and part != "**"]
        _check("glob", not bad, f"a pattern whose '**' stands alone between slashes (not {bad[0] if bad else ''!r})", pattern)
        _check("format", self.format in FORMATS, "'csv', 'jsonl' or 'parquet'", self.format)
        if self.format == "parquet":
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                raise ValueError("Files: format='parquet' needs pyarrow: pip install 'microfaas[connectors]'") from None
        _check("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an int >= 1", self.batch_size)
        ok = is_number(self.poll_interval) and self.poll_interval > 0
        _check("poll_interval", ok, "a number of seconds > 0", self.poll_interval)
        _check("bisect_on_error", isinstance(self.bisect_on_error, bool), "a bool", self.bisect_on_error)
        _check("max_retries", is_int(self.max_retries) and self.max_retries >= 0, "an int >= 0", self.max_retries)

    def source(self, function: str) -> Source:
        return FilesSource(self, function)


class _FileReader:
    """One file: where it was read up to, and what its ``RecordsDelivery``s report back to (a ``ShardReader``)."""

    def __init__(self, owner: FilesSource, path: str, offset: int) -> None:
        self.owner = owner
        self.path = path
        self.function = owner.function
        self.source = f"files:{path}"
        self.bisect_on_error = owner.trigger.bisect_on_error
        self.offset = offset  # rows done
        self.seen: tuple[int, int] | None = None  # (size, mtime_ns) when it was last read to its end
        self.in_flight = 0

    def record_id(self, record: Record) -> str:
        return str(record.sequence)

    def done(self, records: list[Record]) -> None:
        self.offset = max(self.offset, records[-1].sequence + 1)
        self.owner.runtime.store.set_offset(self.owner.offsets_key, self.function, self.path, self.offset)


class FilesSource:
    """A running ``Files`` trigger: it reads one file at a time, in name order."""

    def __init__(self, trigger: Files, function: str) -> None:
        self.trigger = trigger
        self.function = function
        self.key = f"files:{function}:{trigger.glob}"
        self.offsets_key = f"files:{trigger.glob}"
        self._files: dict[str, _FileReader] = {}
        self._runtime: SourceRuntime | None = None

    def __repr__(self) -> str:
        return f"<Files {self.trigger.glob!r} ({self.trigger.format}) for {self.function}>"

    @property
    def runtime(self) -> SourceRuntime:
        assert self._runtime is not None, "the source is not running"
        return self._runtime

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._runtime = runtime
        stored = runtime.store.get_offsets(self.offsets_key, self.function)  # committed now: a redeployed trigger's too
        for path, offset in stored.items():
            self._files[path] = _FileReader(self, path, offset)
        spec = runtime.function(self.function)
        retries = attrs.evolve(spec.retries, max_retries=self.trigger.max_retries)
        task_status.started()
        while True:
            for path in await anyio.to_thread.run_sync(self._matching):
                reader = self._files.get(path)
                if reader is None:
                    reader = self._files[path] = _FileReader(self, path, 0)
                await self._read_on(runtime, retries, reader)
            await anyio.sleep(self.trigger.poll_interval)

    def _matching(self) -> list[str]:
        pattern = os.path.expanduser(self.trigger.glob)
        return sorted(os.path.abspath(p) for p in globbing.glob(pattern, recursive=True) if os.path.isfile(p))

    async def _read_on(self, runtime: SourceRuntime, retries: Retries, reader: _FileReader) -> None:
        """Deliver ``reader``'s file from its checkpoint to its end, if it changed since it was last read."""
        try:
            st = os.stat(reader.path)
        except OSError:
            return  # gone since it was listed
        if reader.seen == (st.st_size, st.st_mtime_ns):
            return
        rows = _rows(self.trigger.format, reader.path, reader.offset)
        size = self.trigger.batch_size
        while True:
            chunk = await anyio.to_thread.run_sync(_take, rows, size)
            if not chunk:
                break
            await self._deliver(runtime, retries, reader, chunk, st.st_mtime)
        reader.seen = (st.st_size, st.st_mtime_ns)

    async def _deliver(self, runtime: SourceRuntime, retries: Retries, reader: _FileReader, rows: list[_Row], mtime: float) -> None:
        runtime.in_flight.started(len(rows))
        reader.in_flight = len(rows)
        try:
            batch: list[Record] = []
            for number, value, raw, why in rows:
                if why is None:
                    batch.append(Record(key=None, value=value, sequence=number, shard=0, put_at=mtime))
                    continue
                if batch:
                    await runtime.deliver(RecordsDelivery(reader, runtime, reader.path, 0, batch), retries)
                    batch = []
                bad = Record(key=None, value=raw, sequence=number, shard=0, put_at=mtime)
                where = f"row {number} of {reader.path}" if number >= 0 else reader.path
                error: FaaSError = SerializationError(f"{self.function}: {where} {why}")
                letter = Undeliverable(self.function, reader.source, runtime.new_invocation_id(), bad)
                runtime.dead_letter(letter, error, attempts=0, first_attempt_at=time.time())
                if number >= 0:
                    reader.done([bad])
            if batch:
                await runtime.deliver(RecordsDelivery(reader, runtime, reader.path, 0, batch), retries)
        finally:
            reader.in_flight = 0
            runtime.in_flight.finished(len(rows))

    def checkpoints(self) -> dict[str, int]:
        """Per file (absolute path), the rows done so far."""
        return {path: reader.offset for path, reader in self._files.items()}

    def pending(self) -> list[str]:
        return [f"{r.in_flight} row(s) of {r.path} for {self.function}" for r in self._files.values() if r.in_flight]


def _take(rows: Iterator[_Row], n: int) -> list[_Row]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) == n:
            break
    return out


def _rows(format: str, path: str, start: int) -> Iterator[_Row]:
    """The rows of the file at ``path`` from row number ``start`` on (read lazily, in a thread)."""
    if format == "jsonl":
        return _jsonl_rows(path, start)
    if format == "csv":
        return _csv_rows(path, start)
    return _parquet_rows(path, start)


def _jsonl_rows(path: str, start: int) -> Iterator[_Row]:
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            if number < start or not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, line, f"is not UTF-8: {exc}"
                continue
            try:
                yield number, json.loads(text), None, None
            except ValueError as exc:
                yield number, None, text.rstrip("\r\n"), f"is not valid JSON: {exc}"


def _csv_rows(path: str, start: int) -> Iterator[_Row]:
    # Undecodable bytes are kept as surrogates, so one bad row does not stop the rows after it.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        number = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if number >= start:
                    yield number, None, None, f"is not valid CSV: {exc}"
                number += 1
                continue
            if number >= start:
                yield _csv_row(number, header, fields)
            number += 1


def _csv_row(number: int, header: list[str], fields: list[str]) -> _Row:
    raw = ",".join(fields)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        text = raw.encode("utf-8", errors="surrogateescape")
        return number, None, text, "is not UTF-8"
    if len(fields) != len(header):
        return number, None, raw, f"has {len(fields)} field(s) where the header has {len(header)}"
    return number, dict(zip(header, fields, strict=True)), None, None


def _parquet_rows(path: str, start: int) -> Iterator[_Row]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        yield -1, None, path, f"could not be read as Parquet: {exc}"  # row -1: the whole file (read again once it changes)
        return
    number = 0
    with parquet:
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if number + rows <= start:
                number += rows  # done before: not read again
                continue
            for row in parquet.read_row_group(group).to_pylist():
                if number >= start:
                    yield number, row, None, None
                number += 1
