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

Only changes made while the platform runs are seen: a change made while it is down
is not delivered afterwards (read the directory at start, or use ``mf.Files`` with a
checkpoint, to catch up). A directory that does not exist when the platform starts is
an error (``ConnectorUnreachable``) naming it.
"""

from __future__ import annotations

import os
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
        self.delivered = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"<Directory {self.root!r} for {self.function}>"

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import watchfiles

        if not await anyio.Path(self.root).is_dir():
            raise ConnectorUnreachable(f"{self.function}: Directory {self.trigger.path!r} ({self.root}) does not exist; create it first")
        spec = runtime.function(self.function)
        debounce_ms = max(1, int(self.trigger.debounce * 1000))
        ready = anyio.Event()
        async with anyio.create_task_group() as tg:
            watch = watchfiles.awatch(
                self.root,
                recursive=self.trigger.recursive,
                debounce=debounce_ms,
                step=min(50, debounce_ms),
                yield_on_timeout=True,
                rust_timeout=100,
            )
            async for changes in watch:
                if not ready.is_set():
                    ready.set()  # the watch is in place (it yields once when it times out with nothing seen)
                    task_status.started()
                for event in self._events(changes):
                    runtime.in_flight.started()
                    self._in_flight += 1
                    tg.start_soon(self._deliver, runtime, spec.retries, event)

    def _events(self, changes: set[tuple[Any, str]]) -> list[ObjectEvent]:
        """The object events of one set of changes, in path order.

        A folder created in the directory is searched for files: the kernel watches a new
        folder only once it has seen it, so files written into it at once may have no event of their own.
        """
        found: dict[tuple[str, str], ObjectEvent] = {}
        for change, path in changes:
            if self.trigger.recursive and _KINDS.get(int(change)) == "created" and os.path.isdir(path):
                for folder, _, names in os.walk(path):
                    for name in names:
                        event = self._event(1, os.path.join(folder, name))
                        if event is not None:
                            found[(event.kind, event.path)] = event
                continue
            event = self._event(int(change), path)
            if event is not None:
                found[(event.kind, event.path)] = event
        return [found[key] for key in sorted(found, key=lambda k: k[1])]

    def _event(self, change: int, path: str) -> ObjectEvent | None:
        kind = _KINDS.get(change)
        if kind is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            size = None
        else:
            if not os.path.isfile(path):
                return None  # a folder
            size = st.st_size
        if kind != "deleted" and size is None:
            return None  # gone already: its deletion is (or will be) an event of its own
        return ObjectEvent(kind=kind, path=path, size=size if kind != "deleted" else None, time=time.time())

    async def _deliver(self, runtime: SourceRuntime, retries: Retries, event: ObjectEvent) -> None:
        try:
            blob = dump_args(self.function, (event,), {})
            delivery = CallDelivery(self.function, f"directory:{self.root}", runtime.new_invocation_id(), blob, event)
            await runtime.deliver(delivery, retries)
            self.delivered += 1
        finally:
            self._in_flight -= 1
            runtime.in_flight.finished()

    def pending(self) -> list[str]:
        return [f"{self._in_flight} change(s) of {self.root} for {self.function}"] if self._in_flight else []
