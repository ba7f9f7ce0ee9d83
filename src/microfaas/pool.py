"""LocalNodes: nodes carved out of this machine, with containers as worker subprocesses.

A ``LocalNode`` creates and destroys containers. With ``start_method="fork"`` it
keeps a zygote (``nodes/zygote.py``) and each cold start is one fork of it; with
``"spawn"`` each container is a fresh interpreter running ``microfaas.worker.main``.
Either way a container is a process with a socket of its own to the platform,
handled by a ``LocalContainer`` (``nodes/container.py``).
"""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from typing import Final

import anyio
import anyio.abc
import attrs

from . import protocol
from .nodes.container import EXIT_STATUS_WAIT, LocalContainer, close_socket, readable_or_closed, send_all
from .nodes.contract import NodeSetup, StartFailed
from .resources import ResourceManager
from .validation import int_at_least, number_at_least, positive_int

__all__ = ["LocalNode", "LocalNodes"]

# Seconds a container or zygote gets between SIGTERM and SIGKILL.
STOP_GRACE: Final = 1.0


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
        inside a busy container (0: none; see "Pipelining" in docs/scheduling.md).
    :param busy_poll_us: how long a container that just answered polls for its next call
        before it sleeps, while calls come back to back (0: never; see docs/performance.md).
    :param reply_poll_us: how long the platform polls for the reply of a short call that is
        the only one in flight, rather than let the event loop sleep (0: never).
    """

    max_nodes: int = attrs.field(default=1, validator=_positive)
    node_memory_mb: int | None = attrs.field(default=None, validator=_positive_or_none)
    node_cpus: int | None = attrs.field(default=None, validator=_positive_or_none)
    acquire_delay: float = attrs.field(default=0.0, validator=_non_negative)
    release_after: float = attrs.field(default=30.0, validator=_non_negative)
    start_method: str = attrs.field(default="fork", validator=_start_method)
    min_nodes: int = attrs.field(default=1)
    pipeline_depth: int = attrs.field(default=4, validator=_non_negative_int)
    busy_poll_us: int = attrs.field(default=200, validator=_non_negative_int)
    reply_poll_us: int = attrs.field(default=50, validator=_non_negative_int)

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
            node_id, setup, self.start_method, task_group, busy_poll_s=self.busy_poll_us / 1e6, reply_poll_s=self.reply_poll_us / 1e6
        )
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        return node


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
    ) -> None:
        self.id = node_id
        self.setup = setup
        self.start_method = start_method
        self.busy_poll_s = busy_poll_s
        self.reply_poll_s = reply_poll_s
        self.preload_failures: dict[str, str] = {}
        self.zygote_pid: int | None = None
        self._tg = task_group
        self._containers: dict[str, LocalContainer] = {}
        self._by_pid: dict[int, LocalContainer] = {}
        self._early_exits: dict[int, int] = {}
        self._zygote: anyio.abc.Process | None = None
        self._ctrl: socket.socket | None = None
        self._ctrl_decoder = protocol.FrameDecoder()
        self._forks: dict[str, _ForkReply] = {}
        self._setup_reply: _ForkReply | None = None
        self._ctrl_lock = anyio.Lock()

    @property
    def containers(self) -> dict[str, LocalContainer]:
        return self._containers

    async def start(self) -> None:
        if self.start_method != "fork":
            return
        parent, child = socket.socketpair()
        try:
            self._zygote = await self._python("from microfaas.nodes.zygote import main; main()", child.fileno())
        finally:
            child.close()
        self.zygote_pid = self._zygote.pid
        parent.setblocking(False)
        self._ctrl = parent
        self._setup_reply = _ForkReply()
        self._tg.start_soon(self._serve_zygote)
        await self._send_ctrl(
            protocol.encode(protocol.SetupRequest(sys_path=self.setup.sys_path, cwd=self.setup.cwd, modules=self.setup.preload))
        )
        await self._setup_reply.event.wait()
        done = self._setup_reply.value
        if not isinstance(done, protocol.SetupDone):
            await self.stop()
            raise StartFailed(f"node {self.id}: the {self._setup_reply.error}", stage="node")
        self.preload_failures = dict(done.failures)

    async def start_container(self, container_id: str, bundle_blob: bytes) -> LocalContainer:
        """Create a container and wait until it is ready (its init has run).

        :raises StartFailed: the process died, or loading the function or its init raised.
        """
        parent, child = socket.socketpair()
        parent.setblocking(False)
        try:
            if self.start_method == "fork":
                pid, process = await self._fork(container_id, bundle_blob, child), None
            else:
                process = await self._python(
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
        container = LocalContainer(container_id, self.id, parent, pid, reply_poll_s=self.reply_poll_s)
        self._containers[container_id] = container
        self._by_pid[pid] = container
        if pid in self._early_exits:
            container.set_exit(self._early_exits.pop(pid))
        if process is not None:
            self._tg.start_soon(self._wait_process, container, process)
        try:
            if process is not None:
                container.send(protocol.encode(protocol.LoadRequest(sys_path=self.setup.sys_path, cwd=self.setup.cwd, bundle=bundle_blob)))
            await container.handshake()
        except BaseException:
            with anyio.CancelScope(shield=True):
                container.kill("start_failed")
                container._close_channel()
                await container._await_exit()
                self._forget(container)
            raise
        return container

    async def _python(self, code: str, fd: int, *args: str) -> anyio.abc.Process:
        """A fresh interpreter running ``code`` with socket ``fd``; its stdout and stderr are ours."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in self.setup.sys_path if p)
        return await anyio.open_process(
            [sys.executable, "-c", code, "--fd", str(fd), *args],
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            cwd=self.setup.cwd,
            env=env,
        )

    def _forget(self, container: LocalContainer) -> None:
        self._containers.pop(container.id, None)
        if container.pid is not None:
            self._by_pid.pop(container.pid, None)

    def container_gone(self, container: LocalContainer) -> None:
        self._forget(container)

    async def stop(self) -> None:
        """Stop every container (SIGTERM, grace, SIGKILL), then the zygote; reap them all."""
        with anyio.CancelScope(shield=True):
            containers = list(self._containers.values())
            for container in containers:
                container.terminate()
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
            if self._ctrl is not None:
                close_socket(self._ctrl)
            if self._zygote is not None:
                await _stop_process(self._zygote)

    async def _fork(self, container_id: str, bundle_blob: bytes, child: socket.socket) -> int:
        reply = self._forks[container_id] = _ForkReply()
        try:
            fork = protocol.ForkRequest(container_id=container_id, busy_poll_s=self.busy_poll_s, bundle=bundle_blob)
            await self._send_ctrl(protocol.encode(fork), fd=child.fileno())
            await reply.event.wait()
        finally:
            self._forks.pop(container_id, None)
        if not isinstance(reply.value, protocol.Forked):
            raise StartFailed(f"node {self.id}: {reply.error}", stage="process")
        return reply.value.pid

    async def _send_ctrl(self, buffers: list[bytes | bytearray | memoryview], fd: int | None = None) -> None:
        assert self._ctrl is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        async with self._ctrl_lock:
            await send_all(self._ctrl, buffers, ancillary)

    async def _serve_zygote(self) -> None:
        assert self._ctrl is not None
        ctrl = self._ctrl
        reason = "exited"
        try:
            while True:
                try:
                    data = ctrl.recv(protocol.READ_SIZE)
                except BlockingIOError:
                    if not await readable_or_closed(ctrl):
                        break
                    continue
                except OSError:
                    break
                if not data:
                    break
                self._ctrl_decoder.feed(data)
                while (message := self._ctrl_decoder.next_message()) is not None:
                    self._on_zygote_message(message)
        except protocol.ProtocolError as exc:
            reason = f"spoke garbage ({exc})"
        finally:
            # The zygote is gone: its children were killed with it.
            gone = f"zygote {reason}"
            if self._setup_reply is not None:
                self._setup_reply.fail(gone)
            for reply in self._forks.values():
                reply.fail(gone)
            for container in list(self._containers.values()):
                container.set_exit(self._early_exits.pop(container.pid or -1, None))

    def _on_zygote_message(self, message: protocol.Message) -> None:
        if type(message) is protocol.Forked:
            reply = self._forks.get(message.container_id)
            if reply is not None:
                reply.succeed(message)
        elif type(message) is protocol.ChildExited:
            container = self._by_pid.get(message.pid)
            if container is None:
                self._early_exits[message.pid] = message.returncode
            else:
                container.set_exit(message.returncode)
        elif type(message) is protocol.SetupDone and self._setup_reply is not None:
            self._setup_reply.succeed(message)
        else:
            raise protocol.ProtocolError(f"node {self.id}: unexpected zygote message {type(message).__name__}")

    async def _wait_process(self, container: LocalContainer, process: anyio.abc.Process) -> None:
        with anyio.CancelScope(shield=True):
            returncode = await process.wait()
        container.set_exit(returncode)


class _ForkReply:
    """The zygote's answer to one request (``Forked`` or ``SetupDone``), or why none will come."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: protocol.Forked | protocol.SetupDone | None = None
        self.error: str | None = None

    def succeed(self, value: protocol.Forked | protocol.SetupDone) -> None:
        self.value = value
        self.event.set()

    def fail(self, error: str) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


async def _stop_process(process: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.terminate()
            except ProcessLookupError:
                pass
            with anyio.move_on_after(STOP_GRACE):
                await process.wait()
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            await process.wait()
