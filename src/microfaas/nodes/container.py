"""The platform's handle on one container process: calls multiplexed over its socket.

A ``LocalContainer`` owns the platform's end of a container's socketpair. Calls go
out as frames (``protocol.py``); replies are read by a callback the event loop runs
whenever the socket is readable, which resolves the waiting call at once. This is
the one place where pipe and socket errors become microfaas facts: a closed
channel is a dead container (``Died``), never an ``EOFError`` or
``BrokenPipeError`` escaping to the user.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import anyio

from .. import protocol
from ..protocol import BadPayloadReply, CallRequest, ErrorReply, Imports, Ready, ResultReply, StartFailure
from .contract import BadPayload, Died, NotStarted, Outcome, Raised, Returned, StartFailed, describe_exit, outcome_of
from .memory import private_mb

__all__ = [
    "EXIT_STATUS_WAIT",
    "BadPayload",
    "ContainerHandle",
    "Died",
    "LocalContainer",
    "NotStarted",
    "Outcome",
    "Raised",
    "Returned",
    "StartFailed",
    "close_socket",
    "describe_exit",
    "readable_or_closed",
    "send_all",
]

# How long to wait for a process's exit status once its channel closed.
EXIT_STATUS_WAIT: Final = 2.0
# What a container may send once it is ready.
_REPLY_KINDS: Final = frozenset({"result", "error", "bad_payload"})
# sendmsg takes at most this many buffers at once (IOV_MAX on Linux).
_MAX_IOV: Final = 1024


class ContainerHandle:
    """What the platform reads and sets on every container handle, whatever runs it.

    Each kind adds the calls themselves: ``start_call`` and the rest of ``nodes.Container``.
    """

    def __init__(self, container_id: str, node_id: str, pid: int | None) -> None:
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
        self.timed_out: str | None = None  # the invocation whose timeout killed it
        self.abandoned: set[str] = set()  # invocations whose callers stopped waiting
        self.on_exit: Callable[[Any], None] | None = None
        self.on_reply: Callable[[Any], None] | None = None  # a call was answered
        self.on_call_started: Callable[[str], None] | None = None  # a queued call got its slot
        self.last_call_s: float | None = None  # how long the call just answered ran, when known
        self.preloaded: tuple[str, ...] = ()  # the modules its zygote had preloaded when it forked it
        self.on_imports: Callable[[Any, Any], None] | None = None  # what its function imported (a protocol.Imports)


class LocalContainer(ContainerHandle):
    """The platform's handle on one container process."""

    def __init__(self, container_id: str, node_id: str, sock: socket.socket, pid: int | None, *, reply_poll_s: float = 0.0) -> None:
        super().__init__(container_id, node_id, pid)
        self.reply_poll_s = reply_poll_s
        self._sock = sock
        self._fd = sock.fileno()
        self._decoder = protocol.FrameDecoder()
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._started_at: dict[str, float] = {}  # calls running, by when they started
        self._queued: collections.deque[str] = collections.deque()  # calls waiting in the container, in order
        self._unsent: collections.deque[memoryview] = collections.deque()  # what the socket did not take yet
        self._draining = False  # the loop sends ``_unsent`` when the socket is writable
        self._in_cork = False  # in ``_local.corked``: ``_unsent`` goes out when replies are handled
        self._closed = False
        self._first_message: protocol.Message | None = None
        self._first_event = anyio.Event()
        self._eof = anyio.Event()
        self._callback_error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    # -- calls ----------------------------------------------------------------------------

    def start_call(self, outcome: asyncio.Future[Any], request: CallRequest, *, queued: bool = False) -> bool:
        """Send one invocation now; ``outcome`` gets its ``Outcome`` when the container answers or dies.

        A queued call waits in the container's socket: the container reads its next call
        only when it has finished the last one (pipelining is for concurrency 1).
        """
        if self._closed:
            outcome.set_result(NotStarted() if queued else self._death())
            return not queued
        invocation_id = request.invocation_id
        self._pending[invocation_id] = outcome
        _local.calls_pending += 1
        self.send(protocol.encode(request))
        if queued:
            self._queued.append(invocation_id)
            return False
        self._started_at[invocation_id] = time.perf_counter()
        if _local.calls_pending == 1 and self._answers_quickly():
            self._loop.call_soon(self._poll_for_reply)
        return True

    def _answers_quickly(self) -> bool:
        """Whether its last call came back within twice the reply-poll window (so polling pays)."""
        return self.reply_poll_s > 0 and self.last_call_s is not None and self.last_call_s < 2 * self.reply_poll_s

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
        return None if self.pid is None else private_mb(self.pid)

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
                data = self._sock.recv(protocol.READ_SIZE)
                received = len(data)
                decoder.feed(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            received = 0
        if not received:
            self._channel_lost()
            return
        self._handle_frames()

    def _poll_for_reply(self) -> None:
        """Poll for the reply of the call just sent, for up to ``reply_poll_s``.

        Scheduled after a short call that is the only one in flight: its reply comes within
        microseconds, and polling for it spares the event loop a sleep and a wake-up, which
        cost tens of microseconds on a virtual machine. If it does not come in time, the
        loop's reader gets it as usual.
        """
        if self._closed or _local.calls_pending != 1 or not self._pending or self._decoder.writable() is not None:
            return  # answered already, or no longer alone
        _local.reply_polls += 1
        now = time.perf_counter()
        deadline = now + self.reply_poll_s
        while True:
            try:
                data = self._sock.recv(protocol.READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if now > deadline:
                    return
                os.sched_yield()  # to the container, when it shares this CPU
                yielded, now = now, time.perf_counter()
                if now - yielded > protocol.POLL_CONTENDED_S and deadline:
                    # Another process wanted this CPU (the container itself, perhaps): one
                    # more look, then let the loop sleep.
                    _local.polls_contended += 1
                    deadline = 0.0
                continue
            except OSError:
                return  # the reader sees the channel fail
            if data:
                self._decoder.feed(data)
                self._handle_frames()
            return  # at the end of the stream, the reader sees it too

    def _handle_frames(self) -> None:
        """Act on every whole frame received."""
        decoder = self._decoder
        corked: list[LocalContainer] = []
        _local.corked = corked
        try:
            while (message := decoder.next_message()) is not None:
                self._on_message(message)
        except protocol.ProtocolError:
            self.kill("protocol_error")
            self._channel_lost()
        except BaseException as exc:  # noqa: BLE001 - a bug in a callback: surface it from serve_replies
            self._callback_error = exc
            self.kill("internal_error")
            self._channel_lost()
        finally:
            _local.corked = None
            if corked:
                _uncork(corked)

    def _on_message(self, message: protocol.Message) -> None:
        if self._first_message is None:
            self._first_message = message
            self._first_event.set()
            return
        if type(message) is ResultReply:  # the usual reply, first
            invocation_id = message.invocation_id
            result: Outcome = Returned(message.value)
        elif type(message) is ErrorReply or type(message) is BadPayloadReply:
            invocation_id = message.invocation_id
            result = outcome_of(message)
        elif type(message) is Imports:
            if self.on_imports is not None:
                self.on_imports(self, message)
            return
        else:
            raise protocol.ProtocolError(f"container {self.id} sent {type(message).__name__} in answer to a call")
        outcome = self._pending.pop(invocation_id, None)
        if outcome is None:
            return
        _local.calls_pending -= 1
        now = time.perf_counter()
        started = self._started_at.pop(invocation_id, None)
        self.last_call_s = None if started is None else now - started
        try:
            if self._queued:
                following = self._queued.popleft()
                self._started_at[following] = now
                if self.on_call_started is not None:
                    self.on_call_started(following)
            if self.on_reply is not None:
                self.on_reply(self)
        finally:
            # Last: the container's slot is given back first, so that what the outcome sets off
            # (an eager future's hook, the caller's next call) finds the container free.
            if not outcome.done():  # done: the caller gave up waiting
                outcome.set_result(result)

    def _channel_lost(self) -> None:
        if not self._eof.is_set():
            self._loop.remove_reader(self._fd)
            self._eof.set()
            self._first_event.set()

    async def handshake(self) -> None:
        """Wait for the container's first frame: ready, or why it could not start."""
        await self._first_event.wait()
        message = self._first_message
        if message is None:
            if self.kill_reason == "protocol_error":
                raise StartFailed("the container spoke garbage before it was ready", stage="process")
            await self._await_exit()
            raise StartFailed(f"the container process {describe_exit(self.returncode)} before it was ready", stage="process")
        if type(message) is Ready:
            self.pid, self.load_s, self.init_s = message.pid, message.load_s, message.init_s
            return
        if type(message) is StartFailure:
            raise StartFailed.from_reply(message)
        raise StartFailed(f"the container sent {type(message).__name__} before it was ready", stage="process")

    async def serve_replies(self) -> None:
        """Wait until the container's channel closes, then fail what is pending and report the exit."""
        try:
            await self._eof.wait()
        finally:
            with anyio.CancelScope(shield=True):
                self._close_channel()
                await self._await_exit()
                death = self._death()
                queued = set(self._queued)
                for invocation_id, outcome in self._pending.items():
                    if not outcome.done():
                        outcome.set_result(NotStarted() if invocation_id in queued else death)
                _local.calls_pending -= len(self._pending)
                self._pending.clear()
                self._queued.clear()
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
            self._stop_writing()
            close_socket(self._sock)

    def send(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """Write a frame without waiting: what the socket does not take now is sent when it drains.

        Frames sent while replies are being handled (``_local.corked``) go out together, one
        ``sendmsg`` per container, when that is done. A channel that fails is left to the
        reader, which sees it close and fails the pending calls.
        """
        if not (self._unsent or self._in_cork or self._draining):
            corked = _local.corked
            if corked is None:
                # The usual case: nothing is held back, and the socket takes a small frame whole.
                try:
                    sent = self._sock.sendmsg(buffers)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    return
                if sent == sum(map(len, buffers)):
                    return
                self._unsent.extend(protocol.byte_views(buffers))
                protocol.drop_sent(self._unsent, sent)
                self._draining = True
                self._loop.add_writer(self._fd, self._on_writable)
                return
            self._in_cork = True
            corked.append(self)
        self._unsent.extend(protocol.byte_views(buffers))

    def _flush(self) -> None:
        """Send what the socket takes now; have the loop send the rest when it drains."""
        if self._write_some() and self._unsent:
            self._draining = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        if self._write_some() and not self._unsent:
            self._draining = False
            self._loop.remove_writer(self._fd)

    def _write_some(self) -> bool:
        """One ``sendmsg`` of what is unsent; False when the channel failed."""
        unsent = self._unsent
        try:
            sent = self._sock.sendmsg(list(itertools.islice(unsent, _MAX_IOV)))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._stop_writing()
            return False
        protocol.drop_sent(unsent, sent)
        return True

    def _stop_writing(self) -> None:
        self._unsent.clear()
        if self._draining:
            self._draining = False
            self._loop.remove_writer(self._fd)


class _LoopLocal(threading.local):
    """What the containers of one thread's event loop share."""

    # The containers with frames held back while replies are handled (None: frames go out at once).
    corked: list[LocalContainer] | None = None
    # Calls sent to these containers and not answered yet.
    calls_pending: int = 0
    # How many times the platform began to poll for a reply, and gave up polling because
    # another process wanted the CPU (read by tests).
    reply_polls: int = 0
    polls_contended: int = 0


_local = _LoopLocal()


def _uncork(containers: list[LocalContainer]) -> None:
    for container in containers:
        container._in_cork = False
        if not container._draining and container._unsent:
            container._flush()


async def readable_or_closed(sock: socket.socket) -> bool:
    """Wait until ``sock`` is readable; False when it was closed meanwhile."""
    try:
        await anyio.wait_readable(sock)
    except anyio.ClosedResourceError:
        return False
    return True


def close_socket(sock: socket.socket) -> None:
    """Close a socket that a task may be waiting on: wake that task first (its fd may be reused)."""
    if sock.fileno() != -1:
        anyio.notify_closing(sock)
    sock.close()


async def send_all(
    sock: socket.socket,
    buffers: list[bytes | bytearray | memoryview],
    ancillary: list[tuple[int, int, array.array[int]]] | None = None,
) -> None:
    """Write every buffer to a non-blocking socket; ``ancillary`` rides on the first byte."""
    views = protocol.byte_views(buffers)
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
        protocol.drop_sent(views, sent)
