"""Running a group of the SQLite store's writes as one transaction, in its writer thread.

Consecutive writes of one statement go to SQLite together: through ``executemany``, or,
for the two a busy platform makes most (calls accepted, calls finished), as a few
statements of many rows each (``_run_as_rows`` says why).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from .rows import CALL_COLUMNS

__all__ = ["ATTEMPTED", "FINISHED", "PUT_CALL", "PUT_LETTER", "Statement", "run_statements"]

Statement = tuple[str, tuple[Any, ...]]

# Rows per statement when accepted or finished calls are written many at once (``_run_as_rows``).
ROWS_PER_STATEMENT: Final = 500
_UPDATE_FROM: Final = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE ... FROM, for the finished calls

PUT_CALL: Final = f"INSERT OR REPLACE INTO calls ({CALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ATTEMPTED: Final = "UPDATE calls SET attempt = ?, not_before = ? WHERE id = ?"
FINISHED: Final = "UPDATE calls SET state = ?, outcome = ?, finished_at = ? WHERE id = ? AND state = 'pending'"
PUT_LETTER: Final = (
    "INSERT OR REPLACE INTO dead_letters (id, function, source, event, error, attempts, invocation_id, first_attempt_at, failed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def run_statements(conn: sqlite3.Connection, statements: list[Statement]) -> None:
    """Run ``statements`` in one transaction; runs of one statement go through ``executemany``,
    or, for the hottest two (calls accepted, calls finished), as one statement of many rows."""
    if not statements:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        i, n = 0, len(statements)
        while i < n:
            sql = statements[i][0]
            j = i + 1
            while j < n and statements[j][0] is sql:
                j += 1
            if j - i == 1:
                conn.execute(sql, statements[i][1])
            elif sql is PUT_CALL or (sql is FINISHED and _UPDATE_FROM):
                _run_as_rows(conn, sql, [params for _, params in statements[i:j]])
            else:
                conn.executemany(sql, [params for _, params in statements[i:j]])
            i = j
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_as_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Run ``sql`` for each of ``rows``, in order, as a few statements of up to ``ROWS_PER_STATEMENT`` rows.

    Why: ``executemany`` gives up the GIL around every row's step and must win it back for
    the next, and while the event loop is busy each win can wait out the interpreter's
    switch interval (5 ms): a thousand rows took seconds under load. One statement of many
    rows binds them all at once and steps once.
    """
    width = len(rows[0])
    per_statement = max(1, min(ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    if sql is FINISHED:
        # As the updates one by one would: the first outcome of a call wins (the others find it finished).
        firsts: dict[Any, tuple[Any, ...]] = {}
        for params in rows:
            firsts.setdefault(params[-1], params)
        rows = list(firsts.values())
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(chunk))
        if sql is PUT_CALL:
            statement = f"INSERT OR REPLACE INTO calls ({CALL_COLUMNS}) VALUES {values}"
        else:
            statement = (
                "UPDATE calls SET state = v.column1, outcome = v.column2, finished_at = v.column3 "
                f"FROM (VALUES {values}) AS v WHERE calls.id = v.column4 AND calls.state = 'pending'"
            )
        conn.execute(statement, [value for params in chunk for value in params])
