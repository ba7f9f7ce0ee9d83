"""Running a group of the SQLite store's writes as one transaction, in its writer process.

This module imports only the standard library: the writer process (``writer_child.py``)
loads it by its path, without the rest of the package.

Consecutive writes of one statement go to SQLite together: through ``executemany``, or,
for those a busy platform makes most (calls accepted, calls finished), as a few
statements of many rows each (``_as_rows`` says why).

Binding. The standard library's sqlite3 binds an ``int``, ``float``, ``str`` or
``bytearray`` as it is, but looks up an adapter for anything else, ``bytes`` and
``None`` included (about 3,000 instructions each, against about 500 for a plain bind).
So a spawned call is accepted with a statement that names only the columns it has
(``PUT_PENDING``: the rest are NULL), and the rows written many at once bind their
pickles as ``bytearray``.
"""

from __future__ import annotations

import sqlite3
from itertools import chain, groupby
from operator import itemgetter
from typing import Any, Final

__all__ = ["ATTEMPTED", "CALL_COLUMNS", "FINISHED", "PUT_CALL", "PUT_LETTER", "PUT_PENDING", "Statement", "run_statements"]

Statement = tuple[str, tuple[Any, ...]]

CALL_COLUMNS: Final = "id, function, source, args, accepted_at, attempt, not_before, job_id, idx, state, outcome, finished_at"

# Rows per statement when accepted or finished calls are written many at once (``_as_rows``).
ROWS_PER_STATEMENT: Final = 500
_UPDATE_FROM: Final = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE ... FROM, for the finished calls

PUT_CALL: Final = f"INSERT OR REPLACE INTO calls ({CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# A pending call of no batch job (a spawned one): PUT_CALL with its NULL columns left out (``rows.pending_call_params``).
PUT_PENDING: Final = (
    "INSERT OR REPLACE INTO calls (id, function, source, args, accepted_at, attempt, not_before, state) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')"
)
ATTEMPTED: Final = "UPDATE calls SET attempt = ?, not_before = ? WHERE id = ?"
FINISHED: Final = "UPDATE calls SET state = ?, outcome = ?, finished_at = ? WHERE id = ? AND state = 'pending'"
# The statements written many rows at once: one row's values, and which of its parameters are pickles
# (bound as bytearray; _PICKLES: or None).
_ROW: Final = {PUT_CALL: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", PUT_PENDING: "(?, ?, ?, ?, ?, ?, ?, 'pending')", FINISHED: "(?, ?, ?, ?)"}
_PICKLES: Final = {PUT_CALL: (10,)}  # pickles or None
_BLOBS: Final = {PUT_CALL: (3,), PUT_PENDING: (3,), FINISHED: (1,)}  # pickles, never None
_SQL: Final = itemgetter(0)
_PARAMS: Final = itemgetter(1)
_CALL_ID: Final = itemgetter(-1)  # of a FINISHED row
PUT_LETTER: Final = (
    "INSERT OR REPLACE INTO dead_letters (id, function, source, event, error, attempts, invocation_id, first_attempt_at, failed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def run_statements(conn: sqlite3.Connection, statements: list[Statement]) -> None:
    """Run ``statements`` in one transaction; runs of one statement go through ``executemany``,
    or, for the hottest two (calls accepted, calls finished), as one statement of many rows.

    A group that comes to a single SQL statement runs alone, with no ``BEGIN`` and ``COMMIT``
    around it: SQLite makes a statement on its own a transaction of its own (atomic, and
    committed as durably), and two statements fewer are stepped.
    """
    if not statements:
        return
    plan = _plan(conn, statements)
    if len(plan) == 1 and plan[0][0] != conn.executemany:  # (a bound method is made anew on each look-up: not `is`)
        run, sql, params = plan[0]
        run(sql, params)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for run, sql, params in plan:
            run(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _plan(conn: sqlite3.Connection, statements: list[Statement]) -> list[tuple[Any, str, Any]]:
    """What ``run_statements`` runs, in order: ``(conn.execute or conn.executemany, sql, parameters)``.

    Grouped and unzipped with ``itertools`` (C loops): the writer holds the GIL for all of it."""
    plan: list[tuple[Any, str, Any]] = []
    for sql, run in groupby(statements, key=_SQL):
        rows = list(map(_PARAMS, run))
        if len(rows) == 1:
            plan.append((conn.execute, sql, rows[0]))
        elif sql in _ROW and (sql != FINISHED or _UPDATE_FROM):
            plan.extend((conn.execute, many, values) for many, values in _as_rows(conn, sql, rows))
        else:
            plan.append((conn.executemany, sql, rows))
    return plan


def _as_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, list[Any]]]:
    """``sql`` for each of ``rows``, in order, as a few statements of up to ``ROWS_PER_STATEMENT`` rows
    (each with its parameters).

    Why: ``executemany`` steps (and resets) its statement once per row, and gives up the GIL
    around each step; one statement of many rows binds them all at once and steps once.
    (In a writer thread that shared the event loop's GIL, each of those hand-offs could
    wait out the interpreter's switch interval: a thousand rows took seconds under load.)
    """
    width = len(rows[0])
    per_statement = max(1, min(ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    if sql == FINISHED:
        # As the updates one by one would: the first outcome of a call wins (the others find it finished).
        # (Built from the end, so that each call's first row is the one kept; the rows' order does not matter.)
        rows = list(dict(zip(map(_CALL_ID, reversed(rows)), reversed(rows), strict=True)).values())
    out = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = list(chain.from_iterable(chunk))
        for column in _PICKLES.get(sql, ()):  # bound as bytearray (see the module's doc)
            values[column::width] = [None if blob is None else bytearray(blob) for blob in values[column::width]]
        for column in _BLOBS.get(sql, ()):  # pickles that are never None
            values[column::width] = map(bytearray, values[column::width])
        many = ", ".join([_ROW[sql]] * len(chunk))
        if sql == FINISHED:
            statement = (
                "UPDATE calls SET state = v.column1, outcome = v.column2, finished_at = v.column3 "
                f"FROM (VALUES {many}) AS v WHERE calls.id = v.column4 AND calls.state = 'pending'"
            )
        else:
            statement = f"{sql.partition(' VALUES ')[0]} VALUES {many}"
        out.append((statement, values))
    return out
