"""LocalNodes: nodes carved out of this machine, with containers as worker subprocesses.

A ``LocalNode`` creates and destroys containers. With ``start_method="fork"`` it
keeps a zygote (``nodes/zygote.py``) and each cold start is one fork of it; with
``"spawn"`` each container is a fresh interpreter running ``microfaas.worker.main``.
Either way a container is a process with a socket of its own to the platform,
handled by a ``LocalContainer`` (``nodes/container.py``).

The zygote preloads the modules that define the app's functions and those the
app declares (``App(preload=...)``); with ``learn_imports`` the platform also
tells it the modules its containers imported (``LocalNode.preload``). A zygote
that dies, or that ends up with threads (it must not fork then), is replaced by a
new one that preloads what it had preloaded.

Each fork node keeps one *spare*: a child of its zygote, forked ahead of need,
that waits on its own socket. A cold start sends its ``ForkRequest`` straight to
the spare (no round trip through the zygote, no fork on the way); the next spare
is forked ``SPARE_DELAY`` later, or at once when a cold start comes first and
waits for it (and for ``SPARE_HURRY_S`` after that, while cold starts outrun the
spares). With no spare at hand and one start already waiting (a burst), the
zygote forks the container on request. A spare forked before the zygote preloaded more is let
go, so a container always has what its zygote has.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.abc
import attrs

from . import lifecycle as ev
from . import protocol
from .nodes.container import EXIT_STATUS_WAIT, LocalContainer
from .nodes.contract import NodeSetup, StartFailed
from .nodes.zygote_link import ZygoteLink, start_python
from .resources import ResourceManager
from .validation import int_at_least, number_at_least, positive_int

__all__ = ["LocalNode", "LocalNodes"]

# Seconds a container or zygote gets between SIGTERM and SIGKILL.
STOP_GRACE: Final = 1.0
# Seconds after a cold start before the node forks its next spare: long enough for the
# container just started to be ready, so that the fork does not compete with it for a CPU.
SPARE_DELAY: Final = 0.002
# Seconds after a cold start found its spare not yet forked during which the next spares are
# forked at once: cold starts that come faster than a spare is made gain more from an early
# fork than they lose to its competing for a CPU.
SPARE_HURRY_S: Final = 1.0


def machine_memory_mb() -> int:
    """This machine's physical memory in MB."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)


_positive = positive_int()
_positive_or_none = positive_int(optional=True)
_non_negative = number_at_least(0)
_non_negative_int = int_at_least(0)


def _start_method(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("fork", "spawn"):
        raise ValueError(f"LocalNodes: start_method must be 'fork' or 'spawn', got {value!r}")


@attrs.frozen(kw_only=True)
class LocalNodes:
    """Nodes carved out of this machine.

    :param max_nodes: how many nodes may be held at once.
    :param node_memory_mb: each node's memory capacity (None: the machine's memory).
    :param node_cpus: each node's CPUs (None: the machine's); informational for now.
    :param acquire_delay: seconds acquiring a node takes (it stands for a VM boot).
    :param release_after: seconds an empty node is kept before it is released.
    :param start_method: ``"fork"`` from a per-node zygote, or ``"spawn"`` a fresh interpreter.
    :param min_nodes: nodes held from the start and never released for emptiness.
    :param pipeline_depth: how many calls of a function with short calls may wait
        inside a busy container at most; fewer when they would be more than about 1 ms
        of work by the recent average (0: none; see "Pipelining" in docs/scheduling.md).
    :param busy_poll_us: how long a container that just answered polls for its next call
        before it sleeps, while calls come back to back (0: never; see docs/performance.md).
    :param reply_poll_us: how long the platform polls for the reply of a short call that is
        the only one in flight, rather than let the event loop sleep (0: never).
    :param learn_imports: containers report what their function imported, and the zygotes
        preload it for later cold starts (see "Preloading" in docs/lifecycle.md).
    :param max_learned_packages: how many top-level packages learning may add (then it stops).
    :param zygote_memory_mb: a zygote's resident memory past which no learned module is preloaded.
    """

    max_nodes: int = attrs.field(default=1, validator=_positive)
    node_memory_mb: int | None = attrs.field(default=None, validator=_positive_or_none)
    node_cpus: int | None = attrs.field(default=None, validator=_positive_or_none)
    acquire_delay: float = attrs.field(default=0.0, validator=_non_negative)
    release_after: float = attrs.field(default=30.0, validator=_non_negative)
    start_method: str = attrs.field(default="fork", validator=_start_method)
    min_nodes: int = attrs.field(default=1)
    pipeline_depth: int = attrs.field(default=64, validator=_non_negative_int)
    busy_poll_us: int = attrs.field(default=200, validator=_non_negative_int)
    reply_poll_us: int = attrs.field(default=50, validator=_non_negative_int)
    learn_imports: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    max_learned_packages: int = attrs.field(default=32, validator=_non_negative_int)
    zygote_memory_mb: int = attrs.field(default=1024, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int) or not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"LocalNodes: min_nodes must be an int between 0 and max_nodes={self.max_nodes}, got {self.min_nodes!r}")

    def resource_manager(self) -> ResourceManager:
        return ResourceManager(
            node_memory_mb=self.node_memory_mb or machine_memory_mb(),
            max_nodes=self.max_nodes,
            min_nodes=self.min_nodes,
            release_after=self.release_after,
        )

    async def acquire(self, node_id: str, setup: NodeSetup, task_group: anyio.abc.TaskGroup) -> LocalNode:
        """Bring up node ``node_id``; its background tasks run in ``task_group``."""
        if self.acquire_delay:
            await anyio.sleep(self.acquire_delay)
        node = LocalNode(
            node_id,
            setup,
            self.start_method,
            task_group,
            busy_poll_s=self.busy_poll_us / 1e6,
            reply_poll_s=self.reply_poll_us / 1e6,
            learn_imports=self.learn_imports,
        )
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        return node


@attrs.frozen
class _Spare:
    """A zygote's child that waits on ``sock`` for its ``ForkRequest`` (``nodes/zygote.py``)."""

    sock: socket.socket
    pid: int
    preloaded: tuple[str, ...]
    zygote: ZygoteLink


class LocalNode:
    """One node on this machine: its zygote (fork) or nothing (spawn), and its containers."""

    def __init__(
        self,
        node_id: str,
        setup: NodeSetup,
        start_method: str,
        task_group: anyio.abc.TaskGroup,
        *,
        busy_poll_s: float = 0.0,
        reply_poll_s: float = 0.0,
        learn_imports: bool = False,
    ) -> None:
        self.id = node_id
        self.setup = setup
        self.start_method = start_method
        self.busy_poll_s = busy_poll_s
        self.reply_poll_s = reply_poll_s
        self.learn_imports = learn_imports and start_method == "fork"
        self.preload_failures: dict[str, str] = {}
        self._tg = task_group
        self._containers: dict[str, LocalContainer] = {}
        self._by_pid: dict[int, LocalContainer] = {}
        self._early_exits: dict[int, int] = {}
        self._zygote: ZygoteLink | None = None
        self._retired: list[ZygoteLink] = []  # zygotes replaced while their containers may still run
        self._zygote_of: dict[str, ZygoteLink] = {}  # by container id
        self._replacing = anyio.Lock()
        self._stopping = False
        self._spare: _Spare | None = None
        self._spare_pids: set[int] = set()  # spares let go, whose exits are not containers'
        self._spare_ids = itertools.count(1)
        self._refilling = False
        self._spare_waiting = False  # a cold start waits for the spare being forked
        self._spare_missed_at = float("-inf")  # when a cold start last found no spare ready
        self._spare_hurry = anyio.Event()
        self._spare_ready = anyio.Event()

    @property
    def containers(self) -> dict[str, LocalContainer]:
        return self._containers

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    @property
    def preloaded(self) -> tuple[str, ...]:
        """The modules this node's zygote has preloaded (none without a zygote)."""
        return self._zygote.preloaded if self._zygote is not None else ()

    async def start(self) -> None:
        if self.start_method == "fork":
            self._zygote = await self._new_zygote(self.setup.preload)
            self._want_spare()

    async def _new_zygote(self, modules: Sequence[str], *, learned: bool = False) -> ZygoteLink:
        """Start a zygote and preload ``modules`` in it. :raises StartFailed: it died first."""
        link = await ZygoteLink.start(
            self.id, self.setup, on_child_exited=self._child_exited, on_gone=self._zygote_gone, stop_grace=STOP_GRACE
        )
        self._tg.start_soon(link.serve)
        try:
            done = await link.setup(self.setup, modules)
        except BaseException:
            await link.stop()
            raise
        self.preload_failures.update(done.failures)
        self._report_preload(done, modules, learned=learned)
        if done.threads > 1 and modules:
            # A module started a thread here though not in its probe: this zygote must not fork.
            # Its successor preloads nothing; the containers import the modules themselves.
            if self.setup.on_event is not None:
                reason = f"it had {done.threads} threads after preloading"
                self.setup.on_event(ev.ZYGOTE_REPLACED, self.id, {"reason": reason, "pid": link.pid})
            await link.stop()
            self.preload_failures.update({module: "the zygote had threads after preloading it" for module in modules})
            return await self._new_zygote((), learned=learned)
        return link

    async def preload(self, modules: Sequence[str], *, memory_mb: float | None = None) -> None:
        """Have the zygote preload ``modules`` too (learned ones); what it did goes out as lifecycle events."""
        async with self._replacing:
            link = self._zygote
            if link is None or link.gone is not None or self._stopping:
                return
            try:
                done = await link.preload(modules, memory_mb)
            except StartFailed:
                return  # it died meanwhile: the next cold start replaces it
            self._report_preload(done, modules, learned=True)
            self._let_go(self._take_spare_now())  # forked before these modules: it would not have them
            self._want_spare()
            if done.threads > 1:  # a module started a thread after all: this zygote must not fork again
                kept = [m for m in link.preloaded if m not in modules]
                await self._replace(link, f"it had {done.threads} threads after preloading", kept)

    def _report_preload(self, done: protocol.SetupDone, asked: Sequence[str], *, learned: bool) -> None:
        on_event = self.setup.on_event
        if on_event is None:
            return
        for module, reason in {**{m: f"its import raised {e}" for m, e in done.failures.items()}, **done.refused}.items():
            on_event(ev.PRELOAD_REFUSED, self.id, {"module": module, "reason": reason, "learned": learned})
        added = [m for m in asked if m in done.preloaded]
        on_event(
            ev.ZYGOTE_PRELOADED,
            self.id,
            {"modules": added, "preloaded": list(done.preloaded), "import_s": done.import_s, "rss_mb": done.rss_mb, "learned": learned},
        )

    async def _replace(self, old: ZygoteLink, reason: str, modules: Sequence[str]) -> None:
        if self._zygote is old:
            self._zygote = None
            if old.gone is None:
                self._retired.append(old)
            if self.setup.on_event is not None:
                self.setup.on_event(ev.ZYGOTE_REPLACED, self.id, {"reason": reason, "pid": old.pid})
            self._zygote = await self._new_zygote(modules)

    async def _live_zygote(self) -> ZygoteLink:
        """The zygote to fork from: a new one if the last died."""
        async with self._replacing:
            link = self._zygote
            assert link is not None
            if link.gone is not None and not self._stopping:
                await self._replace(link, f"the zygote {link.gone}", link.preloaded or self.setup.preload)
                link = self._zygote
                assert link is not None
            return link

    async def start_container(self, container_id: str, bundle_blob: bytes) -> LocalContainer:
        """Create a container and wait until it is ready (its init has run).

        :raises StartFailed: the process died, or loading the function or its init raised.
        """
        fork = protocol.ForkRequest(
            container_id=container_id, busy_poll_s=self.busy_poll_s, bundle=bundle_blob, report_imports=self.learn_imports
        )
        if self.start_method == "fork" and self._spare is None and self._refilling and not self._spare_waiting:
            # The next spare is on its way: it is ready sooner than a fork asked for now.
            self._spare_waiting = True
            self._spare_missed_at = anyio.current_time()
            try:
                self._spare_hurry.set()
                await self._spare_ready.wait()
            finally:
                self._spare_waiting = False
        if self.start_method == "fork" and (spare := self._take_spare()) is not None:
            try:
                return await self._started(container_id, spare.sock, spare.pid, None, spare.preloaded, first=fork, zygote=spare.zygote)
            except StartFailed as exc:
                if exc.stage != "process":
                    raise
                # It died before it answered (killed while it waited): fork the container on request.
        parent, child = socket.socketpair()
        parent.setblocking(False)
        preloaded: tuple[str, ...] = ()
        link: ZygoteLink | None = None
        try:
            if self.start_method == "fork":
                link = await self._live_zygote()
                preloaded = link.preloaded
                pid, process = await link.fork(fork, child), None
                self._want_spare()
            else:
                process = await start_python(
                    self.setup,
                    "from microfaas.worker import main; main()",
                    child.fileno(),
                    "--container-id",
                    container_id,
                    "--busy-poll-us",
                    str(round(self.busy_poll_s * 1e6)),
                )
                pid = process.pid
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        first = None if process is None else protocol.LoadRequest(sys_path=self.setup.sys_path, cwd=self.setup.cwd, bundle=bundle_blob)
        return await self._started(container_id, parent, pid, process, preloaded, first=first, zygote=link)

    async def _started(
        self,
        container_id: str,
        sock: socket.socket,
        pid: int,
        process: anyio.abc.Process | None,
        preloaded: tuple[str, ...],
        *,
        first: protocol.Message | None,
        zygote: ZygoteLink | None,
    ) -> LocalContainer:
        """Track the container on ``sock``, send it ``first`` (its function, if it waits for it), await ready."""
        container = LocalContainer(container_id, self.id, sock, pid, reply_poll_s=self.reply_poll_s)
        container.preloaded = preloaded
        if zygote is not None:
            self._zygote_of[container_id] = zygote
        self._containers[container_id] = container
        self._by_pid[pid] = container
        if pid in self._early_exits:
            container.set_exit(self._early_exits.pop(pid))
        if process is not None:
            self._tg.start_soon(self._wait_process, container, process)
        try:
            if first is not None:
                container.send(protocol.encode(first))
            await container.handshake()
        except BaseException:
            with anyio.CancelScope(shield=True):
                container.kill("start_failed")
                container._close_channel()
                await container._await_exit()
                self._forget(container)
            raise
        return container

    # -- the spare: a child of the zygote waiting for the next cold start's ForkRequest ----------

    def _take_spare(self) -> _Spare | None:
        spare, self._spare = self._spare, None
        if spare is None:
            self._spare_missed_at = anyio.current_time()
        self._want_spare()
        if spare is not None and spare.zygote is self._zygote and spare.zygote.gone is None and spare.pid not in self._early_exits:
            return spare
        if spare is not None:
            self._let_go(spare)
        return None

    def _want_spare(self) -> None:
        """Fork the next spare soon (after ``SPARE_DELAY``, so it does not compete with the start under way)."""
        if not self._refilling and self.start_method == "fork":
            self._refilling = True
            self._spare_hurry, self._spare_ready = anyio.Event(), anyio.Event()
            self._tg.start_soon(self._refill_spare)

    async def _refill_spare(self) -> None:
        try:
            if anyio.current_time() - self._spare_missed_at >= SPARE_HURRY_S:
                with anyio.move_on_after(SPARE_DELAY):
                    await self._spare_hurry.wait()  # a cold start waits for this spare: fork it now
            link = self._zygote
            if self._spare is not None or self._stopping or link is None or link.gone is not None:
                return
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            try:
                pid = await link.fork(protocol.SpareRequest(spare_id=f"{self.id}-spare-{next(self._spare_ids)}"), theirs)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self._spare = _Spare(ours, pid, link.preloaded, link)
            if self._stopping or link is not self._zygote:
                self._let_go(self._take_spare_now())
        except StartFailed:
            pass  # the zygote is gone: the next cold start replaces it, and asks for a spare
        finally:
            self._refilling = False
            self._spare_ready.set()

    def _take_spare_now(self) -> _Spare | None:
        spare, self._spare = self._spare, None
        return spare

    def _let_go(self, spare: _Spare | None) -> None:
        """Close a spare's socket: it reads end-of-file and exits (its exit is not a container's)."""
        if spare is not None:
            self._spare_pids.add(spare.pid)
            spare.sock.close()

    def _forget(self, container: LocalContainer) -> None:
        self._containers.pop(container.id, None)
        self._zygote_of.pop(container.id, None)
        if container.pid is not None:
            self._by_pid.pop(container.pid, None)

    def container_gone(self, container: LocalContainer) -> None:
        self._forget(container)

    def _child_exited(self, pid: int, returncode: int) -> None:
        if pid in self._spare_pids:
            self._spare_pids.discard(pid)
            return
        if self._spare is not None and self._spare.pid == pid:  # it died waiting (killed from outside)
            self._let_go(self._take_spare_now())
            self._spare_pids.discard(pid)
            self._want_spare()
            return
        container = self._by_pid.get(pid)
        if container is None:
            self._early_exits[pid] = returncode
        else:
            container.set_exit(returncode)

    def _zygote_gone(self, link: ZygoteLink, reason: str) -> None:
        """A zygote's channel ended: its children were killed with it."""
        for container_id, owner in list(self._zygote_of.items()):
            container = self._containers.get(container_id)
            if owner is link and container is not None:
                container.set_exit(self._early_exits.pop(container.pid or -1, None))

    async def stop(self) -> None:
        """Stop every container (SIGTERM, grace, SIGKILL), then the zygotes; reap them all.

        The zygote gives its children their grace too: when the platform stops, the task
        that reads the zygote's messages is cancelled, so the exits are not seen here.
        """
        with anyio.CancelScope(shield=True):
            self._stopping = True
            self._let_go(self._take_spare_now())
            containers = list(self._containers.values())
            for container in containers:
                if self.start_method == "fork":
                    container.kill_reason = container.kill_reason or "stopped"  # its zygote sends the SIGTERM
                else:
                    container.terminate()
            zygotes = [link for link in (self._zygote, *self._retired) if link is not None]
            if self.start_method == "fork":
                async with anyio.create_task_group() as tg:
                    for link in zygotes:
                        tg.start_soon(link.stop)
            else:
                with anyio.move_on_after(STOP_GRACE):
                    for container in containers:
                        await container.exited.wait()
                for container in containers:
                    container.kill("stopped")
                with anyio.move_on_after(EXIT_STATUS_WAIT):
                    for container in containers:
                        await container.exited.wait()
            for container in containers:
                container._close_channel()
                container.set_exit(self._early_exits.pop(container.pid or -1, None))

    async def _wait_process(self, container: LocalContainer, process: anyio.abc.Process) -> None:
        with anyio.CancelScope(shield=True):
            returncode = await process.wait()
        container.set_exit(returncode)
