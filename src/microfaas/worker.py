"""The container process: load the function, run its init once, then serve calls.

A container talks to the platform over one socket of its own (``protocol.py``
frames); its stdout and stderr are the user's and are flushed after every call.
It is started either by a zygote's ``fork`` (``serve`` is called in the child
with the function bundle already in memory) or as a fresh interpreter
(``python -c 'from microfaas.worker import main; main()' --fd N``; the bundle
arrives in a ``load`` frame).

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
from collections.abc import Callable
from typing import Any

import attrs
import cloudpickle

from . import events, payload, protocol

__all__ = [
    "Bundle",
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
    """Blocking frame I/O on the container's socket; sends are serialised by a lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = bytearray()  # bytes read past the last frame

    def send(self, meta: tuple[object, ...], blob: bytes | bytearray | memoryview = b"") -> None:
        buffers = protocol.encode(meta, blob)
        with self._send_lock:
            _sendmsg_all(self.sock, buffers)

    def recv(self, poll_s: float = 0.0) -> tuple[tuple[object, ...], bytes | bytearray | memoryview] | None:
        """The next frame, or None when the platform closed the channel.

        A small frame usually arrives whole in one ``recv``; a large one is read
        straight into a buffer of its size.

        :param poll_s: poll this long for the frame's first bytes before sleeping in ``recv``.
        """
        buf = self._buf
        while len(buf) < protocol.HEADER.size:
            if not self._fill(poll_s):
                return None
        body_len, version, meta_len = protocol.HEADER.unpack_from(buf)
        protocol.check_header(version, body_len, meta_len)
        total = 4 + body_len
        if len(buf) < total:
            have = len(buf)
            frame = bytearray(total)
            frame[:have] = buf
            buf.clear()
            if not _recv_exactly(self.sock, memoryview(frame)[have:]):
                return None
        else:
            frame = buf[:total]
            del buf[:total]
        meta_end = protocol.HEADER.size + meta_len
        with memoryview(frame) as view:
            meta = protocol.decode_meta(view[protocol.HEADER.size : meta_end])
        del frame[:meta_end]
        return meta, frame

    def _fill(self, poll_s: float = 0.0) -> bool:
        data = _poll(self.sock, poll_s) if poll_s else None
        if data is None:
            data = self.sock.recv(protocol.READ_SIZE)
        self._buf += data
        return bool(data)


# How many times this process began to poll for a call (tests read it from inside a container).
polls_begun = 0


def _poll(sock: socket.socket, seconds: float) -> bytes | None:
    """What ``sock`` receives within ``seconds`` of polling it; None if nothing came.

    Polling keeps the process on its CPU: a process that sleeps in ``recv`` costs a
    wake-up when the next call comes (tens of microseconds on a virtual machine). Each
    empty poll yields the CPU, so polling only uses a CPU that nothing else wants (the
    platform's own process, on a machine with few cores).
    """
    global polls_begun
    polls_begun += 1
    deadline = time.perf_counter() + seconds
    while True:
        try:
            return sock.recv(protocol.READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.perf_counter() > deadline:
                return None
            os.sched_yield()


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


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            return False
        view = view[n:]
    return True


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
        while (frame := self.channel.recv(poll_s)) is not None:
            arrived = time.perf_counter()
            meta, blob = frame
            if meta[0] != "call":
                raise protocol.ProtocolError(f"container {self.container_id} got unexpected message {meta[0]!r}")
            _, invocation_id, attempt, timeout, cold = meta
            ctx = events.Context(
                invocation_id=str(invocation_id),
                function_name=self.bundle.name,
                attempt=int(attempt),  # type: ignore[call-overload]
                cold_start=bool(cold),
                deadline=None if timeout is None else time.time() + timeout,  # type: ignore[operator]
                memory_mb=self.bundle.memory_mb,
                container_id=self.container_id,
            )
            if self.bundle.concurrency == 1:
                self._run(ctx, blob)
                # Poll for the next call only while calls come back to back: this one came
                # within the polling window after the last reply.
                poll_s = self.busy_poll_s if arrived - replied < self.busy_poll_s else 0.0
                replied = time.perf_counter()
            elif self.is_async:
                assert self.loop is not None
                asyncio.run_coroutine_threadsafe(self._run_async(ctx, blob), self.loop)
            else:
                assert self.pool is not None
                self.pool.submit(self._run, ctx, blob)

    def _run(self, ctx: events.Context, blob: bytes | bytearray | memoryview) -> None:
        try:
            self.channel.send(*run_call(self.bundle, ctx, blob, self.loop))
        finally:
            flush_user_output()

    async def _run_async(self, ctx: events.Context, blob: bytes | bytearray | memoryview) -> None:
        try:
            self.channel.send(*await run_call_async(self.bundle, ctx, blob))
        finally:
            flush_user_output()


# -- loading a function and running one call, shared with other container kinds (ray.py) --------

Reply = tuple[tuple[object, ...], bytes]


def load_bundle(bundle_blob: bytes | bytearray | memoryview) -> Bundle:
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


def start_function(
    bundle_blob: bytes | bytearray | memoryview,
    *,
    started: float | None = None,
    after_load: Callable[[], object] | None = None,
) -> Started | tuple[object, ...]:
    """Load the bundle and run its init, timing both.

    :param started: the ``time.perf_counter()`` the load time counts from (default: now).
    :param after_load: called once the bundle is loaded, before init runs.
    :returns: ``Started``, or the ``("start_failed", stage, type, message, traceback)`` reply.
    """
    if started is None:
        started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_blob)
    except BaseException as exc:  # noqa: BLE001 - report, whatever it was
        return ("start_failed", "load", *describe_error(exc))
    loaded = time.perf_counter()
    if after_load is not None:
        after_load()
    try:
        loop = run_init(bundle)
    except BaseException as exc:  # noqa: BLE001
        flush_user_output()
        return ("start_failed", "init", *describe_error(exc))
    return Started(bundle=bundle, loop=loop, load_s=loaded - started, init_s=time.perf_counter() - loaded)


def _unpack(ctx: events.Context, blob: bytes | bytearray | memoryview) -> tuple[tuple[Any, ...], dict[str, Any], Reply | None]:
    """The call's arguments, or the bad_payload reply when they cannot be unpickled."""
    try:
        args, kwargs = payload.loads(blob)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the payload's fault
        return (), {}, (("bad_payload", ctx.invocation_id, f"the arguments could not be unpickled in the container: {exc!r}"), b"")
    return args, kwargs, None


def _result_reply(ctx: events.Context, result: object) -> Reply:
    try:
        blob = payload.dumps(result)
    except Exception as exc:  # noqa: BLE001
        return ("bad_payload", ctx.invocation_id, f"the result of type {type(result).__qualname__} could not be pickled: {exc!r}"), b""
    return ("result", ctx.invocation_id), blob


def run_call(bundle: Bundle, ctx: events.Context, blob: bytes | bytearray | memoryview, loop: asyncio.AbstractEventLoop | None) -> Reply:
    """Run one call in this thread (an async handler via ``loop.run_until_complete``); the reply frame to send.

    The reply is ``("result", id), blob``, ``("error", id, type, message, traceback), b""`` or
    ``("bad_payload", id, message), b""``.
    """
    args, kwargs, bad = _unpack(ctx, blob)
    if bad is not None:
        return bad
    token = events.set_context(ctx)
    try:
        if loop is not None and inspect.iscoroutinefunction(bundle.fn):
            result = loop.run_until_complete(bundle.fn(*args, **kwargs))
        else:
            # load_bundle resolved any FunctionRef; narrowing here would cost every call a check.
            result = bundle.fn(*args, **kwargs)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - the handler's error goes back to the caller
        return ("error", ctx.invocation_id, *describe_error(exc)), b""
    finally:
        events.reset_context(token)
    return _result_reply(ctx, result)


async def run_call_async(bundle: Bundle, ctx: events.Context, blob: bytes | bytearray | memoryview) -> Reply:
    """Run one call of an async handler on the running loop; the reply frame to send (as ``run_call``)."""
    args, kwargs, bad = _unpack(ctx, blob)
    if bad is not None:
        return bad
    token = events.set_context(ctx)
    try:
        result = await bundle.fn(*args, **kwargs)  # type: ignore[operator]  # resolved by load_bundle, as in run_call
    except Exception as exc:  # noqa: BLE001
        return ("error", ctx.invocation_id, *describe_error(exc)), b""
    finally:
        events.reset_context(token)
    return _result_reply(ctx, result)


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
    raise SystemExit(128 + signum)


def prepare_process() -> None:
    """Signals for a container or zygote: the platform alone decides when they stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    _set_parent_death_signal()


def adopt_environment(sys_path: list[str], cwd: str) -> None:
    """Take the platform's import path and working directory, so its modules import here."""
    sys.path[:] = sys_path
    try:
        os.chdir(cwd)
    except OSError:
        pass


def serve(
    sock: socket.socket, container_id: str, bundle_blob: bytes | bytearray | memoryview | None = None, *, busy_poll_s: float = 0.0
) -> None:
    """Run a container on ``sock`` until the platform closes it.

    :param bundle_blob: the cloudpickled ``Bundle``; None to read it from a ``load`` frame.
    :param busy_poll_s: how long to poll for the next call, while calls come back to back,
        before sleeping until it comes.
    """
    started = time.perf_counter()
    channel = Channel(sock)
    if bundle_blob is None:
        frame = channel.recv()
        if frame is None:
            return
        meta, bundle_blob = frame
        if meta[0] != "load":
            raise protocol.ProtocolError(f"container {container_id} expected a load frame, got {meta[0]!r}")
        _, sys_path, cwd = meta
        adopt_environment(sys_path, cwd)  # type: ignore[arg-type]
    result = start_function(bundle_blob, started=started)
    if not isinstance(result, Started):
        channel.send(result)
        return
    channel.send(("ready", os.getpid(), result.load_s, result.init_s))
    Container(channel, result.bundle, container_id, result.loop, busy_poll_s=busy_poll_s).serve_forever()


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
