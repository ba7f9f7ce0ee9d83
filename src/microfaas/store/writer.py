"""The platform's end of the SQLite store's writer process (``writer_child.py``).

``WriterProcess`` starts the process, sends it each group of writes as a frame, and
reads its answers on the event loop (a reader callback, no task): each answer names the
groups one transaction held and whether it failed, and goes to ``on_committed``. If the
process ends without being asked to (killed, or it crashed), the groups it had not
answered go to ``on_lost``; the next group starts a new process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Final

import anyio

from . import writer_child
from .transactions import Statement

__all__ = ["WriterProcess"]

CHILD: Final = os.path.abspath(writer_child.__file__)
# Seconds the writer gets to exit once its input has ended (it finishes the transaction it is in).
EXIT_GRACE: Final = 10.0
_BUFFER: Final = 4 << 20


class WriterProcess:
    """One writer process for the store file ``path``.

    :param on_committed: ``(seqs, failure)`` for each transaction: the groups it held, and
        ``None`` or ``writer_child.failure``'s description of what went wrong.
    :param on_lost: ``(seqs, why)``: the process ended with these groups unanswered.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str,
        max_page_count: int | None,
        lock_fd: int | None,
        on_committed: Callable[[list[int], Any], None],
        on_lost: Callable[[list[int], str], None],
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.max_page_count = max_page_count
        self.lock_fd = lock_fd
        self.on_committed = on_committed
        self.on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._unsent = bytearray()
        self._received = bytearray()
        self._waiting: list[int] = []  # groups sent and not answered, in order
        self._ended: asyncio.Future[None] | None = None  # once its answers have ended
        self._drained: asyncio.Future[None] | None = None  # once all is sent (while closing)

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        """Start the process. Call it on the loop's thread: Linux kills the process when the
        thread that started it ends (``PR_SET_PDEATHSIG``), and the loop's outlives the store."""
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-I", "-S", CHILD, self.path, "--fd", str(theirs.fileno()), "--synchronous", self.synchronous]
        if self.max_page_count is not None:
            command += ["--max-page-count", str(self.max_page_count)]
        # The store's lock goes with it: a new platform cannot open the file while this process may still write it.
        fds = [theirs.fileno(), *([self.lock_fd] if self.lock_fd is not None else [])]
        try:
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
            self._process = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ended = loop.create_future()
        loop.add_reader(ours.fileno(), self._readable)

    def send(self, seq: int, statements: list[Statement]) -> None:
        """Send group ``seq``; its answer comes to ``on_committed``."""
        self._waiting.append(seq)
        had_unsent = bool(self._unsent)
        self._unsent += writer_child.frame((seq, statements))
        if not had_unsent:
            self._write()

    def _write(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        try:
            sent = sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the reader sees the process go
        del self._unsent[:sent]
        if self._unsent:
            loop.add_writer(sock.fileno(), self._writable)

    def _writable(self) -> None:
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        loop.remove_writer(sock.fileno())
        self._write()
        if not self._unsent and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(writer_child.READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._received += data
            for seqs, failure in writer_child.frames(self._received):
                del self._waiting[: len(seqs)]
                self.on_committed(seqs, failure)
            return
        self._gone()

    def _gone(self) -> None:
        """Its answers ended: as asked (``close``), or the process died."""
        sock, loop, process = self._sock, self._loop, self._process
        assert sock is not None and loop is not None and process is not None
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        waiting, self._waiting = self._waiting, []
        self._unsent.clear()
        self._received.clear()  # a part of an answer it died while sending
        code = process.poll()
        if self._drained is None:  # not closing: it died
            sock.close()
            self._sock = self._process = None
            if code is None:
                process.kill()
                code = process.wait()
        if waiting:
            self.on_lost(waiting, f"the store's writer process (pid {process.pid}) ended{'' if code is None else f' with code {code}'}")

    async def close(self) -> None:
        """Let it commit what it was sent, then end it."""
        sock, loop, process = self._sock, self._loop, self._process
        if sock is None or loop is None or process is None:
            return
        with anyio.CancelScope(shield=True):
            self._drained = loop.create_future()
            if not self._unsent:
                self._drained.set_result(None)
            await self._drained
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            assert self._ended is not None
            await self._ended
            sock.close()
            try:
                await anyio.to_thread.run_sync(process.wait, EXIT_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                await anyio.to_thread.run_sync(process.wait)
            self._sock = self._process = None
            self._drained = self._ended = None
