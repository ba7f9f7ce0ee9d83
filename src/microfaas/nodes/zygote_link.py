"""The platform's end of one zygote: its process, its control socket, and the answers awaited from it.

A ``LocalNode`` (``pool.py``) holds one ``ZygoteLink`` at a time and forks its
containers through it; the zygote itself is ``nodes/zygote.py``. ``serve`` reads
the zygote's messages for the zygote's life: a ``Forked`` or ``SetupDone`` answers
the request waiting for it, a ``ChildExited`` goes to ``on_child_exited``. When the
zygote's channel ends (it died, or spoke garbage), every waiting request fails and
``on_gone`` is told why; when ``serve`` is cancelled (the platform is stopping),
neither happens, and ``stop`` ends the zygote, which gives its children their grace.
"""

from __future__ import annotations

import array
import collections
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.abc

from .. import protocol
from .container import close_socket, readable_or_closed, send_all
from .contract import NodeSetup, StartFailed

__all__ = ["ZYGOTE_STOP_MARGIN", "ZygoteLink", "start_python", "stop_process"]

# Seconds a zygote gets, beyond its children's grace, to exit once asked to stop.
ZYGOTE_STOP_MARGIN: Final = 1.0


async def start_python(setup: NodeSetup, code: str, fd: int, *args: str) -> anyio.abc.Process:
    """A fresh interpreter running ``code`` with socket ``fd``; its stdout and stderr are ours."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in setup.sys_path if p)
    return await anyio.open_process(
        [sys.executable, "-c", code, "--fd", str(fd), *args],
        pass_fds=[fd],
        stdin=subprocess.DEVNULL,
        stdout=None,
        stderr=None,
        cwd=setup.cwd,
        env=env,
    )


async def stop_process(process: anyio.abc.Process, grace: float) -> None:
    """SIGTERM ``process``, give it ``grace`` seconds, then SIGKILL it; reap it."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.terminate()
            except ProcessLookupError:
                pass
            with anyio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
            await process.wait()


class _Reply:
    """The zygote's answer to one request, or why none will come."""

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


class ZygoteLink:
    """One zygote process, as its node drives it."""

    def __init__(
        self,
        node_id: str,
        process: anyio.abc.Process,
        ctrl: socket.socket,
        *,
        on_child_exited: Callable[[int, int], None],
        on_gone: Callable[[ZygoteLink, str], None],
        stop_grace: float,
    ) -> None:
        self.node_id = node_id
        self.process = process
        self.pid = process.pid
        self.stop_grace = stop_grace
        self.preloaded: tuple[str, ...] = ()
        self.gone: str | None = None  # why its channel ended
        self._ctrl = ctrl
        self._decoder = protocol.FrameDecoder()
        self._forks: dict[str, _Reply] = {}
        self._setups: collections.deque[_Reply] = collections.deque()
        self._send_lock = anyio.Lock()
        self._setup_lock = anyio.Lock()
        self._on_child_exited = on_child_exited
        self._on_gone = on_gone

    @classmethod
    async def start(
        cls,
        node_id: str,
        setup: NodeSetup,
        *,
        on_child_exited: Callable[[int, int], None],
        on_gone: Callable[[ZygoteLink, str], None],
        stop_grace: float,
    ) -> ZygoteLink:
        """Start a zygote; ``serve`` it, then ``setup`` it."""
        parent, child = socket.socketpair()
        try:
            code = "from microfaas.nodes.zygote import main; main()"
            process = await start_python(setup, code, child.fileno(), "--stop-grace", str(stop_grace))
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        return cls(node_id, process, parent, on_child_exited=on_child_exited, on_gone=on_gone, stop_grace=stop_grace)

    # -- requests ----------------------------------------------------------------------------

    async def setup(self, setup: NodeSetup, modules: Sequence[str]) -> protocol.SetupDone:
        """Give the zygote the platform's path and directory and preload ``modules``.

        :raises StartFailed: the zygote is gone.
        """
        request = protocol.SetupRequest(sys_path=setup.sys_path, cwd=setup.cwd, modules=tuple(modules))
        return await self._ask(request)

    async def preload(self, modules: Sequence[str], memory_mb: float | None) -> protocol.SetupDone:
        """Preload ``modules`` too. :raises StartFailed: the zygote is gone."""
        return await self._ask(protocol.PreloadRequest(modules=tuple(modules), memory_mb=memory_mb))

    async def _ask(self, request: protocol.SetupRequest | protocol.PreloadRequest) -> protocol.SetupDone:
        async with self._setup_lock:
            reply = _Reply()
            self._setups.append(reply)
            if self.gone is None:
                await self._send(protocol.encode(request))
            else:
                reply.fail(f"the zygote {self.gone}")
            await reply.event.wait()
        if not isinstance(reply.value, protocol.SetupDone):
            raise StartFailed(f"node {self.node_id}: {reply.error}", stage="node")
        self.preloaded = reply.value.preloaded
        return reply.value

    async def fork(self, request: protocol.ForkRequest | protocol.SpareRequest, child: socket.socket) -> int:
        """Fork a container (or a spare) on ``child``; its pid. :raises StartFailed: the zygote is gone."""
        key = request.container_id if isinstance(request, protocol.ForkRequest) else request.spare_id
        reply = self._forks[key] = _Reply()
        try:
            if self.gone is None:
                await self._send(protocol.encode(request), fd=child.fileno())
            else:
                reply.fail(f"the zygote {self.gone}")
            await reply.event.wait()
        finally:
            self._forks.pop(key, None)
        if not isinstance(reply.value, protocol.Forked):
            raise StartFailed(f"node {self.node_id}: {reply.error}", stage="process")
        return reply.value.pid

    async def _send(self, buffers: list[bytes | bytearray | memoryview], fd: int | None = None) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        async with self._send_lock:
            try:
                await send_all(self._ctrl, buffers, ancillary)
            except OSError:
                pass  # the zygote is gone: serve() reads the end of its channel and fails the request

    # -- its messages ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read the zygote's messages until its channel ends (then fail what waits and call ``on_gone``)."""
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
                self._decoder.feed(data)
                while (message := self._decoder.next_message()) is not None:
                    self._on_message(message)
        except protocol.ProtocolError as exc:
            reason = f"spoke garbage ({exc})"
        self.gone = reason
        for reply in [*self._setups, *self._forks.values()]:
            reply.fail(f"the zygote {reason}")
        self._on_gone(self, reason)

    def _on_message(self, message: protocol.Message) -> None:
        if type(message) is protocol.Forked:
            reply = self._forks.get(message.container_id)
            if reply is not None:
                reply.succeed(message)
        elif type(message) is protocol.ChildExited:
            self._on_child_exited(message.pid, message.returncode)
        elif type(message) is protocol.SetupDone and self._setups:
            self._setups.popleft().succeed(message)
        else:
            raise protocol.ProtocolError(f"node {self.node_id}: unexpected zygote message {type(message).__name__}")

    async def stop(self) -> None:
        """End the zygote: it SIGTERMs its children, gives them their grace, SIGKILLs the rest, and exits."""
        with anyio.CancelScope(shield=True):
            await stop_process(self.process, self.stop_grace + ZYGOTE_STOP_MARGIN)
            close_socket(self._ctrl)
