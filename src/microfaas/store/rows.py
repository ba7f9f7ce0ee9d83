"""Rows of the SQLite store: records to SQL parameters and back, and what a damaged row becomes.

Payload objects are pickled with ``payload.dumps`` (plain pickle for plain data,
cloudpickle otherwise) when written and unpickled when loaded. Loading a row checks
every column's type and unpickles what the platform will need: a row that fails is
``Damaged``, and ``open`` turns it into a dead letter holding the raw payload and a
``StoreCorrupt`` naming the table, the row and the reason.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .. import payload
from ..errors import FaaSError, SerializationError, StoreCorrupt
from ..events import Message, Record
from .base import DeadLetter, StoredCall, StoredDeployment, StoredJob
from .transactions import CALL_COLUMNS

__all__ = [
    "CALL_COLUMNS",
    "Damaged",
    "call_from_row",
    "call_params",
    "deployment_from_row",
    "dump",
    "dump_outcome",
    "job_from_row",
    "letter_from_row",
    "letter_params",
    "load",
    "message_from_row",
    "pending_call_params",
    "record_from_row",
]

T = TypeVar("T")


@attrs.frozen
class Damaged(Exception):
    """A row that would not load: the dead letter it becomes, and how to take it out of its table."""

    letter: DeadLetter
    fix: tuple[tuple[str, tuple[Any, ...]], ...]  # statements that retire the row


def dump(value: Any, what: str) -> bytes:
    """``value`` pickled for the store.

    :raises SerializationError: it cannot be pickled (``what`` says what it is).
    """
    try:
        return payload.dumps(value)
    except Exception as exc:
        raise SerializationError(f"{what} could not be pickled for the store: {exc!r}") from exc


def dump_outcome(call_id: str, outcome: Any) -> bytes:
    """``dump`` for the outcome of call ``call_id`` (what the message names is made only when it fails)."""
    try:
        return payload.dumps(outcome)
    except Exception as exc:
        raise SerializationError(f"the outcome of call {call_id} could not be pickled for the store: {exc!r}") from exc


def load(blob: Any) -> Any:
    if not isinstance(blob, bytes):
        raise TypeError(f"expected a pickle (bytes), found {type(blob).__name__}")
    return pickle.loads(blob)


def _typed(value: Any, kind: type[T] | tuple[type, ...], column: str) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"column {column} holds {value!r}")
    return value  # type: ignore[return-value]


def _number(value: Any, column: str) -> float:
    return float(_typed(value, (int, float), column))


def _damaged(table: str, key: str, row: sqlite3.Row, exc: Exception, *, function_col: str = "function", **letter: Any) -> DeadLetter:
    function = row[function_col] if isinstance(row[function_col], str) else "?"
    now = time.time()
    error = StoreCorrupt(f"store row {table}[{key}] could not be loaded ({type(exc).__name__}: {exc}); it was moved to the dead letters")
    fields: dict[str, Any] = {"attempts": 0, "invocation_id": key, "first_attempt_at": now, "failed_at": now} | letter
    return DeadLetter(function=function, error=error, id=uuid.uuid4().hex, **fields)


# -- calls ---------------------------------------------------------------------------------


def pending_call_params(call: StoredCall) -> tuple[Any, ...] | None:
    """The parameters of ``transactions.PUT_PENDING`` for ``call``; None when it does not fit
    that statement (it is finished, or a batch job's task)."""
    if call.state != "pending" or call.job_id is not None or call.index is not None:
        return None
    return (call.id, call.function, call.source, call.args, call.accepted_at, call.attempt, call.not_before)


def call_params(call: StoredCall) -> tuple[Any, ...]:
    outcome = None if call.state == "pending" else dump_outcome(call.id, call.outcome)
    fields = (call.id, call.function, call.source, call.args, call.accepted_at, call.attempt, call.not_before, call.job_id, call.index)
    return (*fields, call.state, outcome, call.finished_at)


def call_from_row(row: sqlite3.Row) -> StoredCall:
    """:raises Damaged: a column of the wrong type, or a payload that would not unpickle."""
    try:
        args = _typed(row["args"], bytes, "args")
        state = row["state"]
        if state not in ("pending", "succeeded", "failed"):
            raise TypeError(f"column state holds {state!r}")
        if state == "pending":  # it is to run: its arguments must load
            loaded = load(args)
            if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], tuple) and isinstance(loaded[1], dict)):
                raise TypeError("args is not a pickled (args, kwargs) pair")
        return StoredCall(
            id=_typed(row["id"], str, "id"),
            function=_typed(row["function"], str, "function"),
            source=_typed(row["source"], str, "source"),
            args=args,
            accepted_at=_number(row["accepted_at"], "accepted_at"),
            attempt=_typed(row["attempt"], int, "attempt"),
            not_before=_number(row["not_before"], "not_before"),
            job_id=row["job_id"] if row["job_id"] is None else _typed(row["job_id"], str, "job_id"),
            index=row["idx"] if row["idx"] is None else _typed(row["idx"], int, "idx"),
            state=state,
            outcome=None if state == "pending" else load(row["outcome"]),
            finished_at=None if row["finished_at"] is None else _number(row["finished_at"], "finished_at"),
        )
    except Exception as exc:
        key = str(row["id"])
        letter = _damaged("calls", key, row, exc, source=str(row["source"]), event=row["args"])
        failed = (dump(letter.error, "an error"), letter.failed_at, row["rowid"])
        fix = ("UPDATE calls SET state = 'failed', outcome = ?, finished_at = ? WHERE rowid = ?", failed)
        raise Damaged(letter, (fix,)) from exc


def job_from_row(row: sqlite3.Row) -> StoredJob:
    """:raises Damaged: a column of the wrong type (the job is then closed as finished)."""
    try:
        return StoredJob(
            id=_typed(row["id"], str, "id"),
            function=_typed(row["function"], str, "function"),
            total=_typed(row["total"], int, "total"),
            max_parallel=_typed(row["max_parallel"], int, "max_parallel"),
            created_at=_number(row["created_at"], "created_at"),
            finished_at=None if row["finished_at"] is None else _number(row["finished_at"], "finished_at"),
        )
    except Exception as exc:
        key = str(row["id"])
        letter = _damaged("jobs", key, row, exc, source=f"batch:{key}", event=None)
        raise Damaged(letter, (("UPDATE jobs SET finished_at = ? WHERE rowid = ?", (letter.failed_at, row["rowid"])),)) from exc


# -- topics and streams ------------------------------------------------------------------


def message_from_row(row: sqlite3.Row) -> tuple[str, str, Message, int]:
    """``(topic, function, message, attempt)``. :raises Damaged: the row is dropped."""
    try:
        message = load(row["message"])
        if not isinstance(message, Message):
            raise TypeError(f"column message holds a {type(message).__name__}, not a Message")
        return _typed(row["topic"], str, "topic"), _typed(row["function"], str, "function"), message, _typed(row["attempt"], int, "attempt")
    except Exception as exc:
        key = f"{row['topic']}/{row['function']}/{row['id']}"
        letter = _damaged("messages", key, row, exc, source=f"topic:{row['topic']}", event=row["message"])
        raise Damaged(letter, (("DELETE FROM messages WHERE rowid = ?", (row["rowid"],)),)) from exc


def record_from_row(row: sqlite3.Row) -> tuple[str, Record]:
    """``(stream, record)``. :raises Damaged: the row is dropped (its consumers skip it)."""
    try:
        key = row["key"]
        record = Record(
            key=key if key is None else _typed(key, str, "key"),
            value=load(row["value"]),
            sequence=_typed(row["sequence"], int, "sequence"),
            shard=_typed(row["shard"], int, "shard"),
            put_at=_number(row["put_at"], "put_at"),
        )
        return _typed(row["stream"], str, "stream"), record
    except Exception as exc:
        where = f"{row['stream']}/{row['shard']}/{row['sequence']}"
        source = f"stream:{row['stream']}/{row['shard']}"
        letter = _damaged("records", where, row, exc, function_col="stream", source=source, event=row["value"])
        letter = attrs.evolve(letter, function="?")
        fix = "DELETE FROM records WHERE stream = ? AND shard = ? AND sequence = ?"
        raise Damaged(letter, ((fix, (row["stream"], row["shard"], row["sequence"])),)) from exc


# -- dead letters and deployments -------------------------------------------------------


def letter_params(letter: DeadLetter) -> tuple[Any, ...]:
    try:
        event = payload.dumps(letter.event)
    except Exception as exc:  # noqa: BLE001 - keep the letter, with what can be said of its event
        event = payload.dumps(f"<an event that could not be pickled: {exc!r}>")
    where = (letter.id, letter.function, letter.source)
    return (*where, event, _dump_error(letter.error), letter.attempts, letter.invocation_id, letter.first_attempt_at, letter.failed_at)


def _dump_error(error: FaaSError) -> bytes:
    try:
        return payload.dumps(error)
    except Exception:  # noqa: BLE001 - an error that will not pickle is kept as its text
        return payload.dumps(FaaSError(f"{type(error).__name__}: {error}"))


def letter_from_row(row: sqlite3.Row) -> DeadLetter:
    """:raises Damaged: the letter is rewritten with its raw event and a ``StoreCorrupt`` error."""
    try:
        error = load(row["error"])
        if not isinstance(error, FaaSError):
            raise TypeError(f"column error holds a {type(error).__name__}, not a FaaSError")
        return DeadLetter(
            id=_typed(row["id"], str, "id"),
            function=_typed(row["function"], str, "function"),
            source=_typed(row["source"], str, "source"),
            event=load(row["event"]),
            error=error,
            attempts=_typed(row["attempts"], int, "attempts"),
            invocation_id=_typed(row["invocation_id"], str, "invocation_id"),
            first_attempt_at=_number(row["first_attempt_at"], "first_attempt_at"),
            failed_at=_number(row["failed_at"], "failed_at"),
        )
    except Exception as exc:
        key = str(row["id"])
        letter = _damaged("dead_letters", key, row, exc, source=str(row["source"]), event=row["event"])
        raise Damaged(letter, (("DELETE FROM dead_letters WHERE rowid = ?", (row["rowid"],)),)) from exc


def deployment_from_row(row: sqlite3.Row) -> StoredDeployment:
    """:raises Damaged: the version is kept but no longer active."""
    try:
        return StoredDeployment(
            name=_typed(row["name"], str, "name"),
            version=_typed(row["version"], int, "version"),
            code=_typed(row["code"], bytes, "code"),
            deployed_at=_number(row["deployed_at"], "deployed_at"),
            active=bool(_typed(row["active"], int, "active")),
        )
    except Exception as exc:
        key = f"{row['name']}/{row['version']}"
        letter = _damaged("deployments", key, row, exc, function_col="name", source="deploy", event=row["code"])
        fix = ("UPDATE deployments SET active = 0 WHERE rowid = ?", (row["rowid"],))
        raise Damaged(letter, (fix,)) from exc


def decode_all(rows: list[sqlite3.Row], decode: Callable[[sqlite3.Row], T], damaged: list[Damaged]) -> list[T]:
    """Every row that loads; the others are appended to ``damaged``."""
    out = []
    for row in rows:
        try:
            out.append(decode(row))
        except Damaged as bad:
            damaged.append(bad)
    return out
