"""The SQLite store's file: its schema and migrations, its lock, and what its errors mean.

Schema versions. A store file says it is one with ``PRAGMA application_id`` and
gives its schema version in ``PRAGMA user_version``. ``MIGRATIONS[v]`` takes a file
from version ``v - 1`` to ``v`` (version 0 is an empty file); opening runs every
migration past the file's version in one transaction, so a file is always at one
version. A file at a version later than ``SCHEMA_VERSION`` was written by a newer
microfaas and is refused (``StoreVersionError``): reading it could lose what it holds.

The lock. Two platforms on one store would both resume its unfinished work, so
every event would be delivered twice. The first platform takes an exclusive
``flock`` on a side file (``<store>-lock``, next to SQLite's ``-wal`` and ``-shm``)
and writes its pid there; the lock is the kernel's, so it goes with the process,
even under kill -9. The side file is never deleted (deleting a lock file that
another process has open would let two processes hold "the" lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from typing import Final

from ..errors import StoreCorrupt, StoreError, StoreFull, StoreLocked, StoreReadOnly, StoreVersionError

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "FileLock", "check_header", "migrate", "store_error"]

# "mfAS" (microfaas store), the file's PRAGMA application_id.
APPLICATION_ID: Final = 0x6D664153
# Seconds ``FileLock.acquire`` waits for a lock whose platform is gone (its writer process, killed with it, is ending).
ORPHAN_WAIT: Final = 2.0
SQLITE_HEADER: Final = b"SQLite format 3\x00"

MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        # Calls (spawned, and batch tasks): kept until finished, then for result_ttl.
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY, function TEXT NOT NULL, source TEXT NOT NULL, args BLOB NOT NULL,
            accepted_at REAL NOT NULL, attempt INTEGER NOT NULL, not_before REAL NOT NULL,
            job_id TEXT, idx INTEGER, state TEXT NOT NULL, outcome BLOB, finished_at REAL)""",
        "CREATE INDEX calls_pending ON calls(accepted_at) WHERE state = 'pending'",
        "CREATE INDEX calls_finished ON calls(finished_at) WHERE finished_at IS NOT NULL AND job_id IS NULL",
        "CREATE INDEX calls_job ON calls(job_id, idx) WHERE job_id IS NOT NULL",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, function TEXT NOT NULL, total INTEGER NOT NULL, max_parallel INTEGER NOT NULL,
            created_at REAL NOT NULL, finished_at REAL)""",
        # One row per message and subscription, until that subscription is done with it.
        """CREATE TABLE messages (
            topic TEXT NOT NULL, function TEXT NOT NULL, id TEXT NOT NULL, message BLOB NOT NULL, attempt INTEGER NOT NULL,
            PRIMARY KEY (topic, function, id))""",
        """CREATE TABLE records (
            stream TEXT NOT NULL, shard INTEGER NOT NULL, sequence INTEGER NOT NULL, key TEXT, value BLOB NOT NULL,
            put_at REAL NOT NULL, PRIMARY KEY (stream, shard, sequence)) WITHOUT ROWID""",
        # A shard's next sequence, kept when its records are trimmed or expire.
        """CREATE TABLE shards (
            stream TEXT NOT NULL, shard INTEGER NOT NULL, next_sequence INTEGER NOT NULL,
            PRIMARY KEY (stream, shard)) WITHOUT ROWID""",
        """CREATE TABLE checkpoints (
            stream TEXT NOT NULL, function TEXT NOT NULL, shard INTEGER NOT NULL, sequence INTEGER NOT NULL,
            PRIMARY KEY (stream, function, shard)) WITHOUT ROWID""",
        """CREATE TABLE dead_letters (
            id TEXT PRIMARY KEY, function TEXT NOT NULL, source TEXT NOT NULL, event BLOB, error BLOB,
            attempts INTEGER NOT NULL, invocation_id TEXT NOT NULL, first_attempt_at REAL NOT NULL, failed_at REAL NOT NULL)""",
        """CREATE TABLE deployments (
            name TEXT NOT NULL, version INTEGER NOT NULL, code BLOB NOT NULL, deployed_at REAL NOT NULL, active INTEGER NOT NULL,
            PRIMARY KEY (name, version))""",
    ),
    2: (
        # How far an outside source (files read as records) got in each part (a file), per function.
        """CREATE TABLE offsets (
            source TEXT NOT NULL, function TEXT NOT NULL, part TEXT NOT NULL, offset INTEGER NOT NULL,
            PRIMARY KEY (source, function, part)) WITHOUT ROWID""",
    ),
}
SCHEMA_VERSION: Final = max(MIGRATIONS)


def check_header(path: str) -> None:
    """Refuse a file that exists, is not empty, and is not a SQLite database.

    :raises StoreCorrupt: naming the file.
    :raises StoreReadOnly: it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise store_error(exc, path, "read") from exc
    if header and header != SQLITE_HEADER:
        raise StoreCorrupt(f"{path} is not a microfaas store (it is not a SQLite database); pass a new path, or the store's own file")


def migrate(conn: sqlite3.Connection, path: str, migrations: dict[int, tuple[str, ...]] | None = None) -> int:
    """Bring the file to the latest schema version (in one transaction); the version it was at.

    :raises StoreCorrupt: a SQLite database that is not a microfaas store.
    :raises StoreVersionError: a store from a newer microfaas.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    latest = max(migrations)
    conn.execute("BEGIN IMMEDIATE")
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id != APPLICATION_ID and (application_id != 0 or tables or version):
            raise StoreCorrupt(
                f"{path} is a SQLite database but not a microfaas store (application_id {application_id:#x}); "
                "pass a new path, or the store's own file"
            )
        if version > latest:
            raise StoreVersionError(
                f"{path} was written by a newer microfaas (store schema version {version}; this one knows up to {latest}); "
                "upgrade microfaas to open it"
            )
        for step in range(version + 1, latest + 1):
            for statement in migrations[step]:
                conn.execute(statement)
        if version < latest:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {latest}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(version)


class FileLock:
    """An exclusive ``flock`` on ``<path>-lock``, held until ``release`` (or the end of the
    processes holding it: the platform's, and its store's writer process, which inherits it)."""

    def __init__(self, path: str) -> None:
        self.path = path + "-lock"
        self._fd: int | None = None

    @property
    def fd(self) -> int | None:
        return self._fd

    def acquire(self, store_path: str) -> None:
        """:raises StoreLocked: another process (or platform) holds it, named by its pid.
        :raises StoreReadOnly: the lock file cannot be created."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise store_error(exc, store_path, "create the lock file of") from exc
        deadline = time.monotonic() + ORPHAN_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    if not _alive(owner) and time.monotonic() < deadline:
                        time.sleep(0.01)  # its platform is gone: its writer process is ending
                        continue
                    os.close(fd)
                    raise StoreLocked(
                        f"{store_path} is open in another platform (pid {owner}); stop it first: "
                        "two platforms on one store would deliver every event twice"
                    ) from None
                os.close(fd)
                raise store_error(exc, store_path, "lock") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (as the lock file has it) exists."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


_SQLITE_ERRORS: Final = {
    "SQLITE_FULL": StoreFull,
    "SQLITE_READONLY": StoreReadOnly,
    "SQLITE_CORRUPT": StoreCorrupt,
    "SQLITE_NOTADB": StoreCorrupt,
    "SQLITE_BUSY": StoreLocked,
    "SQLITE_LOCKED": StoreLocked,
}
_OS_ERRORS: Final = {
    errno.ENOSPC: StoreFull,
    errno.EDQUOT: StoreFull,
    errno.EFBIG: StoreFull,
    errno.EACCES: StoreReadOnly,
    errno.EPERM: StoreReadOnly,
    errno.EROFS: StoreReadOnly,
}


def store_error(exc: BaseException, path: str, doing: str) -> StoreError:
    """The ``StoreError`` that ``exc`` (from sqlite3 or the OS) means, naming the file and what failed."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return store_error_from(("", str(exc), getattr(exc, "sqlite_errorname", "") or "", None), path, doing)
    if isinstance(exc, OSError):
        return store_error_from(("", str(exc), None, exc.errno), path, doing)
    return store_error_from(("", str(exc), None, None), path, doing)


def store_error_from(failure: tuple[str, str, str | None, int | None], path: str, doing: str) -> StoreError:
    """``store_error`` of an exception as the writer process describes it (``writer_child.failure``):
    its type's name, its message, SQLite's error name (None: not from SQLite), the OS's errno."""
    _, message, sqlite_name, os_errno = failure
    kind: type[StoreError] = StoreError
    if sqlite_name is not None:
        kind = next((k for prefix, k in _SQLITE_ERRORS.items() if sqlite_name.startswith(prefix)), StoreError)
        if kind is StoreError and "readonly" in message:
            kind = StoreReadOnly
    elif os_errno is not None:
        kind = _OS_ERRORS.get(os_errno, StoreError)
    hint = {
        StoreFull: "free some disk space (or raise max_size_mb)",
        StoreReadOnly: "make the file and its folder writable, or pass a path you can write",
        StoreCorrupt: "the file is damaged or is not a microfaas store",
        StoreLocked: "another program holds the database; stop it first",
    }.get(kind, "see the cause")
    return kind(f"could not {doing} store {path}: {message}; {hint}")
