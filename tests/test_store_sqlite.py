"""The SQLite store's file: what it refuses (not a store, a newer schema, read-only, full, in use),
how it migrates, what a damaged row becomes, and when a write counts as stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import microfaas as mf
from microfaas.events import Message, Record
from microfaas.store import SqliteStore, StoredCall, StoredJob, schema
from microfaas.store import sqlite as sqlite_store
from microfaas.store import transactions as transactions_module
from microfaas.store.rows import call_params, pending_call_params
from microfaas.store.schema import migrate

ARGS = pickle.dumps(((1,), {}))


def run(coro_fn, *args):
    return asyncio.run(coro_fn(*args))


def store_rows(path: Path) -> list[tuple[object, ...]]:
    """The calls committed to the file at ``path``, as another connection sees them: (id, state), by id."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        return other.execute("SELECT id, state FROM calls ORDER BY id").fetchall()


def call(call_id: str = "c1", **fields: object) -> StoredCall:
    return StoredCall(**{"id": call_id, "function": "f", "source": "spawn", "args": ARGS, "accepted_at": 1.0, **fields})  # type: ignore[arg-type]


async def open_and_close(path: Path, **options: object) -> None:
    store = SqliteStore(path, **options)  # type: ignore[arg-type]
    await store.open()
    await store.close()


def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("groceries: milk, eggs\n")
    with pytest.raises(mf.StoreCorrupt, match=r"notes\.txt is not a microfaas store"):
        run(open_and_close, path)
    assert path.read_text() == "groceries: milk, eggs\n"


def test_a_sqlite_database_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
        conn.commit()
    with pytest.raises(mf.StoreCorrupt, match="a SQLite database but not a microfaas store"):
        run(open_and_close, path)


def test_a_store_from_a_newer_microfaas_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"
    run(open_and_close, path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(mf.StoreVersionError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*upgrade microfaas"):
        run(open_and_close, path)


async def write_a_call(path: Path) -> None:
    store = SqliteStore(path)
    await store.open()
    await store.put_call(call("kept"))
    await store.close()


def test_an_older_schema_is_migrated_forward_keeping_what_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "faas.db"
    run(write_a_call, path)
    later = {**schema.MIGRATIONS, schema.SCHEMA_VERSION + 1: ("ALTER TABLE calls ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",)}
    monkeypatch.setattr(schema, "MIGRATIONS", later)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", max(later))

    async def reopen() -> list[str]:
        store = SqliteStore(path)
        snapshot = await store.open()
        await store.close()
        return [c.id for c in snapshot.calls]

    assert run(reopen) == ["kept"]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("SELECT priority FROM calls").fetchall() == [(0,)]


def test_a_version_1_store_gains_the_offsets_table_and_keeps_its_calls(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"
    run(write_a_call, path)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # what microfaas wrote before files had offsets
        conn.execute("DROP TABLE offsets")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()

    async def resume_with_an_offset() -> tuple[list[str], dict[str, int]]:
        store = SqliteStore(path)
        snapshot = await store.open()
        await store.set_offset("files:*.csv", "f", "a.csv", 7)
        await store.close()
        store = SqliteStore(path)
        again = await store.open()
        await store.close()
        return [c.id for c in snapshot.calls], dict(again.offsets[("files:*.csv", "f")])

    assert run(resume_with_an_offset) == (["kept"], {"a.csv": 7})
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 2


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` cannot be written, even by root (an immutable file where chattr exists)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without chattr: no way to make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"
    run(open_and_close, path)
    with read_only(path), pytest.raises(mf.StoreReadOnly, match=r"faas\.db.*make the file and its folder writable"):
        run(open_and_close, path)


def test_a_store_too_small_for_its_schema_is_full_at_open(tmp_path: Path) -> None:
    with pytest.raises(mf.StoreFull, match=r"faas\.db.*full"):
        asyncio.run(open_and_close(tmp_path / "faas.db", max_size_mb=0.01))


def test_a_write_that_does_not_fit_fails_its_caller_and_the_store_keeps_working(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "faas.db", max_size_mb=0.25)
        await store.open()
        try:
            await store.put_call(call("small"))
            with pytest.raises(mf.StoreFull):
                await store.put_call(call("huge", args=pickle.dumps(((b"x" * 400_000,), {}))))
            await store.put_call(call("small-again"))  # the failed transaction was rolled back
            assert store.get_call("huge") is None
            assert store.get_call("small-again") is not None
        finally:
            await store.close()

    run(main)


def test_two_platforms_cannot_open_one_store(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"

    async def main() -> None:
        first = SqliteStore(path)
        await first.open()
        try:
            with pytest.raises(mf.StoreLocked, match=rf"open in another platform \(pid {os.getpid()}\)"):
                await SqliteStore(path).open()
        finally:
            await first.close()
        await open_and_close(path)  # closing gave it up

    run(main)


def test_a_store_held_by_another_process_is_refused_naming_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import asyncio, microfaas as mf\nasync def m():\n    await mf.SqliteStore({str(path)!r}).open()\n"
            "    print('open', flush=True)\n    await asyncio.sleep(60)\nasyncio.run(m())",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(mf.StoreLocked, match=rf"pid {holder.pid}"):
            run(open_and_close, path)
    finally:
        holder.kill()
        holder.wait()
    run(open_and_close, path)  # the lock went with the process


def test_a_write_is_committed_when_its_awaitable_returns(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.put_call(call("c1"))
            with contextlib.closing(sqlite3.connect(path)) as other:  # another connection sees it: it is committed
                assert other.execute("SELECT id, state FROM calls").fetchall() == [("c1", "pending")]
        finally:
            await store.close()

    run(main)


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of writes in each transaction the store's writer process commits from now on
    (as its answers report them: each answer is one transaction)."""
    counted: list[int] = []
    real_committed = SqliteStore._committed

    def counting_committed(self: SqliteStore, seqs: list[int], failure: object) -> None:
        counted.append(self._writes(seqs))
        real_committed(self, seqs, failure)

    monkeypatch.setattr(SqliteStore, "_committed", counting_committed)
    return counted


def test_writes_made_in_one_loop_iteration_share_one_transaction(tmp_path: Path, transactions: list[int]) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "faas.db")
        await store.open()
        transactions.clear()
        try:
            writes = [store.put_call(call(f"c{i}")) for i in range(200)]  # no await in between
            writes.append(store.put_message(Message(id="m", topic="t", data=1), ["f", "g"]))
            await asyncio.gather(*writes)
        finally:
            await store.close()

    run(main)
    assert transactions == [202]


def test_a_burst_of_writes_goes_to_the_writer_in_parts(tmp_path: Path, transactions: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "faas.db")
        await store.open()
        transactions.clear()
        try:
            await asyncio.gather(*[store.put_call(call(f"c{i}")) for i in range(3 * sqlite_store.GROUP_LIMIT + 5)])
            assert len(store_rows(tmp_path / "faas.db")) == 3 * sqlite_store.GROUP_LIMIT + 5
        finally:
            await store.close()

    handed: list[int] = []
    real_flush = SqliteStore._flush

    def counting_flush(self: SqliteStore) -> None:
        if self._group:
            handed.append(len(self._group))
        real_flush(self)

    monkeypatch.setattr(SqliteStore, "_flush", counting_flush)
    run(main)
    # Handed over at GROUP_LIMIT writes each, in order (a writer that lags may commit several parts together).
    assert handed[:4] == [sqlite_store.GROUP_LIMIT] * 3 + [5]
    assert sum(transactions) == 3 * sqlite_store.GROUP_LIMIT + 5 and len(transactions) <= 4


def test_outcomes_nobody_waits_for_share_a_commit_across_loop_iterations(tmp_path: Path, transactions: list[int]) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "faas.db")
        await store.open()
        try:
            await asyncio.gather(*[store.put_call(call(f"c{i}")) for i in range(5)])
            transactions.clear()
            for i in range(3):  # one per loop iteration, as calls finish
                store.call_finished(f"c{i}", succeeded=True, outcome=i, finished_at=2.0)
                await asyncio.sleep(0)
            assert transactions == []  # held for LAZY_FLUSH_S
            await asyncio.sleep(sqlite_store.LAZY_FLUSH_S * 5)
            assert transactions == [3]
            # An outcome then a write that is waited for: they go together, at once, in order.
            store.call_finished("c3", succeeded=False, outcome=mf.FunctionTimeout("boom"), finished_at=3.0)
            await asyncio.sleep(0)
            await store.put_call(call("c5"))
            assert transactions == [3, 2]
            assert store.get_call("c3").state == "failed"  # type: ignore[union-attr]
            store.call_finished("c4", succeeded=True, outcome=4, finished_at=4.0)
        finally:
            await store.close()  # commits the last outcome, held or not

    run(main)
    assert transactions[-1] == 1
    assert [(row[0], row[1]) for row in store_rows(tmp_path / "faas.db")] == [
        ("c0", "succeeded"),
        ("c1", "succeeded"),
        ("c2", "succeeded"),
        ("c3", "failed"),
        ("c4", "succeeded"),
        ("c5", "pending"),
    ]


def test_accepted_and_finished_calls_written_many_rows_at_a_time_as_one_by_one(tmp_path: Path) -> None:
    calls = [call(f"c{i % 90}", accepted_at=float(i)) for i in range(120)]  # repeated ids: the last insert wins
    rows = [call_params(c) for c in calls]
    finished = [("succeeded" if i % 3 else "failed", pickle.dumps(i), float(i), f"c{i % 95}") for i in range(130)]  # the first wins
    done = [(transactions_module.FINISHED, f) for f in finished]
    many_at_once = {
        "every column": [(transactions_module.PUT_CALL, r) for r in rows] + done,
        "a spawned call's columns": [(transactions_module.PUT_PENDING, pending_call_params(c)) for c in calls] + done,
    }
    results = []
    for name in ("one by one", *many_at_once):
        with contextlib.closing(sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None)) as conn:
            migrate(conn, str(tmp_path))
            if name in many_at_once:
                transactions_module.run_statements(conn, many_at_once[name])  # type: ignore[arg-type]
            else:
                conn.executemany(transactions_module.PUT_CALL, rows)
                conn.executemany(transactions_module.FINISHED, finished)
            results.append(conn.execute("SELECT rowid, *, typeof(args), typeof(outcome) FROM calls ORDER BY rowid").fetchall())
    assert results[0] == results[1] == results[2] and len(results[0]) == 90
    assert {row[-2:] for row in results[0]} == {("blob", "blob")}  # pickles are stored as blobs either way


@pytest.mark.parametrize("rows", [1, 3])
def test_a_group_of_one_statement_is_atomic_without_a_transaction_around_it(tmp_path: Path, rows: int) -> None:
    # One PUT_PENDING run becomes one statement of many rows, run with no BEGIN: it is stored whole or not at all.
    good = [(transactions_module.PUT_PENDING, pending_call_params(call(f"c{i}"))) for i in range(rows)]
    bad_params = pending_call_params(call("bad"))
    assert bad_params is not None
    bad = (transactions_module.PUT_PENDING, (bad_params[0], None, *bad_params[2:]))  # function is NOT NULL
    with contextlib.closing(sqlite3.connect(tmp_path / "faas.db", isolation_level=None)) as conn:
        migrate(conn, str(tmp_path))
        with pytest.raises(sqlite3.IntegrityError):
            transactions_module.run_statements(conn, [*good, bad])  # type: ignore[list-item]
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
        transactions_module.run_statements(conn, good)  # type: ignore[arg-type]
        assert not conn.in_transaction
    with contextlib.closing(sqlite3.connect(tmp_path / "faas.db")) as other:  # committed: another connection sees it
        assert other.execute("SELECT count(*) FROM calls").fetchone()[0] == rows


def test_damaged_rows_become_dead_letters_with_the_reason_and_the_rest_loads(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"

    async def fill() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.put_call(call("good"))
        await store.put_call(call("bad"))
        await store.put_job(
            StoredJob(id="j", function="f", total=2, max_parallel=1, created_at=1.0),
            [
                call("j.0", source="batch:j", job_id="j", index=0),
                call("j.1", source="batch:j", job_id="j", index=1),
            ],
        )
        await store.put_message(Message(id="m1", topic="orders", data=1), ["f"])
        await store.put_message(Message(id="m2", topic="orders", data=2), ["f"])
        for sequence in range(3):
            await store.put_record("clicks", Record(key="k", value=sequence, sequence=sequence, shard=0, put_at=1.0))
        await store.close()

    run(fill)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE calls SET args = x'00ff00' WHERE id IN ('bad', 'j.1')")
        conn.execute("UPDATE messages SET message = 'not a pickle' WHERE id = 'm2'")
        conn.execute("UPDATE records SET value = x'8004' WHERE sequence = 1")
        conn.commit()

    async def reopen() -> None:
        store = SqliteStore(path)
        snapshot = await store.open()
        try:
            assert [c.id for c in snapshot.calls] == ["good"]
            [job] = snapshot.jobs
            assert [(t.index, t.state) for t in job.tasks] == [(0, "pending"), (1, "failed")]
            assert isinstance(job.tasks[1].outcome, mf.StoreCorrupt)
            assert [m.message.id for m in snapshot.messages] == ["m1"]
            assert [r.sequence for r in snapshot.streams["clicks"].records[0]] == [0, 2]
            letters = {letter.invocation_id: letter for letter in snapshot.dead_letters}
            assert set(letters) == {"bad", "j.1", "orders/f/m2", "clicks/0/1"}
            assert all(isinstance(letter.error, mf.StoreCorrupt) for letter in letters.values())
            assert "calls[bad] could not be loaded" in str(letters["bad"].error)
            assert letters["bad"].event == b"\x00\xff\x00" and letters["bad"].function == "f"
            bad = store.get_call("bad")
            assert bad is not None and bad.state == "failed" and isinstance(bad.outcome, mf.StoreCorrupt)
        finally:
            await store.close()
        # Moved once: opening again finds the same dead letters, not new ones.
        store = SqliteStore(path)
        again = await store.open()
        await store.close()
        assert sorted(letter.id for letter in again.dead_letters) == sorted(letter.id for letter in snapshot.dead_letters)

    run(reopen)
