"""The container process: load the function, run its init once, then serve calls.

A container talks to the platform over one socket of its own (``protocol.py``
frames); its stdout and stderr are the user's and are flushed after every call.
It is started either by a zygote's ``fork`` (``serve`` is called in the child
with the function bundle already in memory) or as a fresh interpreter
(``python -c 'from microfaas.worker import main; main()' --fd N``; the bundle
arrives in a ``LoadRequest``).

Handlers run inline when ``concurrency == 1``; with more, sync handlers run on a
thread pool and async handlers as tasks on an event loop in a helper thread, and
replies are written under a lock.

This module imports only ``protocol``, ``payload``, ``events`` and ``errors`` from microfaas.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import cloudpickle

from . import events, payload, protocol

__all__ = [
    "Bundle",
    "Channel",
    "Container",
    "FunctionRef",
    "Started",
    "describe_error",
    "flush_user_output",
    "load_bundle",
    "run_call",
    "run_call_async",
    "run_init",
    "serve",
    "start_function",
]


@attrs.frozen
class FunctionRef:
    """A function found by import: ``module.qualname``, unwrapped once through ``__wrapped__``.

    ``@app.function`` replaces the module attribute with a handle, which would make
    cloudpickle copy the function by value (and its globals with it); shipping the
    name instead keeps module state shared, as a plain import would.
    """

    module: str
    qualname: str

    def resolve(self) -> Callable[..., Any]:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return getattr(obj, "__wrapped__", obj)  # type: ignore[no-any-return]


@attrs.frozen(kw_only=True)
class Bundle:
    """What a container needs to know of its function; cloudpickled by the platform."""

    name: str
    fn: Callable[..., Any] | FunctionRef
    init: Callable[[], Any] | None
    memory_mb: int
    concurrency: int


class Channel:
    """Blocking message I/O on the container's socket; sends are serialised by a lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._decoder = protocol.FrameDecoder()

    def send(self, message: protocol.Message) -> None:
        buffers = protocol.encode(message)
        with self._send_lock:
            _sendmsg_all(self.sock, buffers)

    def recv(self, poll_s: float = 0.0) -> protocol.Message | None:
        """The next message, or None when the platform closed the channel.

        A small frame usually arrives whole in one ``recv``; a large one is read
        straight into a buffer of its size.

        :param poll_s: poll this long for bytes before sleeping in ``recv``.
        :raises protocol.ProtocolError: the platform sent a frame this side cannot decode.
        """
        decoder = self._decoder
        while (message := decoder.next_message()) is None:
            view = decoder.writable()
            if view is not None:
                with view:
                    received = self.sock.recv_into(view)
                decoder.wrote(received)
            else:
                data = _poll(self.sock, poll_s) if poll_s else None
                if data is None:
                    data = self.sock.recv(protocol.READ_SIZE)
                received = len(data)
                decoder.feed(data)
            if not received:
                return None
        return message


# How many times this process began to poll for a call (tests read it from inside a container).
polls_begun = 0


def _poll(sock: socket.socket, seconds: float) -> bytes | None:
    """What ``sock`` receives within ``seconds`` of polling it; None if nothing came.

    Polling keeps the process on its CPU: a process that sleeps in ``recv`` costs a
    wake-up when the next call comes (tens of microseconds on a virtual machine). Each
    empty poll yields the CPU, so polling only uses a CPU that nothing else wants (the
    platform's own process, on a machine with few cores), and a yield that gave the CPU
    away for long ends the poll (``protocol.POLL_CONTENDED_S``).
    """
    global polls_begun
    polls_begun += 1
    now = time.perf_counter()
    deadline = now + seconds
    while True:
        try:
            return sock.recv(protocol.READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if now > deadline:
                return None
            os.sched_yield()
            yielded, now = now, time.perf_counter()
            if now - yielded > protocol.POLL_CONTENDED_S:
                deadline = 0.0  # another process wanted this CPU: one more look, then sleep in recv


def _sendmsg_all(sock: socket.socket, buffers: list[bytes | bytearray | memoryview]) -> None:
    sent = sock.sendmsg(buffers)
    if sent == sum(map(len, buffers)):
        return  # the usual case: a small reply, sent whole
    views = protocol.byte_views(buffers)
    while True:
        protocol.drop_sent(views, sent)
        if not views:
            return
        sent = sock.sendmsg(views)


def describe_error(exc: BaseException) -> tuple[str, str, str]:
    """``(type, message, traceback)`` of an exception, as error and start_failed replies carry them."""
    kind = type(exc)
    return (
        f"{kind.__module__}.{kind.__qualname__}",
        str(exc),
        "".join(traceback.format_exception(exc)),
    )


def flush_user_output() -> None:
    """Flush the user's stdout and stderr, ignoring streams that are closed or broken."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


class Container:
    """Serves calls for one function over one channel."""

    def __init__(
        self, channel: Channel, bundle: Bundle, container_id: str, loop: asyncio.AbstractEventLoop | None, *, busy_poll_s: float = 0.0
    ) -> None:
        self.channel = channel
        # Polling for the next call is for calls served inline: it would hold the GIL from handler threads.
        self.busy_poll_s = busy_poll_s if bundle.concurrency == 1 else 0.0
        self.bundle = bundle
        self.container_id = container_id
        self.is_async = inspect.iscoroutinefunction(bundle.fn)
        self.loop = loop
        # Sends the first reply in its place, and what else it wants to (nodes/forking.py: the imports).
        self.after_first_reply: Callable[[Channel, protocol.CallReply], None] | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        if bundle.concurrency > 1:
            if self.is_async:
                assert loop is not None
                threading.Thread(target=loop.run_forever, name="microfaas-loop", daemon=True).start()
            else:
                self.pool = concurrent.futures.ThreadPoolExecutor(bundle.concurrency, thread_name_prefix="microfaas-call")

    def serve_forever(self) -> None:
        poll_s = 0.0
        replied = -math.inf
        while (call := self.channel.recv(poll_s)) is not None:
            arrived = time.perf_counter()
            if type(call) is not protocol.CallRequest:
                raise protocol.ProtocolError(f"container {self.container_id} got unexpected message {type(call).__name__}")
            ctx = _context(
                call.invocation_id,
                self.bundle.name,
                call.attempt,
                call.cold_start,
                None if call.timeout_s is None else time.time() + call.timeout_s,
                self.bundle.memory_mb,
                self.container_id,
            )
            if self.bundle.concurrency == 1:
                self._run(ctx, call.args)
                # Poll for the next call only while calls come back to back: this one came
                # within the polling window after the last reply.
                poll_s = self.busy_poll_s if arrived - replied < self.busy_poll_s else 0.0
                replied = time.perf_counter()
            elif self.is_async:
                assert self.loop is not None
                asyncio.run_coroutine_threadsafe(self._run_async(ctx, call.args), self.loop)
            else:
                assert self.pool is not None
                self.pool.submit(self._run, ctx, call.args)

    def _run(self, ctx: events.Context, blob: protocol.Blob) -> None:
        try:
            self._reply(run_call(self.bundle, ctx, blob, self.loop))
        finally:
            flush_user_output()

    async def _run_async(self, ctx: events.Context, blob: protocol.Blob) -> None:
        try:
            self._reply(await run_call_async(self.bundle, ctx, blob))
        finally:
            flush_user_output()

    def _reply(self, reply: protocol.CallReply) -> None:
        first, self.after_first_reply = self.after_first_reply, None
        if first is None:
            self.channel.send(reply)
        else:
            first(self.channel, reply)


# -- loading a function and running one call, shared with other container kinds (ray.py) --------


def load_bundle(bundle_blob: protocol.Blob) -> Bundle:
    """Unpickle a ``Bundle`` and resolve its function reference (raises what loading raised)."""
    bundle: Bundle = cloudpickle.loads(bundle_blob)
    if isinstance(bundle.fn, FunctionRef):
        bundle = attrs.evolve(bundle, fn=bundle.fn.resolve())
    return bundle


def run_init(bundle: Bundle) -> asyncio.AbstractEventLoop | None:
    """Run the bundle's init; return the event loop that async handlers must run on (None: sync)."""
    loop = asyncio.new_event_loop() if inspect.iscoroutinefunction(bundle.fn) else None
    if bundle.init is not None:
        result = bundle.init()
        if inspect.isawaitable(result):
            loop = loop or asyncio.new_event_loop()
            loop.run_until_complete(result)  # type: ignore[arg-type]
    return loop


@attrs.frozen(kw_only=True)
class Started:
    """A container's function, loaded and initialised (``start_function``)."""

    bundle: Bundle
    loop: asyncio.AbstractEventLoop | None  # as ``run_init`` returns it
    load_s: float  # from ``started`` until the bundle was loaded
    init_s: float  # how long init ran


def _start_failure(stage: str, exc: BaseException) -> protocol.StartFailure:
    remote_type, remote_message, remote_traceback = describe_error(exc)
    return protocol.StartFailure(stage=stage, remote_type=remote_type, remote_message=remote_message, remote_traceback=remote_traceback)


def start_function(
    bundle_blob: protocol.Blob,
    *,
    started: float | None = None,
    after_load: Callable[[], object] | None = None,
) -> Started | protocol.StartFailure:
    """Load the bundle and run its init, timing both.

    :param started: the ``time.perf_counter()`` the load time counts from (default: now).
    :param after_load: called once the bundle is loaded, before init runs.
    :returns: ``Started``, or the ``StartFailure`` to report.
    """
    if started is None:
        started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_blob)
    except BaseException as exc:  # noqa: BLE001 - report, whatever it was
        return _start_failure("load", exc)
    loaded = time.perf_counter()
    if after_load is not None:
        after_load()
    try:
        loop = run_init(bundle)
    except BaseException as exc:  # noqa: BLE001
        flush_user_output()
        return _start_failure("init", exc)
    return Started(bundle=bundle, loop=loop, load_s=loaded - started, init_s=time.perf_counter() - loaded)


async def run_call_async(bundle: Bundle, ctx: events.Context, blob: protocol.Blob) -> protocol.CallReply:
    """Run one call of an async handler on the running loop and return its reply (as ``run_call``)."""
    unpacked = _arguments(ctx, blob)
    if isinstance(unpacked, protocol.BadPayloadReply):
        return unpacked
    args, kwargs = unpacked
    token = events.set_context(ctx)
    try:
        result = await bundle.fn(*args, **kwargs)  # type: ignore[operator]  # resolved by load_bundle, as in run_call
    except Exception as exc:  # noqa: BLE001 - the handler's error goes back to the caller
        return _error_reply(ctx, exc)
    finally:
        events.reset_context(token)
    return _result_reply(ctx, result)


def run_call(bundle: Bundle, ctx: events.Context, blob: protocol.Blob, loop: asyncio.AbstractEventLoop | None) -> protocol.CallReply:
    """Run one call in this thread (an async handler via ``loop.run_until_complete``) and return its reply.

    Both ``run_call`` and ``run_call_async`` are the same steps (``_arguments``, the handler
    under its context, ``_error_reply`` or ``_result_reply``); a sync handler is called here
    directly rather than through ``run_call_async``, as driving a coroutine for it would
    cost each warm call about 2,400 instructions (of the worker's 74,000; callgrind).

    :param loop: the loop an async handler runs on (as ``run_init`` returned it); None for a sync handler.
    """
    if loop is not None and inspect.iscoroutinefunction(bundle.fn):
        return loop.run_until_complete(run_call_async(bundle, ctx, blob))
    unpacked = _arguments(ctx, blob)
    if isinstance(unpacked, protocol.BadPayloadReply):
        return unpacked
    args, kwargs = unpacked
    token = events.set_context(ctx)
    try:
        # load_bundle resolved any FunctionRef; narrowing here would cost every call a check.
        result = bundle.fn(*args, **kwargs)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - the handler's error goes back to the caller
        return _error_reply(ctx, exc)
    finally:
        events.reset_context(token)
    return _result_reply(ctx, result)


def _arguments(ctx: events.Context, blob: protocol.Blob) -> tuple[tuple[Any, ...], dict[str, Any]] | protocol.BadPayloadReply:
    """The call's ``(args, kwargs)``, or the reply that says they would not unpickle."""
    try:
        return payload.loads(blob)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the payload's fault
        return protocol.BadPayloadReply(
            invocation_id=ctx.invocation_id, message=f"the arguments could not be unpickled in the container: {exc!r}"
        )


def _error_reply(ctx: events.Context, exc: Exception) -> protocol.ErrorReply:
    remote_type, remote_message, remote_traceback = describe_error(exc)
    return protocol.ErrorReply(
        invocation_id=ctx.invocation_id, remote_type=remote_type, remote_message=remote_message, remote_traceback=remote_traceback
    )


def _result_reply(ctx: events.Context, result: Any) -> protocol.ResultReply | protocol.BadPayloadReply:
    try:
        value = payload.dumps(result)
    except Exception as exc:  # noqa: BLE001
        return protocol.BadPayloadReply(
            invocation_id=ctx.invocation_id, message=f"the result of type {type(result).__qualname__} could not be pickled: {exc!r}"
        )
    return protocol.ResultReply(invocation_id=ctx.invocation_id, value=value)


_CONTEXT_SLOTS: Final = protocol.slot_setters(events.Context)
_new = object.__new__


def _context(
    invocation_id: str, function_name: str, attempt: int, cold_start: bool, deadline: float | None, memory_mb: int, container_id: str
) -> events.Context:
    """``events.Context(...)`` of a warm call, built at half the cost (``protocol.slot_setters``)."""
    ctx: events.Context = _new(events.Context)
    set_id, set_name, set_attempt, set_cold, set_deadline, set_memory, set_container = _CONTEXT_SLOTS
    set_id(ctx, invocation_id)
    set_name(ctx, function_name)
    set_attempt(ctx, attempt)
    set_cold(ctx, cold_start)
    set_deadline(ctx, deadline)
    set_memory(ctx, memory_mb)
    set_container(ctx, container_id)
    return ctx


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (None off Linux); loaded once, so a zygote's children inherit it loaded."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no worker is orphaned."""
    prctl = _prctl()
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _terminate(signum: int, frame: object) -> None:
    # The platform is stopping this process, perhaps while it starts: an object the unwinding
    # leaves half-built (an event loop interrupted in its constructor) must not print
    # "Exception ignored ..." when it is freed.
    sys.unraisablehook = _ignore_unraisable
    raise SystemExit(128 + signum)


def _ignore_unraisable(unraisable: object) -> None:
    pass


def prepare_process() -> None:
    """Signals for a container or zygote: the platform alone decides when they stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    _set_parent_death_signal()


def adopt_environment(sys_path: Sequence[str], cwd: str) -> None:
    """Take the platform's import path and working directory, so its modules import here."""
    sys.path[:] = sys_path
    try:
        os.chdir(cwd)
    except OSError:
        pass


def serve(
    sock: socket.socket,
    container_id: str,
    bundle_blob: protocol.Blob | None = None,
    *,
    busy_poll_s: float = 0.0,
    after_first_reply: Callable[[Channel, protocol.CallReply], None] | None = None,
) -> None:
    """Run a container on ``sock`` until the platform closes it.

    :param bundle_blob: the cloudpickled ``Bundle``; None to read it from a ``LoadRequest``.
    :param busy_poll_s: how long to poll for the next call, while calls come back to back,
        before sleeping until it comes.
    :param after_first_reply: sends the first reply instead of the container, and then what
        else it wants to (a forked container's imports, ``nodes/forking.py``).
    :raises protocol.ProtocolError: the platform sent what this side cannot decode, or a message out of turn.
    """
    try:
        _serve(sock, container_id, bundle_blob, busy_poll_s=busy_poll_s, after_first_reply=after_first_reply)
    except (BrokenPipeError, ConnectionResetError):
        # The platform closed the channel while this container sent ("ready", a reply) or read
        # (calls it had queued here): it is stopping the container. That ends it as a closed
        # channel does, quietly; a handler's own errors never get here (they are replies).
        return


def _serve(
    sock: socket.socket,
    container_id: str,
    bundle_blob: protocol.Blob | None,
    *,
    busy_poll_s: float,
    after_first_reply: Callable[[Channel, protocol.CallReply], None] | None,
) -> None:
    started = time.perf_counter()
    channel = Channel(sock)
    if bundle_blob is None:
        load = channel.recv()
        if load is None:
            return
        if type(load) is not protocol.LoadRequest:
            raise protocol.ProtocolError(f"container {container_id} expected a LoadRequest, got {type(load).__name__}")
        adopt_environment(load.sys_path, load.cwd)
        bundle_blob = load.bundle
    result = start_function(bundle_blob, started=started)
    if not isinstance(result, Started):
        channel.send(result)
        return
    channel.send(protocol.Ready(pid=os.getpid(), load_s=result.load_s, init_s=result.init_s))
    container = Container(channel, result.bundle, container_id, result.loop, busy_poll_s=busy_poll_s)
    container.after_first_reply = after_first_reply
    container.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="microfaas-worker", description="A microfaas container (spawn start method).")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the container's socket")
    parser.add_argument("--container-id", required=True)
    parser.add_argument("--busy-poll-us", type=int, default=0, help="microseconds to poll for the next call before sleeping")
    args = parser.parse_args(argv)
    prepare_process()
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock, args.container_id, busy_poll_s=args.busy_poll_us / 1e6)
    finally:
        flush_user_output()
        sock.close()
        # Served: the platform is stopping us. A SIGTERM now, while the interpreter waits
        # for the handler's threads, just ends the process instead of raising in the middle.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    main()
