"""App, @app.function, FunctionSpec and FunctionHandle: how users declare functions.

Settings are validated when the decorator runs: a bad value raises ``ValueError``
naming the function and the field (``"resize: memory_mb must be an int >= 1, got 0"``).
A handle calls into the app's running platform; outside ``async with app.run()``
it raises ``PlatformClosed``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack, overload

from .errors import PlatformClosed, UnknownFunction
from .events import Context, reset_context, set_context
from .lifecycle import EVENTS_KEPT
from .platform import Platform
from .sources import build_sources
from .sources.triggers import Stream, Topic
from .spec import NAME_PATTERN, FunctionSettings, FunctionSpec, Retries
from .store import as_store

if TYPE_CHECKING:
    from .blocking import SyncPlatform
    from .keepalive import KeepAlivePolicy
    from .nodes import NodeProvider
    from .runtime.call import Call
    from .sources.batch import BatchJob, BatchProgress
    from .store import Store

__all__ = ["App", "FunctionHandle", "FunctionSpec", "Retries"]

P = ParamSpec("P")
R = TypeVar("R")


class FunctionHandle(Generic[P, R]):
    """What ``@app.function`` returns: call the function on the platform, or locally.

    ``R`` is the handler's result (awaited, for ``async def`` handlers).
    """

    def __init__(self, app: App, spec: FunctionSpec) -> None:
        self.app = app
        self.spec = spec
        self.__doc__ = getattr(spec.fn, "__doc__", None)
        self.__wrapped__ = spec.fn

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<microfaas function {self.app.name}.{self.name}>"

    async def invoke(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one invocation in a container and return its result.

        :raises FunctionError: the handler raised.
        :raises FunctionTimeout, OutOfMemory, ContainerCrashed, ColdStartFailed, Throttled:
            the container could not finish it.
        :raises SerializationError: an argument or the result would not pickle.
        :raises PlatformClosed: the app is not running.
        """
        return await self.app._running().invoke(self.name, *args, **kwargs)  # type: ignore[no-any-return]

    async def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """Start an invocation in the background; the returned ``Call`` has its result."""
        return await self.app._running()._spawn(self.name, args, kwargs)

    def map(self, *iterables: Iterable[Any], return_exceptions: bool = False, max_in_flight: int | None = None) -> AsyncIterator[R]:
        """Invoke once per item (zipping several iterables, like ``map``); yield results in input order.

        :param return_exceptions: yield a failed item's error instead of raising it.
        :param max_in_flight: invocations running at once (default:
            ``(max_containers or 32) * concurrency``).
        """
        return self.app._running().map(self.name, *iterables, return_exceptions=return_exceptions, max_in_flight=max_in_flight)

    async def batch(
        self,
        items: Iterable[Any],
        *,
        max_parallel: int = 8,
        on_progress: Callable[[BatchProgress], Any] | None = None,
    ) -> BatchJob[R]:
        """Start a batch job: one task per item (the item is the single argument), in the background.

        Each task is retried per the function's ``retries``; one that fails every attempt
        goes to ``faas.dead_letters(name)`` as a ``BatchTask``. ``await job.wait()``, then
        ``job.results()`` (input order; a failed slot holds its ``FaaSError``).

        :param max_parallel: tasks running at once.
        :param on_progress: called with ``BatchProgress(done, failed, total)`` after each
            task finishes (in the platform's task; keep it quick, its errors are logged).
        :raises ValueError: a bad argument (the message names it).
        :raises SerializationError: an item would not pickle.
        :raises PlatformClosed: the app is not running.
        """
        return await self.app._running().batch(self.name, items, max_parallel=max_parallel, on_progress=on_progress)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the handler in this process, with no container (for unit tests).

        ``mf.context()`` works inside; an ``async def`` handler returns its coroutine.
        """
        ctx = Context(invocation_id="local", function_name=self.name, memory_mb=self.spec.memory_mb)
        if self.spec.is_async:

            async def run_with_context() -> Any:
                token = set_context(ctx)
                try:
                    return await self.spec.fn(*args, **kwargs)
                finally:
                    reset_context(token)

            return run_with_context()  # type: ignore[return-value]
        token = set_context(ctx)
        try:
            return self.spec.fn(*args, **kwargs)  # type: ignore[no-any-return]
        finally:
            reset_context(token)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The same as ``local``: a decorated function still works as a plain function."""
        return self.local(*args, **kwargs)


class App:
    """A named set of functions, run together by ``async with app.run() as faas``.

    :param name: the app's name (shown in errors and stats).
    :param preload: modules every node's zygote imports before it forks, so that cold
        starts inherit them (``("numpy", "jinja2")``; see "Preloading" in docs/lifecycle.md).
    """

    def __init__(self, name: str, *, preload: Iterable[str] = ()) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"App: name must start with a letter or _ and hold only letters, digits, '_', '.' or '-', got {name!r}")
        if isinstance(preload, str):
            raise ValueError(f"App: preload must be a tuple of module names, got the string {preload!r} (write ({preload!r},))")
        self.preload: tuple[str, ...] = tuple(preload)
        for module in self.preload:
            if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
                raise ValueError(f"App: preload must hold module names like 'numpy' or 'PIL.Image', got {module!r}")
        self.name = name
        self._functions: dict[str, FunctionHandle[Any, Any]] = {}
        self._topics: dict[str, Topic] = {}
        self._streams: dict[str, Stream] = {}
        self._platform: Platform | None = None

    def __repr__(self) -> str:
        return f"<microfaas App {self.name!r} with {len(self._functions)} functions>"

    @property
    def functions(self) -> Mapping[str, FunctionSpec]:
        return {name: handle.spec for name, handle in self._functions.items()}

    @property
    def topics(self) -> Mapping[str, Topic]:
        return dict(self._topics)

    @property
    def streams(self) -> Mapping[str, Stream]:
        return dict(self._streams)

    def topic(self, name: str) -> Topic:
        """Declare a pub/sub topic (or get the one declared); subscribe with ``topic.subscribe()``."""
        if name not in self._topics:
            self._topics[name] = Topic(name)
        return self._topics[name]

    def stream(self, name: str, shards: int = 1) -> Stream:
        """Declare an ordered stream of ``shards`` shards; consume it with ``stream.consume()``.

        :raises ValueError: the name is taken by a stream with another shard count.
        """
        stream = Stream(name, shards)
        existing = self._streams.setdefault(name, stream)
        if existing != stream:
            raise ValueError(f"app {self.name!r} already has a stream {name!r} with shards={existing.shards}")
        return existing

    def handle(self, name: str) -> FunctionHandle[Any, Any]:
        try:
            return self._functions[name]
        except KeyError:
            raise UnknownFunction(
                f"app {self.name!r} has no function {name!r}; it has: {', '.join(sorted(self._functions)) or 'none'}"
            ) from None

    @overload
    def function(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> FunctionHandle[P, R]: ...

    @overload
    def function(self, fn: Callable[P, R], /) -> FunctionHandle[P, R]: ...

    @overload
    def function(self, fn: None = None, /, **settings: Unpack[FunctionSettings]) -> _Decorator: ...

    def function(self, fn: Callable[..., Any] | None = None, /, **settings: Unpack[FunctionSettings]) -> Any:
        """Declare a function; use bare (``@app.function``) or with settings.

        :param memory_mb: memory limit of one container (its private memory); over it
            the container is killed and the call raises ``OutOfMemory`` (default 128).
        :param timeout: seconds one invocation may run (None: no limit); past it the
            container is killed and the call raises ``FunctionTimeout`` (default 30.0).
        :param concurrency: invocations one container runs at once (default 1).
        :param min_containers: pinned containers, started with the platform and never
            released for idleness (default 0).
        :param max_containers: cap on this function's containers (default None: no cap);
            calls past it wait.
        :param idle_timeout: seconds an idle container is kept (default 60.0; None: the
            platform's keep-alive policy decides).
        :param init: called once in each new container before its first call (sync or async).
        :param retries: extra attempts for spawned calls and events (int or ``Retries``; default 0).
        :param triggers: event sources that invoke this function.
        :param name: the registered name (default: the function's ``__name__``).
        :raises ValueError: a setting is unknown or invalid (the message names it).
        """

        def decorate(func: Callable[..., Any]) -> FunctionHandle[Any, Any]:
            spec = FunctionSpec.build(func, settings)
            if spec.name in self._functions:
                raise ValueError(f"app {self.name!r} already has a function named {spec.name!r}; pass name=... to rename one")
            if self._platform is not None:
                raise RuntimeError(f"app {self.name!r} is running; declare functions before `async with app.run()`")
            handle: FunctionHandle[Any, Any] = FunctionHandle(self, spec)
            self._functions[spec.name] = handle
            return handle

        if fn is not None:
            return decorate(fn)
        return decorate

    def run(
        self,
        *,
        nodes: NodeProvider | None = None,
        keep_alive: KeepAlivePolicy | None = None,
        queue_limit: int | None = 100_000,
        events_kept: int | None = EVENTS_KEPT,
        store: Store | str | os.PathLike[str] | None = None,
    ) -> Platform:
        """The platform for this app; start it with ``async with app.run() as faas``.

        :param nodes: where containers run: ``mf.LocalNodes()`` (the default) or ``mf.RayNodes()``.
        :param keep_alive: policy for functions whose ``idle_timeout`` is None
            (default ``mf.FixedKeepAlive()``).
        :param queue_limit: requests that may wait for a container at once; past it
            calls raise ``Throttled`` (None: no limit).
        :param events_kept: lifecycle events kept for ``faas.events()`` (None: all of them).
        :param store: where accepted work is kept: a path (a SQLite file, as
            ``mf.SqliteStore(path)``), a store object, or None for a new ``mf.MemoryStore()``.
            With a durable store a restart on the same store resumes what was left
            (docs/durability.md). It is opened by ``async with``, which raises a ``StoreError``
            when it cannot be (not a store, a newer schema, read-only, full, or open elsewhere).
        :raises ValueError: a trigger names a topic or stream the app did not declare; a bad ``store``.
        """
        sources = build_sources(self.functions, topics=self._topics, streams=self._streams, app_name=self.name)
        return Platform(
            self,
            nodes=nodes,
            keep_alive=keep_alive,
            queue_limit=queue_limit,
            sources=sources,
            events_kept=events_kept,
            store=as_store(store),
        )

    def run_sync(self, **options: Any) -> SyncPlatform:
        """The platform for code that is not async: ``with app.run_sync() as faas``.

        It runs on a thread and event loop of its own; ``faas`` has every method of the
        async platform, blocking (see docs/sync.md). Takes the same arguments as ``run``.

        :raises RuntimeError: on entering, when this thread runs an event loop (use ``async with app.run()``).
        """
        from .blocking import SyncPlatform

        return SyncPlatform(self.run(**options))

    def _running(self) -> Platform:
        platform = self._platform
        if platform is None:
            raise PlatformClosed(f"app {self.name!r} is not running; call functions inside `async with app.run() as faas:`")
        return platform


_Decorator = Callable[[Callable[..., Any]], FunctionHandle[Any, Any]]
