"""The SQLite store's writer process: it commits the groups of writes a platform sends it.

    python writer_child.py DB_PATH --fd FD --synchronous normal|full [--max-page-count N]

Why a process. A writer thread shares the platform's GIL: each of its SQLite calls gives
the GIL up and has to win it back from a busy event loop (up to the interpreter's switch
interval each time), and what it does with the GIL held stops the loop. In a process of
its own the writer holds a GIL of its own, and a commit costs the loop one frame sent and
one answer read.

It imports only the standard library (``transactions.py`` is loaded by its path, not as
part of the package), so it starts in a few tens of milliseconds.

The exchange, over the socket ``FD`` (each frame a 4-byte big-endian length and a pickle):
the platform sends ``(seq, statements)`` for each group of writes; the writer reads every
group waiting, runs them all as one transaction (group commit) and answers
``(seqs, error)``: the groups that transaction held, and ``None`` or why it failed
(``failure``). At the end of its input (the platform closed its end) the writer closes
its connection and exits. It asks Linux to kill it when the platform's process dies, so
that a kill -9 of the platform leaves no writer behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import signal
import socket
import sqlite3
import struct
import sys
from typing import Any, Final

LENGTH: Final = struct.Struct("!I")
READ_SIZE: Final = 1 << 20


def _transactions() -> Any:
    """``microfaas.store.transactions``, loaded from beside this file without the package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transactions.py")
    spec = importlib.util.spec_from_file_location("_microfaas_store_transactions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failure(exc: BaseException) -> tuple[str, str, str | None, int | None]:
    """What the platform needs of a failed transaction to name it: the exception's type and
    message, SQLite's error name, and the OS's errno (``schema.store_error_from`` reads it)."""
    sqlite_name = (getattr(exc, "sqlite_errorname", None) or "") if isinstance(exc, sqlite3.Error) else None
    return type(exc).__name__, str(exc), sqlite_name, exc.errno if isinstance(exc, OSError) else None


def frames(buffer: bytearray) -> list[Any]:
    """Take the whole frames off the front of ``buffer``, unpickled."""
    out = []
    start = 0
    while len(buffer) - start >= LENGTH.size:
        (size,) = LENGTH.unpack_from(buffer, start)
        end = start + LENGTH.size + size
        if len(buffer) < end:
            break
        out.append(pickle.loads(memoryview(buffer)[start + LENGTH.size : end]))
        start = end
    del buffer[:start]
    return out


def frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(data)) + data


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def serve(conn: sqlite3.Connection, sock: socket.socket, run_statements: Any) -> None:
    """Commit what arrives on ``sock`` until it ends."""
    buffer = bytearray()
    while True:
        sock.setblocking(True)
        data = sock.recv(READ_SIZE)
        if not data:
            return
        buffer += data
        sock.setblocking(False)
        try:
            while data := sock.recv(READ_SIZE):  # and whatever else is waiting: one transaction
                buffer += data
        except BlockingIOError:
            pass
        groups = frames(buffer)
        if not groups:
            continue
        error = None
        try:
            run_statements(conn, [statement for _, statements in groups for statement in statements])
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the platform
            error = failure(exc)
        sock.setblocking(True)
        sock.sendall(frame(([seq for seq, _ in groups], error)))
        if not data:
            return  # the platform closed its end while this transaction ran


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="writer_child.py")
    parser.add_argument("path")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--max-page-count", type=int)
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the platform, which then closes this
    sock = socket.socket(fileno=args.fd)
    conn = sqlite3.connect(args.path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
        if args.max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {args.max_page_count}")
        serve(conn, sock, _transactions().run_statements)
    finally:
        conn.close()
        sock.close()


if __name__ == "__main__":
    main()
