"""App, @app.function, FunctionSpec and FunctionHandle: how users declare functions.

Settings are validated when the decorator runs: a bad value raises ``ValueError``
naming the function and the field (``"resize: memory_mb must be an int >= 1, got 0"``).
A handle calls into the app's running platform; outside ``async with app.run()``
it raises ``PlatformClosed``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from .errors import PlatformClosed, UnknownFunction
from .events import Context, Trigger, reset_context, set_context
from .scheduler import FunctionProfile
from .sources.triggers import Stream, Topic

if TYPE_CHECKING:
    from .call import Call
    from .keepalive import KeepAlivePolicy
    from .nodes import NodeProvider
    from .platform import Platform
    from .sources.batch import BatchJob, BatchProgress

__all__ = ["App", "FunctionHandle", "FunctionSpec", "Retries"]

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _fail(instance: Any, field: str, expectation: str, value: object) -> ValueError:
    owner = getattr(instance, "name", None) or type(instance).__name__
    return ValueError(f"{owner}: {field} must be {expectation}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(minimum: int, *, optional: bool = False) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    expectation = f"an int >= {minimum}" + (" or None" if optional else "")

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not _is_int(value) or value < minimum:
            raise _fail(instance, attribute.name, expectation, value)

    return check


def _seconds(*, positive: bool, optional: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    expectation = ("a number > 0" if positive else "a number >= 0") + " (seconds)" + (" or None" if optional else "")

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or value != value or value < 0 or (positive and value == 0):
            raise _fail(instance, attribute.name, expectation, value)

    return check


@attrs.frozen
class Retries:
    """How a spawned call or an event is retried after a failure.

    The n-th retry waits ``min(max_delay, initial_delay * backoff ** (n - 1))`` seconds,
    with full jitter when ``jitter`` is set (AWS's advice for retry storms).

    :param max_retries: extra attempts after the first.
    :param initial_delay: seconds before the first retry.
    :param backoff: multiplier per further retry.
    :param max_delay: cap on one delay.
    :param jitter: draw each delay uniformly from ``[0, delay]``.
    :param max_event_age: seconds after its first attempt past which an event is not
        retried but dead-lettered (None: no limit; Lambda's MaximumEventAgeInSeconds).
    """

    max_retries: int = attrs.field(default=0, validator=_int_at_least(0))
    initial_delay: float = attrs.field(default=1.0, validator=_seconds(positive=False, optional=False))
    backoff: float = attrs.field(default=2.0)
    max_delay: float = attrs.field(default=60.0, validator=_seconds(positive=False, optional=False))
    jitter: bool = True
    max_event_age: float | None = attrs.field(default=None, validator=_seconds(positive=True, optional=True))

    @backoff.validator
    def _check_backoff(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not _is_number(value) or value < 1:
            raise _fail(self, attribute.name, "a number >= 1", value)

    def delay(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.backoff ** (retry - 1)))


def _to_retries(value: object) -> object:
    if _is_int(value):
        if value < 0:  # type: ignore[operator]
            return value  # the validator names the problem
        return Retries(max_retries=value)  # type: ignore[arg-type]
    return value


def _to_triggers(value: object) -> object:
    if isinstance(value, Trigger):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


@attrs.frozen(kw_only=True)
class FunctionSpec:
    """A declared function and its settings (see ``App.function`` for each field)."""

    name: str = attrs.field()
    fn: Callable[..., Any] = attrs.field(eq=False, repr=False)
    memory_mb: int = attrs.field(default=128, validator=_int_at_least(1))
    timeout: float | None = attrs.field(default=30.0, validator=_seconds(positive=True, optional=True))
    concurrency: int = attrs.field(default=1, validator=_int_at_least(1))
    min_containers: int = attrs.field(default=0, validator=_int_at_least(0))
    max_containers: int | None = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    idle_timeout: float | None = attrs.field(default=60.0, validator=_seconds(positive=False, optional=True))
    init: Callable[[], Any] | None = attrs.field(default=None, eq=False, repr=False)
    retries: Retries = attrs.field(factory=Retries, converter=_to_retries)
    triggers: tuple[Trigger, ...] = attrs.field(default=(), converter=_to_triggers)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not _NAME.match(value):
            raise ValueError(f"function name must start with a letter or _ and hold only letters, digits, '_', '.' or '-', got {value!r}")

    @fn.validator
    def _check_fn(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not callable(value):
            raise _fail(self, "fn", "callable", value)

    @init.validator
    def _check_init(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not callable(value):
            raise _fail(self, "init", "a callable or None", value)

    @retries.validator
    def _check_retries(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, Retries):
            raise _fail(self, "retries", "an int >= 0 or mf.Retries(...)", value)

    @triggers.validator
    def _check_triggers(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple) or not all(isinstance(t, Trigger) for t in value):
            raise _fail(self, "triggers", "a list of triggers (topic.subscribe(), mf.Every(), ...)", value)

    def __attrs_post_init__(self) -> None:
        if self.max_containers is not None and self.min_containers > self.max_containers:
            raise ValueError(f"{self.name}: min_containers ({self.min_containers}) must not exceed max_containers ({self.max_containers})")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def profile(self) -> FunctionProfile:
        return FunctionProfile.of(self)


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
        return await self.app._running().spawn(self.name, *args, **kwargs)

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
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"App: name must start with a letter or _ and hold only letters, digits, '_', '.' or '-', got {name!r}")
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
    def function(
        self,
        fn: None = None,
        /,
        *,
        memory_mb: int = 128,
        timeout: float | None = 30.0,
        concurrency: int = 1,
        min_containers: int = 0,
        max_containers: int | None = None,
        idle_timeout: float | None = 60.0,
        init: Callable[[], Any] | None = None,
        retries: int | Retries = 0,
        triggers: Iterable[Trigger] = (),
        name: str | None = None,
    ) -> _Decorator: ...

    def function(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        memory_mb: int = 128,
        timeout: float | None = 30.0,
        concurrency: int = 1,
        min_containers: int = 0,
        max_containers: int | None = None,
        idle_timeout: float | None = 60.0,
        init: Callable[[], Any] | None = None,
        retries: int | Retries = 0,
        triggers: Iterable[Trigger] = (),
        name: str | None = None,
    ) -> Any:
        """Declare a function; use bare (``@app.function``) or with settings.

        :param memory_mb: memory limit of one container (its private memory); over it
            the container is killed and the call raises ``OutOfMemory``.
        :param timeout: seconds one invocation may run (None: no limit); past it the
            container is killed and the call raises ``FunctionTimeout``.
        :param concurrency: invocations one container runs at once.
        :param min_containers: pinned containers, started with the platform and never
            released for idleness.
        :param max_containers: cap on this function's containers (None: no cap); calls
            past it wait.
        :param idle_timeout: seconds an idle container is kept (None: the platform's
            keep-alive policy decides).
        :param init: called once in each new container before its first call (sync or async).
        :param retries: extra attempts for spawned calls and events (int or ``Retries``).
        :param triggers: event sources that invoke this function.
        :param name: the registered name (default: the function's ``__name__``).
        :raises ValueError: a setting is invalid (the message names it).
        """

        def decorate(func: Callable[..., Any]) -> FunctionHandle[Any, Any]:
            if not callable(func):
                raise ValueError(f"@app.function must decorate a callable, got {func!r}")
            spec = FunctionSpec(
                name=name if name is not None else getattr(func, "__name__", ""),
                fn=func,
                memory_mb=memory_mb,
                timeout=timeout,
                concurrency=concurrency,
                min_containers=min_containers,
                max_containers=max_containers,
                idle_timeout=idle_timeout,
                init=init,
                retries=retries,  # type: ignore[arg-type]
                triggers=triggers,  # type: ignore[arg-type]
            )
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
    ) -> Platform:
        """The platform for this app; start it with ``async with app.run() as faas``.

        :param nodes: where containers run: ``mf.LocalNodes()`` (the default) or ``mf.RayNodes()``.
        :param keep_alive: policy for functions whose ``idle_timeout`` is None
            (default ``mf.FixedKeepAlive()``).
        :param queue_limit: requests that may wait for a container at once; past it
            calls raise ``Throttled`` (None: no limit).
        """
        from .platform import Platform
        from .sources import build_sources

        return Platform(self, nodes=nodes, keep_alive=keep_alive, queue_limit=queue_limit, sources=build_sources(self))

    def _running(self) -> Platform:
        platform = self._platform
        if platform is None:
            raise PlatformClosed(f"app {self.name!r} is not running; call functions inside `async with app.run() as faas:`")
        return platform


_Decorator = Callable[[Callable[..., Any]], FunctionHandle[Any, Any]]
