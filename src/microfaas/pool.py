"""LocalNodes: nodes carved out of this machine, with containers as worker subprocesses.

A ``LocalNode`` creates and destroys containers. With ``start_method="fork"`` it
keeps a zygote (``zygote.py``) and each cold start is one fork of it; with
``"spawn"`` each container is a fresh interpreter running ``microfaas.worker.main``.
Either way a container is a process with a socket of its own to the platform,
wrapped here as a ``LocalContainer`` that multiplexes calls over it.

This is the one place where pipe and socket errors become microfaas facts: a
broken or closed channel is a dead container (``Died``), never an ``EOFError``
or ``BrokenPipeError`` escaping to the user.
"""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc
import attrs

from . import protocol
from .resources import ResourceManager

__all__ = [
    "BadPayload",
    "Died",
    "LocalContainer",
    "LocalNode",
    "LocalNodes",
    "NodeSetup",
    "Outcome",
    "Raised",
    "Returned",
    "StartFailed",
]

# Seconds a container or zygote gets between SIGTERM and SIGKILL.
STOP_GRACE: Final = 1.0
# How long to wait for a process's exit status once its channel closed.
EXIT_STATUS_WAIT: Final = 2.0
_READ_SIZE: Final = 1 << 18


@attrs.frozen(slots=True)
class Returned:
    blob: bytes | bytearray


@attrs.frozen(slots=True)
class Raised:
    remote_type: str
    remote_message: str
    remote_traceback: str


@attrs.frozen(slots=True)
class BadPayload:
    message: str


@attrs.frozen(slots=True)
class Died:
    """The container's process ended; ``returncode`` is negative for a signal."""

    returncode: int | None
    kill_reason: str | None


Outcome = Returned | Raised | BadPayload | Died


class StartFailed(Exception):
    """A container did not come up (internal; the platform turns it into ColdStartFailed)."""

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


@attrs.frozen(kw_only=True)
class NodeSetup:
    """What every container on a node needs from the platform's process."""

    sys_path: tuple[str, ...]
    cwd: str
    preload: tuple[str, ...] = ()


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (status unknown)"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _machine_memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LocalNodes: {attribute.name} must be a positive int, got {value!r}")


def _positive_or_none(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"LocalNodes: {attribute.name} must be a positive int or None, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"LocalNodes: {attribute.name} must be a number >= 0, got {value!r}")


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
    """

    max_nodes: int = attrs.field(default=1, validator=_positive)
    node_memory_mb: int | None = attrs.field(default=None, validator=_positive_or_none)
    node_cpus: int | None = attrs.field(default=None, validator=_positive_or_none)
    acquire_delay: float = attrs.field(default=0.0, validator=_non_negative)
    release_after: float = attrs.field(default=30.0, validator=_non_negative)
    start_method: str = attrs.field(default="fork", validator=_start_method)
    min_nodes: int = attrs.field(default=1)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int) or not 0 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"LocalNodes: min_nodes must be an int between 0 and max_nodes={self.max_nodes}, got {self.min_nodes!r}")

    def resource_manager(self) -> ResourceManager:
        return ResourceManager(
            node_memory_mb=self.node_memory_mb or _machine_memory_mb(),
            max_nodes=self.max_nodes,
            min_nodes=self.min_nodes,
            release_after=self.release_after,
        )

    async def acquire(self, node_id: str, setup: NodeSetup, task_group: anyio.abc.TaskGroup) -> LocalNode:
        """Bring up node ``node_id``; its background tasks run in ``task_group``."""
        if self.acquire_delay:
            await anyio.sleep(self.acquire_delay)
        node = LocalNode(node_id, setup, self.start_method, task_group)
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        return node


class LocalContainer:
    """The platform's handle on one container process."""

    def __init__(self, container_id: str, node_id: str, sock: socket.socket, pid: int | None) -> None:
        self.id = container_id
        self.node_id = node_id
        self.pid = pid
        self.start_s = 0.0
        self.load_s = 0.0
        self.init_s = 0.0
        self.returncode: int | None = None
        self.exited = anyio.Event()
        self.kill_reason: str | None = None
        self.memory_at_kill_mb: float | None = None
        self.on_exit: Callable[[LocalContainer], None] | None = None
        self.on_reply: Callable[[LocalContainer], None] | None = None
        self._sock = sock
        self._fd = sock.fileno()
        self._decoder = protocol.FrameDecoder()
        self._pending: dict[str, _Pending] = {}
        self._writing = False
        self._write_done: anyio.Event | None = None
        self._closed = False
        self._first_frame: tuple[tuple[object, ...], bytes | bytearray] | None = None
        self._first_event = anyio.Event()
        self._eof = anyio.Event()
        self._callback_error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    # -- calls ----------------------------------------------------------------------------

    async def call(self, invocation_id: str, attempt: int, deadline: float | None, cold_start: bool, args_blob: bytes) -> Outcome:
        """Run one invocation; cancel the caller to abandon it (the container keeps running)."""
        pending = _Pending()
        self._pending[invocation_id] = pending
        if self._closed:
            pending.resolve(self._death())
        else:
            try:
                await self._send(protocol.encode(("call", invocation_id, attempt, deadline, cold_start), args_blob))
            except OSError:
                pass  # the reader sees the channel close and resolves every pending call
        await pending.event.wait()
        assert pending.outcome is not None
        return pending.outcome

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- process control ------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        if self.pid is not None and not self.exited.is_set():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self, reason: str) -> None:
        """SIGKILL now; pending calls end as ``Died(kill_reason=reason)``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        """Ask the container to stop: SIGTERM, and close its channel."""
        if self.kill_reason is None:
            self.kill_reason = "stopped"
        self.signal(signal.SIGTERM)

    def memory_used_mb(self) -> float | None:
        """The container's private memory (USS: pages no other process shares), in MB.

        A forked container shares the zygote's pages copy-on-write; only what it
        writes or allocates counts against its limit.
        """
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/smaps_rollup", "rb") as f:
                private_kb = sum(int(line.split()[1]) for line in f if line.startswith(b"Private_"))
        except (OSError, IndexError, ValueError):
            return None
        return private_kb / 1024

    def set_exit(self, returncode: int | None) -> None:
        if not self.exited.is_set():
            self.returncode = returncode
            self.exited.set()

    # -- the channel ------------------------------------------------------------------------
    #
    # Replies are read by a callback the event loop runs when the socket is readable
    # (registered once, for the container's life): it resolves the pending call and
    # reports the finished call at once, so a reply costs one wake-up, the caller's.

    def _on_readable(self) -> None:
        decoder = self._decoder
        try:
            if (view := decoder.writable()) is not None:
                with view:
                    received = self._sock.recv_into(view)
                decoder.wrote(received)
            else:
                data = self._sock.recv(_READ_SIZE)
                received = len(data)
                decoder.feed(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            received = 0
        if not received:
            self._channel_lost()
            return
        try:
            while (frame := decoder.next_frame()) is not None:
                self._on_frame(*frame)
        except protocol.ProtocolError:
            self.kill("protocol_error")
            self._channel_lost()
        except BaseException as exc:  # noqa: BLE001 - a bug in a callback: surface it from serve_replies
            self._callback_error = exc
            self.kill("internal_error")
            self._channel_lost()

    def _on_frame(self, meta: tuple[object, ...], blob: bytes | bytearray) -> None:
        if self._first_frame is None:
            self._first_frame = (meta, blob)
            self._first_event.set()
            return
        kind = meta[0]
        pending = self._pending.pop(str(meta[1]), None)
        if pending is None:
            return
        if kind == "result":
            pending.resolve(Returned(blob))
        elif kind == "error":
            pending.resolve(Raised(str(meta[2]), str(meta[3]), str(meta[4])))
        elif kind == "bad_payload":
            pending.resolve(BadPayload(str(meta[2])))
        else:
            raise protocol.ProtocolError(f"container {self.id} sent unexpected {kind!r}")
        if self.on_reply is not None:
            self.on_reply(self)

    def _channel_lost(self) -> None:
        if not self._eof.is_set():
            self._loop.remove_reader(self._fd)
            self._eof.set()
            self._first_event.set()

    async def handshake(self) -> None:
        """Wait for the container's first frame: ready, or why it could not start."""
        await self._first_event.wait()
        frame = self._first_frame
        if frame is None:
            if self.kill_reason == "protocol_error":
                raise StartFailed("the container spoke garbage before it was ready", stage="process")
            await self._await_exit()
            raise StartFailed(f"the container process {describe_exit(self.returncode)} before it was ready", stage="process")
        meta, _ = frame
        if meta[0] == "ready":
            _, self.pid, self.load_s, self.init_s = meta  # type: ignore[assignment]
            return
        if meta[0] == "start_failed":
            _, stage, remote_type, remote_message, remote_traceback = meta
            raise StartFailed(
                f"{stage} raised {remote_type}: {remote_message}",
                stage=str(stage),
                remote_type=str(remote_type),
                remote_message=str(remote_message),
                remote_traceback=str(remote_traceback),
            )
        raise StartFailed(f"the container sent {meta[0]!r} before it was ready", stage="process")

    async def serve_replies(self) -> None:
        """Wait until the container's channel closes, then fail what is pending and report the exit."""
        try:
            await self._eof.wait()
        finally:
            with anyio.CancelScope(shield=True):
                self._close_channel()
                await self._await_exit()
                death = self._death()
                for pending in self._pending.values():
                    pending.resolve(death)
                self._pending.clear()
                if self.on_exit is not None:
                    self.on_exit(self)
        if self._callback_error is not None:
            raise self._callback_error

    def _death(self) -> Died:
        return Died(self.returncode, self.kill_reason)

    async def _await_exit(self) -> None:
        with anyio.move_on_after(EXIT_STATUS_WAIT):
            await self.exited.wait()
        if not self.exited.is_set():
            self.signal(signal.SIGKILL)
            with anyio.move_on_after(EXIT_STATUS_WAIT):
                await self.exited.wait()

    def _close_channel(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel_lost()
            _close(self._sock)

    async def _send(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        while self._writing:
            if self._write_done is None:
                self._write_done = anyio.Event()
            await self._write_done.wait()
        self._writing = True
        try:
            await _send_all(self._sock, buffers)
        finally:
            self._writing = False
            if self._write_done is not None:
                self._write_done.set()
                self._write_done = None


class _Pending:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.outcome: Outcome | None = None

    def resolve(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.event.set()


class LocalNode:
    """One node on this machine: its zygote (fork) or nothing (spawn), and its containers."""

    def __init__(self, node_id: str, setup: NodeSetup, start_method: str, task_group: anyio.abc.TaskGroup) -> None:
        self.id = node_id
        self.setup = setup
        self.start_method = start_method
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
            self._zygote = await self._python("from microfaas.zygote import main; main()", child.fileno())
        finally:
            child.close()
        self.zygote_pid = self._zygote.pid
        parent.setblocking(False)
        self._ctrl = parent
        self._setup_reply = _ForkReply()
        self._tg.start_soon(self._serve_zygote)
        await self._send_ctrl(protocol.encode(("setup", list(self.setup.sys_path), self.setup.cwd, list(self.setup.preload))))
        await self._setup_reply.event.wait()
        if self._setup_reply.error is not None:
            await self.stop()
            raise StartFailed(f"node {self.id}: the zygote {self._setup_reply.error}", stage="node")
        self.preload_failures = dict(self._setup_reply.value or {})  # type: ignore[arg-type]

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
                process = await self._python("from microfaas.worker import main; main()", child.fileno(), "--container-id", container_id)
                pid = process.pid
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        container = LocalContainer(container_id, self.id, parent, pid)
        self._containers[container_id] = container
        self._by_pid[pid] = container
        if pid in self._early_exits:
            container.set_exit(self._early_exits.pop(pid))
        if process is not None:
            self._tg.start_soon(self._wait_process, container, process)
        try:
            if process is not None:
                await container._send(protocol.encode(("load", list(self.setup.sys_path), self.setup.cwd), bundle_blob))
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
                _close(self._ctrl)
            if self._zygote is not None:
                await _stop_process(self._zygote)

    async def _fork(self, container_id: str, bundle_blob: bytes, child: socket.socket) -> int:
        reply = self._forks[container_id] = _ForkReply()
        try:
            await self._send_ctrl(protocol.encode(("fork", container_id), bundle_blob), fd=child.fileno())
            await reply.event.wait()
        finally:
            self._forks.pop(container_id, None)
        if reply.error is not None:
            raise StartFailed(f"node {self.id}: {reply.error}", stage="process")
        return int(reply.value)  # type: ignore[arg-type]

    async def _send_ctrl(self, buffers: list[bytes | bytearray | memoryview], fd: int | None = None) -> None:
        assert self._ctrl is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        async with self._ctrl_lock:
            await _send_all(self._ctrl, buffers, ancillary)

    async def _serve_zygote(self) -> None:
        assert self._ctrl is not None
        ctrl = self._ctrl
        reason = "exited"
        try:
            while True:
                try:
                    data = ctrl.recv(_READ_SIZE)
                except BlockingIOError:
                    if not await _readable(ctrl):
                        break
                    continue
                except OSError:
                    break
                if not data:
                    break
                self._ctrl_decoder.feed(data)
                while (frame := self._ctrl_decoder.next_frame()) is not None:
                    self._on_zygote_frame(frame[0])
        except protocol.ProtocolError as exc:
            reason = f"spoke garbage ({exc})"
        finally:
            # The zygote is gone: its children were killed with it.
            message = f"zygote {reason}"
            if self._setup_reply is not None:
                self._setup_reply.fail(message)
            for reply in self._forks.values():
                reply.fail(message)
            for container in list(self._containers.values()):
                container.set_exit(self._early_exits.pop(container.pid or -1, None))

    def _on_zygote_frame(self, meta: tuple[object, ...]) -> None:
        kind = meta[0]
        if kind == "forked":
            reply = self._forks.get(str(meta[1]))
            if reply is not None:
                reply.succeed(meta[2])
        elif kind == "exited":
            pid, returncode = int(meta[1]), int(meta[2])  # type: ignore[call-overload]
            container = self._by_pid.get(pid)
            if container is None:
                self._early_exits[pid] = returncode
            else:
                container.set_exit(returncode)
        elif kind == "setup_done" and self._setup_reply is not None:
            self._setup_reply.succeed(meta[1])
        else:
            raise protocol.ProtocolError(f"unexpected zygote message {kind!r}")

    async def _wait_process(self, container: LocalContainer, process: anyio.abc.Process) -> None:
        with anyio.CancelScope(shield=True):
            returncode = await process.wait()
        container.set_exit(returncode)


class _ForkReply:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: object = None
        self.error: str | None = None

    def succeed(self, value: object) -> None:
        self.value = value
        self.event.set()

    def fail(self, error: str) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


async def _readable(sock: socket.socket) -> bool:
    """Wait until ``sock`` is readable; False when it was closed meanwhile."""
    try:
        await anyio.wait_readable(sock)
    except anyio.ClosedResourceError:
        return False
    return True


def _close(sock: socket.socket) -> None:
    """Close a socket that a task may be waiting on: wake that task first (its fd may be reused)."""
    if sock.fileno() != -1:
        anyio.notify_closing(sock)
    sock.close()


async def _send_all(
    sock: socket.socket,
    buffers: list[bytes | bytearray | memoryview],
    ancillary: list[tuple[int, int, array.array[int]]] | None = None,
) -> None:
    """Write every buffer to a non-blocking socket; ``ancillary`` rides on the first byte."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        try:
            sent = sock.sendmsg(views, ancillary or [])
        except BlockingIOError:
            try:
                await anyio.wait_writable(sock)
            except anyio.ClosedResourceError:
                raise BrokenPipeError(f"socket {sock!r} was closed while writing") from None
            continue
        ancillary = None
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


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
