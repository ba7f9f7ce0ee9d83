"""A directory's changes as object events, like a storage bucket's notifications (through watchfiles).

How this works. ``mf.Directory("uploads/")`` watches a directory (and, with
``recursive=True``, the folders in it) with watchfiles, which uses the kernel's file
notifications (inotify on Linux). Each file that is created, modified or deleted
becomes one ``ObjectEvent(kind, path, size, time)``; changes watchfiles sees within
``debounce`` seconds of each other come as one set, and each event of a set is
delivered at once (like S3's notifications, they are not ordered), with the
function's retries and dead letters. A folder's own changes are not events, but a
new folder is searched for the files already in it (the kernel watches a new folder
only once it saw it, so a file written into it at once might otherwise be missed):
such a file may be reported ``created`` twice.

What the function was told survives a restart, on a durable store. The source keeps
a listing of the directory in the store (each file's size, modification time and
inode, as ``Store.set_offset`` parts), updated once a change's event was handled or
dead-lettered. The first platform on a store takes the directory as it finds it as
the listing, with no events; a platform started again on that store compares the
directory with the listing and delivers what changed while it was down, as the net
change of each file (``created``, ``modified`` or ``deleted``: a file made and removed
while down is no event), then watches. So a change whose event was in flight at a
crash is delivered again (at least once); on the default ``MemoryStore`` nothing is
kept, and a platform sees only the changes made while it runs. A directory that does
not exist when the platform starts is an error (``ConnectorUnreachable``) naming it.
"""

from __future__ import annotations

import os
import stat
import time
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from ..errors import ConnectorUnreachable
from ..events import ObjectEvent
from ..runtime.delivery import CallDelivery
from ..runtime.shipping import dump_args
from ..validation import is_number
from .connector import Connector

if TYPE_CHECKING:
    from ..runtime.delivery import Source, SourceRuntime
    from ..spec import Retries

__all__ = ["Directory", "DirectorySource"]

_KINDS: Final = {1: "created", 2: "modified", 3: "deleted"}  # watchfiles.Change: added, modified, deleted
_LISTED: Final = ""  # the listing's part that says there is a listing (a directory empty then has no other)
_VERSION_BITS: Final = 2**63 - 1


@attrs.frozen
class Directory(Connector):
    """A trigger delivering a directory's file changes as ``ObjectEvent``s (the extra ``connectors``).

    :param path: the directory to watch.
    :param recursive: watch the folders inside it too.
    :param debounce: seconds watchfiles waits for more changes before it reports a set of them.
    :raises ValueError: a bad setting (the message names it).
    """

    path: str
    recursive: bool = True
    debounce: float = 0.05

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike) or not str(self.path).strip():
            raise ValueError(f"Directory: path must be a directory's path, got {self.path!r}")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"Directory: path must be a directory, got {self.path!r}, which is a file")
        if not isinstance(self.recursive, bool):
            raise ValueError(f"Directory: recursive must be a bool, got {self.recursive!r}")
        if not (is_number(self.debounce) and self.debounce > 0):
            raise ValueError(f"Directory: debounce must be a number of seconds > 0, got {self.debounce!r}")

    def source(self, function: str) -> Source:
        return DirectorySource(self, function)


class DirectorySource:
    """A running ``Directory`` trigger."""

    def __init__(self, trigger: Directory, function: str) -> None:
        self.trigger = trigger
        self.function = function
        self.root = os.path.abspath(trigger.path)
        self.key = f"directory:{function}:{self.root}"
        self.listing_key = f"directory:{self.root}"
        self.delivered = 0
        self._in_flight = 0
        self._issued = 0
        self._latest: dict[str, int] = {}  # each file's newest change not yet settled

    def __repr__(self) -> str:
        return f"<Directory {self.root!r} for {self.function}>"

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import watchfiles

        if not await anyio.Path(self.root).is_dir():
            raise ConnectorUnreachable(f"{self.function}: Directory {self.trigger.path!r} ({self.root}) does not exist; create it first")
        spec = runtime.function(self.function)
        debounce_ms = max(1, int(self.trigger.debounce * 1000))
        ready = False
        async with anyio.create_task_group() as tg:
            watch = watchfiles.awatch(
                self.root,
                recursive=self.trigger.recursive,
                debounce=debounce_ms,
                step=min(50, debounce_ms),
                yield_on_timeout=True,
                rust_timeout=100,
            )
            async for seen in watch:
                if not ready:
                    ready = True  # the watch is in place (it yields once when it times out with nothing seen)
                    # Listed after the watch began: a change made in between is seen twice rather than never.
                    changes = await self._changed_while_down(runtime) + self._events(seen)
                    task_status.started()
                else:
                    changes = self._events(seen)
                for change in changes:
                    runtime.in_flight.started()
                    self._in_flight += 1
                    tg.start_soon(self._deliver, runtime, spec.retries, change)

    async def _changed_while_down(self, runtime: SourceRuntime) -> list[_Change]:
        """What changed since the listing in the store, as ``_Change``s; none on the first start (the listing is taken then)."""
        listed = runtime.store.get_offsets(self.listing_key, self.function)
        now = await anyio.to_thread.run_sync(self._scan)
        if _LISTED not in listed:
            for part, version in now.items():
                runtime.store.set_offset(self.listing_key, self.function, part, version)
            await runtime.store.set_offset(self.listing_key, self.function, _LISTED, 0)
            return []
        del listed[_LISTED]
        found = []
        for part in sorted(listed.keys() | now.keys()):
            path = os.path.join(self.root, part)
            if part not in now:
                found.append(self._change(ObjectEvent(kind="deleted", path=path, size=None, time=time.time()), None))
            elif listed.get(part) != now[part]:
                change = self._event(1 if part not in listed else 2, path)
                if change is not None:
                    found.append(change)
        return found

    def _scan(self) -> dict[str, int]:
        """Each file in the directory (in its folders too, when recursive) by its relative path: its version."""
        versions = {}
        for folder, folders, names in os.walk(self.root):
            if not self.trigger.recursive:
                folders.clear()
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # gone while listed
                if stat.S_ISREG(st.st_mode):
                    versions[os.path.relpath(path, self.root)] = _version(st)
        return versions

    def _events(self, changes: set[tuple[Any, str]]) -> list[_Change]:
        """The object events of one set of changes, in path order.

        A folder created in the directory is searched for files: the kernel watches a new
        folder only once it has seen it, so files written into it at once may have no event of their own.
        """
        found: dict[tuple[str, str], _Change] = {}
        for change, path in changes:
            if self.trigger.recursive and _KINDS.get(int(change)) == "created" and os.path.isdir(path):
                for folder, _, names in os.walk(path):
                    for name in names:
                        event = self._event(1, os.path.join(folder, name))
                        if event is not None:
                            found[(event.event.kind, event.event.path)] = event
                continue
            event = self._event(int(change), path)
            if event is not None:
                found[(event.event.kind, event.event.path)] = event
        return [found[key] for key in sorted(found, key=lambda k: k[1])]

    def _event(self, change: int, path: str) -> _Change | None:
        kind = _KINDS.get(change)
        if kind is None:
            return None
        try:
            st: os.stat_result | None = os.stat(path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            return None  # a folder
        if kind == "deleted":
            return self._change(ObjectEvent(kind=kind, path=path, size=None, time=time.time()), None)
        if st is None:
            return None  # gone already: its deletion is (or will be) an event of its own
        return self._change(ObjectEvent(kind=kind, path=path, size=st.st_size, time=time.time()), _version(st))

    def _change(self, event: ObjectEvent, version: int | None) -> _Change:
        self._issued += 1
        part = os.path.relpath(event.path, self.root)
        self._latest[part] = self._issued
        return _Change(event, part, version, self._issued)

    async def _deliver(self, runtime: SourceRuntime, retries: Retries, change: _Change) -> None:
        try:
            event = change.event
            blob = dump_args(self.function, (event,), {})
            delivery = CallDelivery(self.function, f"directory:{self.root}", runtime.new_invocation_id(), blob, event)
            await runtime.deliver(delivery, retries)
            self.delivered += 1
            if self._latest.get(change.part) == change.issued:  # an older change of the file settling later must not overwrite it
                del self._latest[change.part]
                if change.version is None:
                    runtime.store.forget_offsets(self.listing_key, self.function, [change.part])
                else:
                    runtime.store.set_offset(self.listing_key, self.function, change.part, change.version)
        finally:
            self._in_flight -= 1
            runtime.in_flight.finished()

    def pending(self) -> list[str]:
        return [f"{self._in_flight} change(s) of {self.root} for {self.function}"] if self._in_flight else []


@attrs.frozen
class _Change:
    """One change's event, and what the listing holds for its file once the event settled.

    :param part: the file's path relative to the directory (its part in the listing).
    :param version: its ``_version`` (None: deleted).
    :param issued: this change's number among the source's: the listing takes a file's newest change.
    """

    event: ObjectEvent
    part: str
    version: int | None
    issued: int


def _version(st: os.stat_result) -> int:
    """What tells one version of a file from another (size, modification time, inode), in 63 bits for SQLite."""
    return hash((st.st_size, st.st_mtime_ns, st.st_ino)) & _VERSION_BITS
