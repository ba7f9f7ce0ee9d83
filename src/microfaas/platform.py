"""Platform: the in-process APIServer, a facade over the runtime.

``app.run(...)`` makes one; ``async with`` starts it. Each public method is a short
delegation: the calls to ``runtime/`` (invocations, delivery, stats, lifecycle
events), the topics and streams to their running sources, HTTP to ``http``.
What one call goes through is told in ``runtime/runtime.py`` and docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from .errors import FaaSError, UnknownCall, UnknownFunction
from .http import serve
from .http.routes import build_routes
from .lifecycle import EVENTS_KEPT
from .runtime.runtime import Runtime
from .runtime.stats import ContainerInfo
from .sources import TriggerWiring
from .sources.batch import BatchJob, resume_batches, start_batch

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from .keepalive import KeepAlivePolicy
    from .lifecycle import LifecycleEvent
    from .nodes import NodeProvider
    from .runtime.call import Call
    from .runtime.delivery import DeadLetter, Source
    from .runtime.deploy import Deployment
    from .runtime.stats import FunctionStats, PlatformUsage
    from .sources.batch import BatchProgress
    from .sources.streams import StreamSource
    from .sources.topics import TopicSource
    from .spec import FunctionSpec
    from .store import Store

__all__ = ["Platform"]


def _the_one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The user's error inside a task group's exception group: a group of one ``FaaSError``
    or ``ValueError`` (nested or not) is that error, so ``except ValueError`` catches it."""
    errors = group.exceptions
    while len(errors) == 1 and isinstance(errors[0], BaseExceptionGroup):
        errors = errors[0].exceptions
    if len(errors) == 1 and isinstance(errors[0], FaaSError | ValueError):
        return errors[0]
    return group


class Platform:
    """A running app: invoke its functions, spawn and map them, read stats.

    Made by ``app.run(...)``; use it as ``async with app.run() as faas``.

    :param app: what runs: anything with a ``name`` and its ``functions`` by name
        (an ``mf.App``); it is told it runs through ``_platform``.
    :param events_kept: lifecycle events kept for ``events()`` (None: all of them).
    """

    def __init__(
        self,
        app: Any,
        *,
        nodes: NodeProvider | None = None,
        keep_alive: KeepAlivePolicy | None = None,
        queue_limit: int | None = 100_000,
        sources: Iterable[Source] = (),
        events_kept: int | None = EVENTS_KEPT,
        store: Store | None = None,
    ) -> None:
        self.app = app
        self._runtime = Runtime(
            app.name,
            app.functions,
            nodes=nodes,
            keep_alive=keep_alive,
            queue_limit=queue_limit,
            sources=sources,
            events_kept=events_kept,
            store=store,
            wiring=TriggerWiring(check_routes=build_routes),
            preload=tuple(getattr(app, "preload", ())),
        )
        self.nodes_config: NodeProvider = self._runtime.provider

    def __repr__(self) -> str:
        return f"<microfaas Platform of app {self.app.name!r}: {self._runtime.state}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Platform:
        if self._runtime.state != "new":
            raise RuntimeError("a Platform runs once; call app.run() again for a new one")
        if self.app._platform is not None:
            raise RuntimeError(f"app {self.app.name!r} is already running")
        self._runtime.prepare()
        self.app._platform = self
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._runtime.start(self._tg)
            for job in resume_batches(self._runtime):
                self._runtime.add_batch_job(job)
        except BaseException as exc:
            await self._stop()
            self._tg.cancel_scope.cancel()
            try:
                if await self._tg.__aexit__(type(exc), exc, exc.__traceback__):
                    raise RuntimeError("platform start was interrupted") from exc
            except BaseExceptionGroup as group:
                raise _the_one_error(group) from None
            finally:
                await self._runtime.close_store()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self._stop()
        self._tg.cancel_scope.cancel()
        # The body's own exception propagates as it is, not wrapped in a group; only a
        # failure of the platform's own tasks (a bug) surfaces from the task group.
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            await self._runtime.close_store()  # last: the tasks that ended above may still have written

    async def _stop(self) -> None:
        if self.app._platform is self:
            self.app._platform = None
        await self._runtime.stop()

    @property
    def closed(self) -> bool:
        return self._runtime.closed

    # -- the API ---------------------------------------------------------------------------

    async def invoke(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Invoke function ``name`` and return its result (see ``FunctionHandle.invoke``)."""
        return await self._runtime.invoke(name, args, kwargs)

    def _start_invocation(self, name: str, blob: bytes, on_done: Callable[[Any, FaaSError | None], object]) -> None:
        """Invoke ``name`` with no task and no await, its ``(args, kwargs)`` pickled already (``dump_args``):
        ``on_done(value, None)`` or ``on_done(None, error)`` runs on the loop when it ends. For ``mf.Executor``.

        :raises FaaSError: the platform is not running, or has no function ``name``.
        """
        self._runtime.start_invocation(name, blob, on_done)

    async def spawn(self, name: str, /, *args: Any, **kwargs: Any) -> Call[Any]:
        """Start an invocation in the background, retried per the function's ``retries``.

        Returns once the call is stored (with a durable store it then survives a crash).

        :raises StoreError: the call could not be stored; it was not accepted.
        """
        return await self._runtime.spawn(name, args, kwargs)

    def _spawn(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Coroutine[Any, Any, Call[Any]]:
        """``spawn`` as ``FunctionHandle.spawn`` awaits it: the runtime's coroutine itself, one frame
        fewer to keep while the call is being stored (a burst of spawns keeps thousands)."""
        return self._runtime.spawn(name, args, kwargs)

    def call(self, call_id: str) -> Call[Any]:
        """The spawned call ``call_id`` (``call.id``): running, finished, or made before a restart on this store.

        :raises UnknownCall: no call by that id (or it finished more than the store's ``result_ttl`` ago).
        """
        return self._runtime.call(call_id)

    def map(
        self, name: str, /, *iterables: Iterable[Any], return_exceptions: bool = False, max_in_flight: int | None = None
    ) -> AsyncIterator[Any]:
        """Invoke ``name`` once per item and yield the results in input order."""
        return self._runtime.map(name, iterables, return_exceptions=return_exceptions, max_in_flight=max_in_flight)

    async def batch(
        self,
        name: str,
        items: Iterable[Any],
        /,
        *,
        max_parallel: int = 8,
        on_progress: Callable[[BatchProgress], Any] | None = None,
    ) -> BatchJob[Any]:
        """Start a batch job: one task per item, run in the background (see ``FunctionHandle.batch``)."""
        job = await start_batch(self._runtime, name, items, max_parallel=max_parallel, on_progress=on_progress)
        self._runtime.add_batch_job(job)
        return job

    def batch_job(self, job_id: str) -> BatchJob[Any]:
        """The batch job ``job_id`` (``job.id``): running, finished, or started before a restart on this store.

        :raises UnknownCall: no batch job by that id (or it finished more than the store's ``result_ttl`` ago).
        """
        job = self._runtime.recent_jobs.get(job_id)
        if job is not None:
            return job  # type: ignore[no-any-return]
        stored = self._runtime.store.get_job(job_id)
        if stored is None:
            raise UnknownCall(
                f"no batch job {job_id!r} on this platform's store (never started here, or finished more than result_ttl ago)"
            )
        return BatchJob.from_stored(stored)

    def stats(self, name: str) -> FunctionStats:
        """What has happened to function ``name`` so far."""
        return self._runtime.function_stats(name)

    def usage(self) -> PlatformUsage:
        """Nodes, node-seconds, container-seconds by state and idle MB·s so far."""
        return self._runtime.usage()

    def containers(self, name: str | None = None) -> list[ContainerInfo]:
        """The live containers of function ``name`` (or of every function)."""
        return self._runtime.containers(name)

    def function_names(self) -> list[str]:
        """The names of the functions this platform serves: the declared and the deployed ones."""
        return list(self._runtime.functions)

    async def deploy(self, fn: Callable[..., Any], /, **settings: Any) -> Deployment:
        """Deploy ``fn`` while the platform runs: a new function, or a new version of a deployed one.

        Takes the settings of ``@app.function`` (``name=`` defaults to ``fn.__name__``).
        Calls that start after it returns run the new version; running ones finish on
        theirs; idle containers of the old version are retired. The new version's
        triggers replace the old one's (docs/durability.md says how each kind hands
        over). With a durable store the deployment is kept, and a restart serves it again.

        :raises ValueError: a bad setting, a trigger that cannot be wired (an undeclared
            topic or stream, a timer name or Http route of another function), a name
            declared with ``@app.function``, or it fits no node; nothing changed.
        :raises SerializationError: ``fn`` (or its init) will not pickle; nothing changed.
        :raises StoreError: the deployment could not be stored; nothing changed.
        """
        return await self._runtime.deployer.deploy(fn, settings)

    async def undeploy(self, name: str) -> None:
        """Take deployed function ``name`` away (its running calls finish; its containers and triggers go).

        :raises UnknownFunction: no deployed function by that name.
        :raises ValueError: ``name`` is declared with ``@app.function``.
        """
        await self._runtime.deployer.undeploy(name)

    def versions(self, name: str) -> list[int]:
        """The versions of deployed function ``name``, oldest first (also those kept in the store from before).

        :raises UnknownFunction: ``name`` was never deployed here.
        """
        versions = self._runtime.deployer.versions.get(name)
        if not versions:
            raise UnknownFunction(f"app {self.app.name!r} has no deployed function {name!r}")
        return list(versions)

    def function(self, name: str) -> FunctionSpec:
        """The settings of function ``name``.

        :raises UnknownFunction: the app has no such function.
        """
        return self._runtime.function(name, require_open=False)

    def dead_letters(self, name: str) -> list[DeadLetter]:
        """Events for function ``name`` that failed every attempt, oldest first, with their errors
        (kept in the store: also those from before a restart)."""
        return self._runtime.dead_letters(name)

    async def redrive(self, name: str) -> int:
        """Send function ``name``'s dead letters back into their sources; return how many went.

        A topic's letters go back to the subscription that failed them; the others are
        spawned again with the arguments their handler had. They are stored (and the
        letters removed) before this returns. Letters that could not be loaded from the
        store (``StoreCorrupt``) stay.

        :raises UnknownFunction, PlatformClosed: as for ``invoke``.
        :raises StoreError: they could not be stored.
        """
        return await self._runtime.redrive(name)

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the API asks for it
        """Wait until nothing is in flight: spawned calls, topic deliveries, stream records, batch tasks.

        :raises TimeoutError: naming what is still pending after ``timeout`` seconds.
        """
        await self._runtime.drain(timeout)

    def topic(self, name: str) -> TopicSource:
        """The running topic ``name``: ``await faas.topic("orders").publish(data)``."""
        return self.source(f"topic:{name}")  # type: ignore[return-value]

    def stream(self, name: str) -> StreamSource:
        """The running stream ``name``: ``await faas.stream("clicks").put(value, key=...)``."""
        return self.source(f"stream:{name}")  # type: ignore[return-value]

    def source(self, key: str) -> Source:
        """The running event source ``key`` (``"topic:orders"``, ``"stream:clicks"``, ``"timer:tick"``)."""
        return self._runtime.source(key)

    async def serve_http(self, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Serve this platform over HTTP on uvicorn until cancelled (extra ``http``).

        Serves the functions' ``mf.Http`` routes and ``/healthz``; with
        ``invoke_api=True`` also ``/v1/functions`` (see ``microfaas.http.make_asgi_app``
        for the options: invoke_api, expose, token, debug, max_body, uvicorn_options).
        Under ``port = await task_group.start(faas.serve_http, host, 0)`` the bound
        port is reported once the server accepts connections.
        """
        await serve(self, host, port, **options)

    # -- for tests: lifecycle events, faults and processes ------------------------------------

    def events(self, kind: str | Iterable[str] | None = None, function: str | None = None) -> list[LifecycleEvent]:
        """What happened so far, oldest first: cold and warm starts, releases, crashes, retries, ...

        :param kind: only events of this kind (or these kinds); see ``microfaas.lifecycle.KINDS``.
        :param function: only events of this function.
        :raises ValueError: an unknown kind.
        """
        return self._runtime.lifecycle.events(kind, function)

    def subscribe_events(
        self, kind: str | Iterable[str] | None = None, function: str | None = None, *, replay: bool = False
    ) -> MemoryObjectReceiveStream[LifecycleEvent]:
        """Every later event (with ``replay``, the past ones first), as a stream that ends when the platform stops.

        ``async for event in faas.subscribe_events("cold_start"): ...``; close it (or use
        ``with``) to unsubscribe. Subscribed at once, so nothing after this call is missed.
        """
        return self._runtime.lifecycle.subscribe(kind, function, replay=replay)

    def inject(self, name: str, /, *, crash: int = 0, timeout: int = 0, start_failure: int = 0) -> None:
        """Make the next ``crash`` + ``timeout`` calls of ``name`` crash or time out, its next ``start_failure`` starts fail.

        Counts add up over calls; the platform then behaves as under real faults (see ``microfaas.runtime.faults``).
        """
        self._runtime.function(name, require_open=False)
        self._runtime.faults.arm(name, crash=crash, timeout=timeout, start_failure=start_failure)

    def armed_faults(self, name: str) -> dict[str, int]:
        """The faults still armed for ``name``: ``{"crash": n, "timeout": n, "start_failure": n}``."""
        self._runtime.function(name, require_open=False)
        return self._runtime.faults.armed(name)

    def clear_faults(self, name: str | None = None) -> None:
        """Disarm the faults not yet taken (of ``name``, or of every function)."""
        self._runtime.faults.clear(name)

    async def kill(self, container: str | ContainerInfo) -> None:
        """Kill a running container with SIGKILL, as a real crash; return once the platform has seen it die.

        :raises ValueError: no such container (or it has not finished starting).
        """
        await self._runtime.kill(container.id if isinstance(container, ContainerInfo) else container)

    def process_ids(self) -> set[int]:
        """The ids of every process of this machine the platform holds now: node zygotes and containers."""
        return self._runtime.cluster.process_ids() if hasattr(self._runtime, "cluster") else set()
