"""The SQLite store's writer process: it lives as long as the store is open (or its platform
lives), a write it dies under fails by name and the next write starts a new one, and a
failed transaction comes back as the StoreError SQLite's error means."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import microfaas as mf
from microfaas.store import SqliteStore, StoredCall
from microfaas.store import transactions as transactions_module
from microfaas.store.schema import migrate

ARGS = pickle.dumps(((1,), {}))


def call(call_id: str) -> StoredCall:
    return StoredCall(id=call_id, function="f", source="spawn", args=ARGS, accepted_at=1.0)


def writers_of(pid: int) -> list[psutil.Process]:
    """The store writer processes that process ``pid`` started."""
    return [p for p in psutil.Process(pid).children() if any("writer_child.py" in part for part in p.cmdline())]


def stored_ids(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as other:
        return [row[0] for row in other.execute("SELECT id FROM calls ORDER BY id")]


def test_the_writer_process_runs_while_the_store_is_open(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "faas.db")
        await store.open()
        try:
            (writer,) = writers_of(os.getpid())
            await store.put_call(call("c1"))
        finally:
            await store.close()
        assert not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE
        assert writers_of(os.getpid()) == []

    asyncio.run(main())
    assert stored_ids(tmp_path / "faas.db") == ["c1"]


def test_writes_the_writer_process_dies_under_fail_by_name_and_the_next_write_starts_another(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.put_call(call("c1"))
            (first,) = writers_of(os.getpid())
            first.suspend()  # it cannot answer for what comes next
            write = store.put_call(call("c2"))
            await asyncio.sleep(0.05)
            first.kill()
            with pytest.raises(mf.StoreError, match=r"writer process \(pid \d+\) ended with code -9 before it answered for 1 writes"):
                await write
            await store.put_call(call("c3"))  # a new writer process
            (second,) = writers_of(os.getpid())
            assert second.pid != first.pid
        finally:
            await store.close()

    asyncio.run(main())
    assert stored_ids(path) == ["c1", "c3"]  # c2 was sent to a stopped process: never written


def test_a_killed_platform_takes_its_writer_process_with_it_and_its_store_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"
    code = (
        "import asyncio, microfaas as mf\n"
        "async def m():\n"
        f"    await mf.SqliteStore({str(path)!r}).open()\n"
        "    print('open', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(m())"
    )
    platform = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert platform.stdout is not None and platform.stdout.readline().strip() == "open"
        (writer,) = writers_of(platform.pid)
        os.kill(platform.pid, signal.SIGKILL)
        platform.wait()
        _, alive = psutil.wait_procs([writer], timeout=10)
        assert alive == []  # it died with the platform (PR_SET_PDEATHSIG), no one had to kill it
    finally:
        if platform.poll() is None:
            platform.kill()
            platform.wait()
        assert platform.stdout is not None
        platform.stdout.close()

    async def reopen() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(reopen())


def test_a_failed_transaction_comes_back_as_the_store_error_it_means(tmp_path: Path) -> None:
    path = tmp_path / "faas.db"

    async def main() -> None:
        store = SqliteStore(path, max_size_mb=0.1)  # a few pages: a big payload fills it
        await store.open()
        try:
            big = StoredCall(id="big", function="f", source="spawn", args=os.urandom(1 << 20), accepted_at=1.0)
            with pytest.raises(mf.StoreFull, match=r"could not write to store .*faas\.db: database or disk is full"):
                await store.put_call(big)
            await store.put_call(call("small"))  # the writer process is still there
        finally:
            await store.close()

    asyncio.run(main())
    assert stored_ids(path) == ["small"]


def test_a_group_run_through_executemany_alone_is_still_one_transaction(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "faas.db", isolation_level=None)) as conn:
        migrate(conn, str(tmp_path))
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        sql = "INSERT INTO offsets (source, function, part, offset) VALUES (?, ?, ?, ?)"
        transactions_module.run_statements(conn, [(sql, ("s", "f", str(i), i)) for i in range(3)])
    assert seen[0] == "BEGIN IMMEDIATE" and seen[-1] == "COMMIT"


def test_the_writer_commits_what_waits_in_one_transaction_and_answers_for_every_group(tmp_path: Path) -> None:
    """``writer_child.serve`` run here, on a socket pair: what the process does, measured where coverage sees it."""
    import socket
    import threading

    from microfaas.store import writer_child

    path = tmp_path / "faas.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    migrate(conn, str(tmp_path))
    ours, theirs = socket.socketpair()
    serving = threading.Thread(target=writer_child.serve, args=(conn, theirs, writer_child._transactions().run_statements))
    serving.start()
    received = bytearray()

    def answers(count: int) -> list[tuple[list[int], object]]:
        out: list[tuple[list[int], object]] = []
        while sum(len(seqs) for seqs, _ in out) < count:
            received.extend(ours.recv(1 << 16))
            out += writer_child.frames(received)
        return out

    sql = "INSERT INTO offsets (source, function, part, offset) VALUES (?, ?, ?, ?)"
    try:
        both = writer_child.frame((1, [(sql, ("s", "f", "a", 1))])) + writer_child.frame((2, [(sql, ("s", "f", "b", 2))]))
        ours.sendall(both[:7])  # a frame cut in two: nothing runs until it is whole
        ours.sendall(both[7:])
        first = answers(2)
        assert [seq for seqs, _ in first for seq in seqs] == [1, 2] and all(failure is None for _, failure in first)
        ours.sendall(writer_child.frame((3, [("INSERT INTO nowhere VALUES (?)", (1,))])))
        ((seqs, failure),) = answers(1)
        assert seqs == [3]
        kind, message, sqlite_name, os_errno = failure  # type: ignore[misc]
        assert (kind, sqlite_name, os_errno) == ("OperationalError", "SQLITE_ERROR", None) and "no such table: nowhere" in message
        ours.shutdown(socket.SHUT_WR)  # the end of its input: it returns
        serving.join(timeout=10)
        assert not serving.is_alive()
    finally:
        ours.close()
        theirs.close()
        conn.close()
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT part, offset FROM offsets ORDER BY part").fetchall() == [("a", 1), ("b", 2)]
