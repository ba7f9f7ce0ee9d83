"""What a forked container does differently from a fresh interpreter, and what its zygote does for it.

Runs in the zygote and in its children (``nodes/zygote.py``):

* ``rehearse`` -- the zygote runs a container's start and a few calls before it forks;
* ``refresh_after_fork`` -- a child's own random state;
* ``report_imports`` -- the hook by which a container sends, after its first reply, the
  modules its function imported (the platform learns what to preload from them).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import cloudpickle

from .. import payload, protocol, worker

__all__ = ["imports_since", "refresh_after_fork", "rehearse", "report_imports"]


def _echo(x: object) -> object:
    return x


def rehearse(calls: int = 10) -> None:
    """Run a container's start and ``calls`` calls of a no-op, over a socketpair of this process.

    A zygote does this before it forks: Python specialises a function's bytecode in place
    once it has run a few times, so a forked child that runs code the zygote never ran writes
    to that code (and the kernel copies the page). Rehearsed, the start and a call's path
    are already specialised, and the children share them untouched.
    """
    ours, theirs = socket.socketpair()
    try:
        bundle = worker.Bundle(
            name="rehearsal", fn=worker.FunctionRef(__name__, _echo.__qualname__), init=None, memory_mb=128, concurrency=1
        )
        started = worker.start_function(cloudpickle.dumps(bundle))
        assert isinstance(started, worker.Started), started
        for attempt in range(1, calls + 1):
            call = protocol.CallRequest(
                invocation_id=f"rehearsal-{attempt}",
                attempt=attempt,
                timeout_s=1.0,
                cold_start=True,
                args=payload.dumps_call((attempt,), {}),
            )
            ours.sendall(b"".join(bytes(part) for part in protocol.encode(call)))
        ours.shutdown(socket.SHUT_WR)
        channel = worker.Channel(theirs)
        channel.send(protocol.Ready(pid=os.getpid(), load_s=started.load_s, init_s=started.init_s))
        worker.Container(channel, started.bundle, "rehearsal", started.loop).serve_forever()
        replies = protocol.FrameDecoder()
        theirs.shutdown(socket.SHUT_WR)
        while data := ours.recv(protocol.READ_SIZE):
            replies.feed(data)
        while replies.next_message() is not None:
            pass
    finally:
        ours.close()
        theirs.close()


def refresh_after_fork() -> None:
    """Give a forked process what it must not share with its zygote and its siblings.

    ``random`` reseeds itself in a forked child (CPython registers that); numpy's global
    generator does not, so it is reseeded here from the operating system's entropy.
    """
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def imports_since(known: int) -> protocol.Imports:
    """The modules imported since ``sys.modules`` held ``known`` of them, with their files.

    New modules are the last entries of ``sys.modules`` (an import puts its module at the
    end once it has run). Only those are read: touching every module would make a forked
    container copy the pages of the zygote's module objects (their reference counts).
    """
    extra = len(sys.modules) - known
    modules = list(itertools.islice(reversed(sys.modules.items()), extra)) if extra > 0 else []
    modules.reverse()
    return protocol.Imports(modules=[name for name, _ in modules], files=[getattr(m, "__file__", None) or "" for _, m in modules])


def report_imports(known: int) -> Callable[[worker.Channel, protocol.CallReply], None]:
    """The first reply's hook: send it, then the modules imported since ``sys.modules`` held ``known``."""

    def send(channel: worker.Channel, reply: protocol.CallReply) -> None:
        # A SIGTERM (the container is stopped as soon as it answered, with idle_timeout=0)
        # waits until both are sent. Not by blocking the signal: pthread_sigmask holds it off
        # this thread only, and a library's thread (numpy's OpenBLAS) would take it.
        with _sigterm_deferred():
            channel.send(reply)
            if (report := imports_since(known)).modules:
                channel.send(report)

    return send


@contextlib.contextmanager
def _sigterm_deferred() -> Iterator[None]:
    """Hold a SIGTERM's handler until the block ends (in the main thread; elsewhere, do nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    handler = signal.signal(signal.SIGTERM, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        if arrived:
            if callable(handler):
                handler(signal.SIGTERM, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)
