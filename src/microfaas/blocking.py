"""The platform for code that is not async: ``with app.run_sync() as faas``.

How this works. ``PlatformThread`` runs a ``Platform`` on an event loop of its
own, in a thread of its own, behind anyio's blocking portal
(``anyio.from_thread.start_blocking_portal``). One portal task enters the
platform (``async with``) and waits for the stop signal; every blocking call is
another portal task, so the platform's state is only ever touched from its own
loop, and any number of threads may call at once. Stopping sets the signal, waits
for the platform's ``__aexit__`` (which stops every container and node), then
stops the portal and joins its thread. The wait survives a KeyboardInterrupt: a
second Ctrl-C does not leave processes behind, it is re-raised once they are gone.

``SyncPlatform`` (the ``faas`` of ``with app.run_sync() as faas``) gives every
method of ``Platform`` a blocking twin with the same arguments and errors; what
those return that lives on the loop (a ``Call``, a ``BatchJob``, a running topic
or stream, an async iterator) comes back as a blocking view of it. Methods the
platform gains later get a twin by the same rules (``SyncPlatform.__getattr__``).

This module sits between ``app`` and ``platform``: it imports ``platform`` and
below (the views are in ``blocking_views``), never ``app`` (``App.run_sync``
imports it) nor ``executor``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import anyio
import anyio.from_thread

from .blocking_views import SyncBatchJob, SyncCall, SyncEvents, SyncStream, SyncTopic, blocking_view
from .errors import PlatformClosed, UnknownFunction

if TYPE_CHECKING:
    from .lifecycle import LifecycleEvent
    from .platform import Platform
    from .runtime.delivery import DeadLetter
    from .runtime.stats import ContainerInfo, FunctionStats, PlatformUsage
    from .sources.batch import BatchProgress

__all__ = ["PlatformThread", "SyncPlatform"]

T = TypeVar("T")

_END = object()  # the end of an async iterator, as a value that can cross the portal


class PlatformThread:
    """A ``Platform`` running on an event loop of its own, in a thread of its own.

    ``start()`` returns once the platform is up; ``call(fn, ...)`` runs ``fn`` (sync
    or async) on its loop and blocks for the result; ``stop()`` stops the platform
    and its thread. Safe to use from any number of threads.

    :param platform: a platform not yet started (``app.run(...)``).
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._lock = threading.Lock()
        self._state = "new"  # new -> starting -> running -> stopping -> stopped
        self._stopped = threading.Event()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop_signal: anyio.Event | None = None
        self._stop_requested = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def __repr__(self) -> str:
        return f"<PlatformThread of app {self.platform.app.name!r}: {self._state}>"

    @property
    def running(self) -> bool:
        return self._state == "running"

    def in_loop_thread(self) -> bool:
        """Whether the caller is the platform's own thread (where blocking would deadlock)."""
        return threading.get_ident() == self._loop_thread

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's thread and the platform on it; return once it runs.

        :raises RuntimeError: started before.
        :raises BaseException: whatever the platform's start raised (nothing is left running).
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"{self!r} was started before; make a new one")
            self._state = "starting"
        self._portal_cm = anyio.from_thread.start_blocking_portal(name=f"microfaas-{self.platform.app.name}")
        self._portal = self._portal_cm.__enter__()
        self._served = self._portal.start_task_soon(self._serve)
        _live.add(self)
        try:
            _wait_any(self._ready, self._served)
            if not self._ready.done():
                self._served.result()  # the platform's start failed: raise its error
        except BaseException:
            self._served.cancel()
            self._finish()
            raise
        with self._lock:
            if self._state == "starting":
                self._state = "running"

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_signal = anyio.Event()
        # Checked after the signal exists: a stop asked for meanwhile either sees the
        # signal (and sets it) or set this flag before (and is seen here).
        if self._stop_requested:
            self._stop_signal.set()
        async with self.platform:
            self._ready.set_result(None)
            await self._stop_signal.wait()

    def stop(self) -> None:
        """Stop the platform (every container and node) and the loop's thread; return when they are gone.

        Idempotent; a second caller waits for the first. A KeyboardInterrupt while
        waiting is re-raised once everything has stopped.

        :raises RuntimeError: called from the platform's own thread (use ``stop_soon``).
        """
        if self.in_loop_thread():
            raise RuntimeError("a PlatformThread cannot be stopped (and waited for) from its own thread; use stop_soon()")
        if self._state == "new":
            return
        if self._signal_stop():
            self._finish()
        else:
            _wait_through_interrupts(self._stopped.wait)

    def stop_soon(self) -> None:
        """Begin stopping, and return at once; a helper thread sees it through (safe from any thread)."""
        if self._signal_stop():
            threading.Thread(target=self._finish, name=f"microfaas-stop-{self.platform.app.name}").start()

    def _signal_stop(self) -> bool:
        """Ask the platform to stop; True for the one caller that must then ``_finish``."""
        with self._lock:
            if self._state not in ("starting", "running"):
                return False
            self._state = "stopping"
        self._stop_requested = True  # before reading the signal: see _serve
        loop, signal = self.loop, self._stop_signal
        if loop is not None and signal is not None:
            try:
                loop.call_soon_threadsafe(signal.set)
            except RuntimeError:
                pass  # the loop has ended already
        return True

    def _finish(self) -> None:
        try:
            _wait_through_interrupts(lambda: concurrent.futures.wait([self._served]))
            # The platform has stopped: what else runs in the portal (a blocking call from
            # another thread, an executor's lanes) is cancelled, not waited for.
            try:
                self._portal.call(self._portal.stop, True)
            except RuntimeError:
                pass  # the portal had stopped already
            self._portal_cm.__exit__(None, None, None)
        finally:
            self._state = "stopped"
            self._stopped.set()
            _live.discard(self)
        if not self._served.cancelled() and (error := self._served.exception()) is not None:
            raise error  # the platform itself failed (a bug): say so

    # -- calling into the loop -----------------------------------------------------------------

    def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` on the platform's loop (awaited, if async); block for its result.

        A KeyboardInterrupt while waiting cancels it there.

        :raises PlatformClosed: the platform is not running.
        :raises BaseException: what ``func`` raised.
        """
        if self._state != "running":
            self._closed()
        if self.in_loop_thread():
            raise RuntimeError("a blocking microfaas call was made from the platform's own thread; it would deadlock")
        if kwargs:
            func, args = functools.partial(func, *args, **kwargs), ()
        try:
            future = self._portal.start_task_soon(func, *args)
        except RuntimeError:  # the portal stopped meanwhile
            self._closed()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            self._closed()
        except BaseException:
            future.cancel()
            raise

    def call_soon(self, callback: Callable[..., object], /, *args: Any) -> None:
        """Schedule ``callback(*args)`` on the platform's loop, without waiting (any thread).

        :raises PlatformClosed: the platform's loop has ended.
        """
        loop = self.loop
        if loop is None:
            self._closed()
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            self._closed()

    def start_task(self, func: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        """Start ``func(*args)`` as a task of the platform's portal; its future has the outcome.

        :raises PlatformClosed: the platform is not running.
        """
        if self._state != "running":
            self._closed()
        try:
            return self._portal.start_task_soon(func, *args)
        except RuntimeError:
            self._closed()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator living on the platform's loop, as a blocking iterator (closed with it)."""
        try:
            while (item := self.call(_next_or_end, iterator)) is not _END:
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and self._state == "running" and not self.in_loop_thread():
                try:
                    self.call(aclose)
                except PlatformClosed:
                    pass

    def _closed(self) -> NoReturn:
        raise PlatformClosed(f"app {self.platform.app.name!r} is not running; call it inside `with app.run_sync() as faas:`")


async def _next_or_end(iterator: AsyncIterator[T]) -> T | object:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


def _wait_any(*futures: concurrent.futures.Future[Any]) -> None:
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)


def _wait_through_interrupts(wait: Callable[[], object]) -> None:
    """Run ``wait()`` to its end even if KeyboardInterrupts arrive meanwhile; then re-raise the last one."""
    interrupt: KeyboardInterrupt | None = None
    while True:
        try:
            wait()
            break
        except KeyboardInterrupt as exc:
            interrupt = exc
    if interrupt is not None:
        raise interrupt


# Platform threads still running; stopped when the interpreter exits (after its other
# threads have ended), so that no container outlives the program.
_live: weakref.WeakSet[PlatformThread] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for thread in list(_live):
        thread.stop()


# -- the blocking platform ---------------------------------------------------------------------


class _Named(Protocol):
    """A function handle (``app.py``'s ``FunctionHandle``), as far as a blocking call needs it."""

    @property
    def name(self) -> str: ...

    @property
    def app(self) -> Any: ...


class SyncPlatform:
    """A running app for code that is not async: ``with app.run_sync() as faas``.

    The platform runs on its own thread and event loop. Every method of ``mf.Platform``
    is here too, blocking, with the same arguments and the same errors; functions are
    named by name or by handle (``faas.invoke(resize, img, 200)``). Safe to call from
    many threads at once. Leaving the ``with`` block (also by an exception or Ctrl-C)
    stops every container before it returns.

    :param platform: the platform to run (``app.run(...)``, not yet started).
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._thread = PlatformThread(platform)

    def __repr__(self) -> str:
        return f"<microfaas SyncPlatform of app {self._platform.app.name!r}: {'running' if self._thread.running else 'stopped'}>"

    def __enter__(self) -> SyncPlatform:
        _refuse_running_loop(self._platform.app.name)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.stop()

    @property
    def platform(self) -> Platform:
        """The async platform behind this one (its methods must be awaited on its own loop)."""
        return self._platform

    def _name(self, function: str | _Named) -> str:
        if isinstance(function, str):
            return function
        app = self._platform.app
        if function.app is not app:
            raise UnknownFunction(f"{function!r} belongs to app {function.app.name!r}, not to app {app.name!r} that is running here")
        return function.name

    # -- calling -------------------------------------------------------------------------------

    def invoke(self, function: str | _Named, /, *args: Any, **kwargs: Any) -> Any:
        """Invoke a function (by name or handle) and return its result; see ``FunctionHandle.invoke`` for the errors."""
        return self._thread.call(self._platform.invoke, self._name(function), *args, **kwargs)

    def spawn(self, function: str | _Named, /, *args: Any, **kwargs: Any) -> SyncCall[Any]:
        """Start an invocation in the background; ``call.result(timeout=...)`` waits for it."""
        return SyncCall(self._thread.call(self._platform.spawn, self._name(function), *args, **kwargs), self._thread)

    def map(
        self, function: str | _Named, /, *iterables: Iterable[Any], return_exceptions: bool = False, max_in_flight: int | None = None
    ) -> Iterator[Any]:
        """Invoke once per item and yield the results in input order (see ``FunctionHandle.map``)."""
        iterator = self._platform.map(self._name(function), *iterables, return_exceptions=return_exceptions, max_in_flight=max_in_flight)
        return self._thread.iterate(iterator)

    def batch(
        self,
        function: str | _Named,
        items: Iterable[Any],
        /,
        *,
        max_parallel: int = 8,
        on_progress: Callable[[BatchProgress], Any] | None = None,
    ) -> SyncBatchJob[Any]:
        """Start a batch job, one task per item (see ``FunctionHandle.batch``); ``on_progress`` runs on the platform's thread."""
        job = self._thread.call(self._platform.batch, self._name(function), items, max_parallel=max_parallel, on_progress=on_progress)
        return SyncBatchJob(job, self._thread)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until nothing is in flight (see ``Platform.drain``).

        :raises TimeoutError: naming what is still pending after ``timeout`` seconds.
        """
        self._thread.call(self._platform.drain, timeout)

    def kill(self, container: str | ContainerInfo) -> None:
        """Kill a running container as a real crash; return once the platform has seen it die."""
        self._thread.call(self._platform.kill, container)

    def serve_http(self, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Serve the platform over HTTP, blocking until the platform stops or Ctrl-C (see ``Platform.serve_http``)."""
        self._thread.call(self._platform.serve_http, host, port, **options)

    # -- sources -------------------------------------------------------------------------------

    def topic(self, name: str) -> SyncTopic:
        """The running topic ``name``: ``faas.topic("orders").publish(data)``."""
        return SyncTopic(self._thread.call(self._platform.topic, name), self._thread)

    def stream(self, name: str) -> SyncStream:
        """The running stream ``name``: ``faas.stream("clicks").put(value, key=...)``."""
        return SyncStream(self._thread.call(self._platform.stream, name), self._thread)

    # -- observing -----------------------------------------------------------------------------

    def stats(self, function: str | _Named) -> FunctionStats:
        """What has happened to a function so far."""
        return self._thread.call(self._platform.stats, self._name(function))  # type: ignore[no-any-return]

    def usage(self) -> PlatformUsage:
        """Nodes, node-seconds, container-seconds by state and idle MB·s so far."""
        return self._thread.call(self._platform.usage)  # type: ignore[no-any-return]

    def containers(self, function: str | _Named | None = None) -> list[ContainerInfo]:
        """The live containers of a function (or of every function)."""
        return self._thread.call(self._platform.containers, None if function is None else self._name(function))  # type: ignore[no-any-return]

    def function_names(self) -> list[str]:
        return self._thread.call(self._platform.function_names)  # type: ignore[no-any-return]

    def dead_letters(self, function: str | _Named) -> list[DeadLetter]:
        """Events for a function that failed every attempt, oldest first."""
        return self._thread.call(self._platform.dead_letters, self._name(function))  # type: ignore[no-any-return]

    def events(self, kind: str | Iterable[str] | None = None, function: str | None = None) -> list[LifecycleEvent]:
        """Lifecycle events so far, oldest first (see ``Platform.events``)."""
        return self._thread.call(self._platform.events, kind, function)  # type: ignore[no-any-return]

    def subscribe_events(self, kind: str | Iterable[str] | None = None, function: str | None = None, *, replay: bool = False) -> SyncEvents:
        """Every later event, as a blocking iterator that ends when the platform stops (``with`` it to unsubscribe)."""
        stream = self._thread.call(self._platform.subscribe_events, kind, function, replay=replay)
        return SyncEvents(stream, self._thread)

    # -- faults (for tests) ----------------------------------------------------------------------

    def inject(self, function: str | _Named, /, *, crash: int = 0, timeout: int = 0, start_failure: int = 0) -> None:
        """Make a function's next calls crash or time out, or its next starts fail (see ``Platform.inject``)."""
        self._thread.call(self._platform.inject, self._name(function), crash=crash, timeout=timeout, start_failure=start_failure)

    def armed_faults(self, function: str | _Named) -> dict[str, int]:
        return self._thread.call(self._platform.armed_faults, self._name(function))  # type: ignore[no-any-return]

    def clear_faults(self, function: str | _Named | None = None) -> None:
        self._thread.call(self._platform.clear_faults, None if function is None else self._name(function))

    def __getattr__(self, name: str) -> Any:
        """A blocking twin of any other public ``Platform`` attribute (methods the platform gains later)."""
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._platform, name)
        if not callable(attribute):
            return blocking_view(attribute, self._thread)
        thread = self._thread

        @functools.wraps(attribute)
        def twin(*args: Any, **kwargs: Any) -> Any:
            if inspect.isasyncgenfunction(attribute):
                return thread.iterate(attribute(*args, **kwargs))
            return blocking_view(thread.call(attribute, *args, **kwargs), thread)

        return twin


def _refuse_running_loop(app_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"app {app_name!r}: app.run_sync() blocks, and this thread runs an event loop; "
        "in async code use `async with app.run() as faas:` instead"
    )
