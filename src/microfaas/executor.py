"""mf.Executor: a ``concurrent.futures.Executor`` whose workers are microfaas containers.

How this works. An executor is an app of its own with one function, ``task``, a
trampoline (in ``executor_task``, with what travels to and from it): its arguments are the cloudpickled callable and the pickled
``(args, kwargs)`` of one submitted call (or a chunk of argument tuples, for
``map``), so any picklable callable runs with no decorator, lambdas, closures and
``__main__`` functions included. The executor's settings are that function's:
``max_workers`` is ``max_containers``, ``timeout`` and ``memory_mb`` hold for
each task (each chunk), ``initializer(*initargs)`` is its ``init``, run once in
each container. The trampoline catches what the callable raises and sends it back
pickled, so ``result()`` raises it as its own type, with the remote traceback
attached as ``__cause__`` (a ``FunctionError``); one that does not survive
pickling arrives as that ``FunctionError``. A crash, a timeout or going over
memory ends only the task's own container: its future gets ``ContainerCrashed`` /
``FunctionTimeout`` / ``OutOfMemory``, and the next task gets a new container.

The platform runs on its own thread (``blocking.PlatformThread``). ``submit``
pickles the call in the caller's thread, queues it, and wakes the platform's loop
with one ``call_soon_threadsafe`` (none while a wake-up is already on its way), so
a burst of submits costs the loop one wake-up, not a portal round trip each. No
task is made per call: that wake-up takes queued tasks and starts each invocation
right there (``Platform._start_invocation``: the request, the core's decision and
the frame to the worker happen in that callback), and the end of each is a
callback that completes its ``concurrent.futures.Future`` and starts the next
queued task. A task is running (no longer cancellable) from the moment it is
taken, as ProcessPoolExecutor's are once in its call queue. How many tasks are
handed out at once follows the tasks' run time, as the workers measure it: while
tasks are short, several per worker (they wait in the worker's socket, the
platform's pipelining, so a worker never idles for a round trip between two);
otherwise one per worker plus one. This is the hot path and uses asyncio
directly (DESIGN.md allows it).

Lifetime. ``shutdown`` stops intake; what is queued still runs (or it is
cancelled, with ``cancel_futures``), then the platform stops every container.
A forgotten executor is garbage-collected (nothing on the platform's side refers
to it) and shuts down the same way; at interpreter exit, executors finish their
queued tasks and stop before the interpreter's threads are joined, and ``submit``
raises ``RuntimeError`` from then on, as the standard library's executors do.

This module sits above ``app``: it imports ``app`` and below; only ``__init__``
imports it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

import cloudpickle

from .app import App
from .blocking import PlatformThread
from .errors import FaaSError, PlatformClosed, SerializationError
from .executor_task import TASK, TaskFailure, dumps_args, dumps_callable, dumps_chunk, initialize, name_of, trampoline
from .keepalive import NeverUnload
from .pool import LocalNodes, machine_memory_mb
from .runtime.shipping import dump_args

__all__ = ["Executor"]

T = TypeVar("T")

# Tasks handed out per worker at most: while tasks are short, a few wait in each worker's
# socket behind the running one, so that no worker idles for a round trip between two.
IN_FLIGHT_PER_WORKER: Final = 4
# Below this (seconds, as the worker measures it, on average) a task is short: handing
# out more than one per worker pays off. Longer tasks are handed out one per worker
# plus one, as ProcessPoolExecutor does, so that what has not started stays cancellable.
SHORT_TASK_S: Final = 0.001
# Weight of the newest task in that average.
_RUN_S_WEIGHT: Final = 0.2

# A queued task: (future, the trampoline's pickled arguments, the callable's name for error notes).
_Item = tuple["concurrent.futures.Future[Any]", bytes, str]


# -- the engine: the queue, and the tasks in flight on the platform's loop ---------------------------


class _Engine:
    """The executor's working parts; refers to no ``Executor``, so that one can be collected."""

    def __init__(self, thread: PlatformThread, max_workers: int) -> None:
        self.thread = thread
        self.platform = thread.platform
        self._wide = IN_FLIGHT_PER_WORKER * max_workers
        self._narrow = max_workers + 1
        self._window = self._narrow  # tasks handed out at most, now (on the loop)
        self._run_s = 1.0  # average run time of a task; taken as long until measured
        # Re-entrant: a garbage collection inside a locked block may run a finalizer that shuts down.
        self._lock = threading.RLock()
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake_scheduled = False
        self._shutdown = False
        # On the loop: the futures of the tasks handed out, and whether intake has closed.
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._closing = False
        self._finished = asyncio.Event()  # set on the loop: closing, and nothing queued or running

    def start(self) -> None:
        self._served = self.thread.start_task(self._serve)

    # -- any thread ---------------------------------------------------------------------------

    def submit(self, fn_blob: bytes, call_blob: bytes, chunked: bool, name: str) -> concurrent.futures.Future[Any]:
        try:
            # The trampoline's arguments, pickled here rather than on the platform's loop.
            blob = dump_args(TASK, (fn_blob, call_blob, chunked), {})
        except SerializationError as exc:
            self.check_open()
            exc.add_note(_note(name))
            return _failed(exc)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self.check_open()
            self._pending.append((future, blob, name))
            if self._wake_scheduled:
                return future
            self._wake_scheduled = True
        try:
            self.thread.call_soon(self._wake)
        except PlatformClosed:
            pass  # stopping: what is queued fails as the engine ends
        return future

    def check_open(self) -> None:
        """:raises RuntimeError: the executor was shut down, or the interpreter is exiting."""
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
        if first:
            try:
                self.thread.call_soon(self._close)
            except PlatformClosed:
                pass
        if not wait or self.thread.in_loop_thread():
            return  # the engine stops the platform once it is done
        try:
            concurrent.futures.wait([self._served])
        except KeyboardInterrupt:
            # Ctrl-C while waiting for tasks: give up on them, stop every container now.
            self.shutdown(wait=False, cancel_futures=True)
            self.thread.stop()
            raise
        self.thread.stop()

    # -- on the platform's loop ---------------------------------------------------------------------
    #
    # No task per call: a wake-up from ``submit`` starts queued tasks right there (the
    # request, the core's decision and the frame to the worker all happen in that
    # callback), and each task's end is a callback that completes its future and starts
    # the next. ``_serve`` only waits for the end, and fails what is left if the platform
    # stops first.

    async def _serve(self) -> None:
        try:
            await self._finished.wait()
        finally:
            with self._lock:
                self._shutdown = True
            # Only when the platform stopped under the engine is anything still queued or running.
            while self._pending:
                future = self._pending.popleft()[0]
                if future.set_running_or_notify_cancel():
                    future.set_exception(PlatformClosed("the executor's platform stopped before the task started"))
            for future in self._running:
                if not future.done():
                    future.set_exception(PlatformClosed("the executor's platform stopped before the task finished"))
            self._running.clear()
            self.thread.stop_soon()

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        self._start_queued()

    def _close(self) -> None:
        self._closing = True
        self._start_queued()

    def _start_queued(self) -> None:
        """Hand out queued tasks while the window has room; note the end once closing and idle."""
        running, pending = self._running, self._pending
        while len(running) < self._window and pending:
            try:
                future, blob, name = pending.popleft()
            except IndexError:  # taken by a shutdown meanwhile
                break
            if not future.set_running_or_notify_cancel():
                continue
            running.add(future)
            try:
                self.platform._start_invocation(TASK, blob, functools.partial(self._ended, future, name))
            except FaaSError as exc:  # the platform is stopping
                running.discard(future)
                exc.add_note(_note(name))
                future.set_exception(exc)
        if self._closing and not running and not pending:
            self._finished.set()

    def _ended(self, future: concurrent.futures.Future[Any], name: str, value: Any, error: FaaSError | None) -> None:
        """A task's invocation ended: start the next queued ones, then complete its future."""
        self._running.discard(future)
        if error is None:
            value, run_s = value
            self._ran(run_s)
        self._start_queued()
        if future.done():  # pragma: no cover - failed by a stop meanwhile
            return
        if error is not None:
            error.add_note(_note(name))
            future.set_exception(error)
        elif type(value) is TaskFailure:
            future.set_exception(value.exception())
        else:
            future.set_result(value)

    def _ran(self, run_s: float) -> None:
        """A task ran ``run_s`` seconds in its worker: adjust how many tasks are handed out."""
        self._run_s += _RUN_S_WEIGHT * (run_s - self._run_s)
        self._window = self._wide if self._run_s < SHORT_TASK_S else self._narrow


def _note(name: str) -> str:
    return f"(the task was {name}, submitted to an mf.Executor)"


# Engines of executors not yet shut down, and whether the interpreter is exiting.
_engines: weakref.WeakSet[_Engine] = weakref.WeakSet()
_exiting = False
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _at_exit() -> None:
    """At interpreter exit (before its threads are joined): finish queued tasks, stop every executor."""
    global _exiting
    _exiting = True
    for engine in list(_engines):
        engine.shutdown(wait=True, cancel_futures=False)


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        _exit_hook_registered = True
    # The hook concurrent.futures itself uses: it runs before non-daemon threads are joined.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_exit)
    else:  # pragma: no cover - CPython has it since 3.9
        import atexit

        atexit.register(_at_exit)


# -- the executor -----------------------------------------------------------------------------------


def _positive_int_or_none(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Executor: {name} must be an int >= 1 or None, got {value!r}")


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs each task in a microfaas container.

    Like ``ProcessPoolExecutor``, but a task that crashes its worker (``os._exit``, a
    signal), runs past ``timeout`` or goes over ``memory_mb`` fails only its own future
    (``mf.ContainerCrashed`` / ``mf.FunctionTimeout`` / ``mf.OutOfMemory``), and the
    executor keeps serving. Any picklable callable runs, with no decorator.

    :param max_workers: containers at most (default: the machine's cores).
    :param memory_mb: each worker's memory limit in MB (None: no limit); over it the
        worker is killed and its task raises ``mf.OutOfMemory``.
    :param timeout: seconds one task (one chunk, in ``map``) may run (None: no limit);
        past it the worker is killed and the task raises ``mf.FunctionTimeout``.
    :param initializer: called as ``initializer(*initargs)`` once in each new worker; if it
        raises, the tasks sent to that worker raise ``mf.ColdStartFailed``.
    :param initargs: its arguments.
    :param start_method: ``"fork"`` (from a zygote that has imported microfaas: a fork
        server) or ``"spawn"`` (a fresh interpreter per worker).
    :raises ValueError: ``max_workers`` is 0 or less, or another setting is invalid.
    :raises TypeError: ``initializer`` is not callable.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        memory_mb: int | None = None,
        timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        start_method: str = "fork",
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, got {max_workers!r}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _positive_int_or_none("memory_mb", memory_mb)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0):
            raise ValueError(f"Executor: timeout must be a number > 0 (seconds) or None, got {timeout!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, got {initializer!r}")
        if start_method not in ("fork", "spawn"):
            raise ValueError(f"Executor: start_method must be 'fork' (from a zygote, a fork server) or 'spawn', got {start_method!r}")
        self._max_workers = max_workers
        init = None
        if initializer is not None:
            try:
                init = functools.partial(initialize, cloudpickle.dumps((initializer, tuple(initargs))))
            except Exception as exc:
                raise SerializationError(f"Executor: the initializer or its initargs could not be pickled: {exc!r}") from exc
        # No limit means the machine's memory; the node then has room for exactly the workers.
        limit_mb = memory_mb if memory_mb is not None else machine_memory_mb()
        app = App(f"executor-{secrets.token_hex(3)}")
        app.function(name=TASK, memory_mb=limit_mb, timeout=timeout, max_containers=max_workers, idle_timeout=None, init=init)(trampoline)
        nodes = LocalNodes(node_memory_mb=limit_mb * (max_workers + 1), start_method=start_method)
        thread = PlatformThread(app.run(nodes=nodes, keep_alive=NeverUnload(), queue_limit=None))
        _register_exit_hook()
        thread.start()
        self._engine = _Engine(thread, max_workers)
        try:
            self._engine.start()
        except BaseException:
            thread.stop()
            raise
        _engines.add(self._engine)
        self._finalizer = weakref.finalize(self, self._engine.shutdown, False, False)

    def __repr__(self) -> str:
        state = "shut down" if self._engine._shutdown else "running"
        return f"<microfaas Executor max_workers={self._max_workers}: {state}>"

    def __reduce__(self) -> Any:
        raise TypeError("an Executor cannot be pickled (a task cannot submit to the executor that runs it)")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its ``concurrent.futures.Future``.

        The call is pickled now (cloudpickle: lambdas, closures and ``__main__``
        functions travel by value); one that does not pickle fails its future with
        ``mf.SerializationError``.

        :raises RuntimeError: after ``shutdown()``, or while the interpreter exits.
        """
        try:
            fn_blob = dumps_callable(fn)
            call_blob = dumps_args(args, kwargs, fn)
        except SerializationError as exc:
            self._engine.check_open()
            return _failed(exc)
        return self._engine.submit(fn_blob, call_blob, False, name_of(fn))

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1) -> Iterator[T]:
        """``map(fn, *iterables)`` in the workers; results in input order.

        Every call is submitted now. The iterator raises a task's error when it reaches
        that item, and ``TimeoutError`` if a result is not there ``timeout`` seconds
        after this call. With ``chunksize > 1`` each chunk of items is one task (one
        invocation: the executor's ``timeout`` and ``memory_mb`` hold for the chunk).

        :raises ValueError: ``chunksize`` is less than 1.
        :raises RuntimeError: after ``shutdown()``.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        self._engine.check_open()
        try:
            fn_blob: bytes | SerializationError = dumps_callable(fn)  # once for every call of this map
        except SerializationError as exc:
            fn_blob = exc
        submit, name = self._engine.submit, name_of(fn)
        futures: list[concurrent.futures.Future[Any]] = []
        items = zip(*iterables, strict=False)
        batches: Iterable[Any] = items if chunksize == 1 else iter(lambda: list(itertools.islice(items, chunksize)), [])
        for batch in batches:
            try:
                if isinstance(fn_blob, SerializationError):
                    raise fn_blob
                call_blob = dumps_args(batch, {}, fn) if chunksize == 1 else dumps_chunk(batch, fn)
            except SerializationError as exc:
                futures.append(_failed(exc))
                continue
            futures.append(submit(fn_blob, call_blob, chunksize > 1, name))
        return _results(futures, end) if chunksize == 1 else _chunk_results(futures, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks, and stop the workers once the queued tasks are done.

        :param wait: return only when every task has finished and every worker has stopped.
        :param cancel_futures: cancel the tasks that have not started.
        """
        self._engine.shutdown(wait, cancel_futures)


def _wait_result(future: concurrent.futures.Future[T], end: float | None) -> T:
    try:
        return future.result(None if end is None else end - time.monotonic())
    finally:
        future.cancel()  # a no-op unless the wait timed out or was interrupted


def _results(futures: list[concurrent.futures.Future[T]], end: float | None) -> Iterator[T]:
    futures.reverse()  # popped from the end, so a yielded future is not kept
    try:
        while futures:
            yield _wait_result(futures.pop(), end)
    finally:
        for future in futures:
            future.cancel()


def _chunk_results(chunks: list[concurrent.futures.Future[list[Any]]], end: float | None) -> Iterator[Any]:
    chunks.reverse()
    try:
        while chunks:
            for value in _wait_result(chunks.pop(), end):
                if type(value) is TaskFailure:
                    raise value.exception()
                yield value
    finally:
        for future in chunks:
            future.cancel()


def _failed(error: BaseException) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_exception(error)
    return future
