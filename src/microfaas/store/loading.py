"""Loading a SQLite store's ``Snapshot`` when it opens: everything unfinished, in order.

A row that does not decode (``rows.Damaged``) is not lost and does not stop the load:
its event becomes a dead letter with the reason, and the statements that move it there
are returned with the snapshot, for the writer's first transaction.
"""

from __future__ import annotations

import logging
import sqlite3

import attrs

from ..events import Record
from .base import DeadLetter, PendingMessage, Snapshot, StoredCall, StoredJob, StoredStream
from .rows import (
    CALL_COLUMNS,
    Damaged,
    call_from_row,
    decode_all,
    deployment_from_row,
    job_from_row,
    letter_from_row,
    letter_params,
    message_from_row,
    record_from_row,
)
from .transactions import PUT_LETTER, Statement

__all__ = ["load_snapshot"]

logger = logging.getLogger("microfaas.store")


def load_snapshot(conn: sqlite3.Connection, path: str) -> tuple[Snapshot, list[Statement]]:
    """What ``conn``'s store holds unfinished, and the statements that move its damaged rows to the dead letters."""
    damaged: list[Damaged] = []
    select = f"SELECT rowid, {CALL_COLUMNS} FROM calls"
    pending = conn.execute(f"{select} WHERE state = 'pending' AND job_id IS NULL ORDER BY accepted_at, rowid").fetchall()
    calls = decode_all(pending, call_from_row, damaged)
    jobs = []
    unfinished = conn.execute("SELECT rowid, * FROM jobs WHERE finished_at IS NULL ORDER BY created_at, rowid").fetchall()
    for job in decode_all(unfinished, job_from_row, damaged):
        tasks = []
        for row in conn.execute(f"{select} WHERE job_id = ? ORDER BY idx", (job.id,)).fetchall():
            try:
                tasks.append(call_from_row(row))
            except Damaged as bad:  # the task failed for good, with the reason; the job goes on
                damaged.append(bad)
                if isinstance(row["idx"], int):
                    tasks.append(_failed_task(row, job, bad.letter))
        jobs.append(attrs.evolve(job, tasks=tuple(tasks)))
    rows = conn.execute("SELECT rowid, * FROM messages ORDER BY rowid").fetchall()
    messages = [
        PendingMessage(topic=topic, function=function, message=message, attempt=attempt)
        for topic, function, message, attempt in decode_all(rows, message_from_row, damaged)
    ]
    streams = _load_streams(conn, damaged)
    letters = decode_all(conn.execute("SELECT rowid, * FROM dead_letters ORDER BY rowid").fetchall(), letter_from_row, damaged)
    deployments = decode_all(
        conn.execute("SELECT rowid, * FROM deployments ORDER BY name, version").fetchall(), deployment_from_row, damaged
    )
    fixes: list[Statement] = []
    for row_damage in damaged:
        logger.warning("store %s: %s", path, row_damage.letter.error)
        fixes += row_damage.fix
        fixes.append((PUT_LETTER, letter_params(row_damage.letter)))
        letters.append(row_damage.letter)
    snapshot = Snapshot(
        calls=tuple(calls),
        jobs=tuple(jobs),
        messages=tuple(messages),
        streams=streams,
        dead_letters=tuple(letters),
        deployments=tuple(deployments),
        offsets=_load_offsets(conn),
    )
    return snapshot, fixes


def _load_streams(conn: sqlite3.Connection, damaged: list[Damaged]) -> dict[str, StoredStream]:
    next_sequence: dict[str, dict[int, int]] = {}
    records: dict[str, dict[int, list[Record]]] = {}
    checkpoints: dict[str, dict[tuple[str, int], int]] = {}
    for row in conn.execute("SELECT stream, shard, next_sequence FROM shards"):
        next_sequence.setdefault(row[0], {})[row[1]] = row[2]
    rows = conn.execute("SELECT * FROM records ORDER BY stream, shard, sequence").fetchall()
    for stream, record in decode_all(rows, record_from_row, damaged):
        records.setdefault(stream, {}).setdefault(record.shard, []).append(record)
        marks = next_sequence.setdefault(stream, {})
        marks[record.shard] = max(marks.get(record.shard, 0), record.sequence + 1)
    for row in conn.execute("SELECT stream, function, shard, sequence FROM checkpoints"):
        checkpoints.setdefault(row[0], {})[(row[1], row[2])] = row[3]
        marks = next_sequence.setdefault(row[0], {})
        marks[row[2]] = max(marks.get(row[2], 0), row[3] + 1)
    names = set(next_sequence) | set(checkpoints)
    return {
        name: StoredStream(
            next_sequence=next_sequence.get(name, {}),
            records={shard: tuple(rs) for shard, rs in records.get(name, {}).items()},
            checkpoints=checkpoints.get(name, {}),
        )
        for name in names
    }


def _failed_task(row: sqlite3.Row, job: StoredJob, letter: DeadLetter) -> StoredCall:
    return StoredCall(
        id=str(row["id"]),
        function=job.function,
        source=f"batch:{job.id}",
        args=b"",
        accepted_at=job.created_at,
        job_id=job.id,
        index=row["idx"],
        state="failed",
        outcome=letter.error,
        finished_at=letter.failed_at,
    )


def _load_offsets(conn: sqlite3.Connection) -> dict[tuple[str, str], dict[str, int]]:
    offsets: dict[tuple[str, str], dict[str, int]] = {}
    for source, function, part, offset in conn.execute("SELECT source, function, part, offset FROM offsets"):
        offsets.setdefault((source, function), {})[part] = offset
    return offsets
