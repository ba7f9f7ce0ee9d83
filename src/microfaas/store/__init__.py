"""Durable state behind one protocol: ``MemoryStore`` (the default) and ``SqliteStore``.

The runtime keeps accepted work -- spawned calls and their results, topic
messages, stream records and checkpoints, batch jobs, dead letters, deployments --
in a ``Store`` (``base.py`` defines the protocol and its records), so that a
platform that dies resumes it on the next ``app.run(store=...)``. This package
sits directly below ``runtime``: it imports only the base records, the payload
pickler and the errors, never the runtime, the sources or the app.
"""

from __future__ import annotations

import os

from .base import (
    DONE,
    RESULT_TTL,
    STREAM_RETENTION,
    DeadLetter,
    PendingMessage,
    Snapshot,
    Store,
    StoredCall,
    StoredDeployment,
    StoredJob,
    StoredStream,
)
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "DONE",
    "RESULT_TTL",
    "STREAM_RETENTION",
    "DeadLetter",
    "MemoryStore",
    "PendingMessage",
    "Snapshot",
    "SqliteStore",
    "Store",
    "StoredCall",
    "StoredDeployment",
    "StoredJob",
    "StoredStream",
    "as_store",
]


def as_store(store: Store | str | os.PathLike[str] | None) -> Store:
    """The store ``app.run(store=...)`` means: a path is a ``SqliteStore``, None a new ``MemoryStore``.

    :raises ValueError: anything else.
    """
    if store is None:
        return MemoryStore()
    if isinstance(store, str | os.PathLike):
        return SqliteStore(store)
    if isinstance(store, Store):
        return store
    raise ValueError(f"store must be a path (a SQLite file), mf.SqliteStore(...), mf.MemoryStore() or another Store, got {store!r}")
