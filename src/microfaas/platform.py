"""Platform: the in-process APIServer, and the async shell around the scheduler core.

What it owns. One anyio task group for its whole life (``async with app.run()``)
holding container reply readers, node acquisitions, container starts, the
keep-alive timer, the memory watch and spawned calls. Leaving the block stops
intake, fails what is waiting, and stops every container and node (SIGTERM,
grace, SIGKILL) inside a shielded scope.

How a call flows (DESIGN.md): arguments are pickled first (a ``SerializationError``
costs no container), then the scheduler core is asked for a container. Its
actions are carried out by ``_apply``; a request waits as an ``_Attempt`` until
a fact (at once, or later: a start, a finished call) produces its ``RunOn``, and
is sent to its container right there, in the callback that learned the fact.
The caller wakes once, for the outcome. The container's reply reader reports
the finished call back to the core, so a slot frees exactly when the container
says so, even when the caller gave up, and the next waiting call goes out from
the same callback.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import math
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel

from .errors import (
    CallCancelled,
    ColdStartFailed,
    ContainerCrashed,
    FaaSError,
    FunctionError,
    FunctionTimeout,
    OutOfMemory,
    PlatformClosed,
    SerializationError,
    Throttled,
    UnknownFunction,
)
from .keepalive import KeepAlivePolicy
from .nodes import NodeSetup
from .nodes.contract import Died, NotStarted, Outcome, StartFailed
from .pool import LocalNodes
from .protocol import CallRequest
from .resources import AcquireNode, ReleaseNode
from .runtime import lifecycle as ev
from .runtime.call import Call, CallStatus
from .runtime.deadlines import Deadlines
from .runtime.delivery import DeadLetter, InFlight, Source, retry_delay
from .runtime.faults import INJECTED, FaultPlan
from .runtime.lifecycle import LifecycleEvent, LifecycleLog
from .runtime.outcomes import InjectedTimeout, call_result, count_failure, request_error
from .runtime.shipping import Shipper, dump_args, loads_or_blob
from .runtime.stats import ContainerInfo, FunctionStats, PlatformUsage, StatsRecorder
from .scheduler import ContainerState, FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from .app import App
    from .nodes import Container, Node, NodeProvider
    from .sources.batch import BatchJob, BatchProgress
    from .sources.streams import StreamSource
    from .sources.topics import TopicSource
    from .spec import FunctionSpec, Retries

__all__ = ["Platform"]

# How often the memory of running containers is sampled (Lambda reports max memory
# per invocation; we enforce the limit at this resolution).
MEMORY_POLL_INTERVAL: Final = 0.05
# A container must be ready (loaded, init run) within max(this, the function's timeout);
# Lambda gives its init phase 10 s.
MIN_START_TIMEOUT: Final = 10.0
# Errors after which a spawned call is retried (as Lambda retries async invocations).
RETRYABLE: Final = (FunctionError, FunctionTimeout, OutOfMemory, ContainerCrashed, ColdStartFailed, Throttled)


class _Attempt:
    """One attempt of an invocation, from its request to its outcome.

    The core's decision about it is carried out where it is made: a ``RunOn`` sends the
    call to its container at once, from whichever callback produced it, and the caller's
    one ``future`` then gets the container's ``Outcome``; a ``FailRequest`` goes to the
    future as it is.
    """

    __slots__ = ("attempt", "blob", "cold_start", "container", "deadlines", "function", "future", "invocation_id")

    def __init__(
        self, function: str, invocation_id: str, attempt: int, blob: bytes, future: asyncio.Future[Outcome | FailRequest | InjectedTimeout]
    ) -> None:
        self.function = function
        self.invocation_id = invocation_id
        self.attempt = attempt
        self.blob = blob
        self.future = future
        self.cold_start = False
        self.container: Container | None = None
        self.deadlines: Deadlines | None = None  # its container's, once its timeout runs


class Platform:
    """A running app: invoke its functions, spawn and map them, read stats.

    Made by ``app.run(...)``; use it as ``async with app.run() as faas``.
    """

    def __init__(
        self,
        app: App,
        *,
        nodes: NodeProvider | None = None,
        keep_alive: KeepAlivePolicy | None = None,
        queue_limit: int | None = 100_000,
        sources: Iterable[Source] = (),
    ) -> None:
        self.app = app
        self.nodes_config: NodeProvider = nodes if nodes is not None else LocalNodes()
        self._keep_alive = keep_alive
        self._queue_limit = queue_limit
        self._state = "new"
        self._clock: Callable[[], float] = time.monotonic
        self._lifecycle = LifecycleLog(self._clock)
        self._faults = FaultPlan()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._specs: dict[str, FunctionSpec] = {}
        self._stats: dict[str, StatsRecorder] = {}
        self._nodes: dict[str, Node] = {}
        self._containers: dict[str, Container] = {}
        self._waiters: dict[str, _Attempt] = {}  # requests waiting for the core's decision
        self._deadlines: dict[str, Deadlines] = {}  # by container id
        self._queued_calls: dict[str, _Attempt] = {}  # sent to a full container, waiting in it for a slot
        self._start_errors: dict[str, BaseException] = {}
        self._pending_starts: dict[str, anyio.Event] = {}
        self._pending_nodes: dict[str, anyio.Event] = {}
        self._timer_target = math.inf
        self._wake_epoch = -1  # the scheduler's wake_epoch when _timer_target was last lowered
        self._timer_kick = anyio.Event()
        self._sources: dict[str, Source] = {}
        for source in sources:
            if source.key in self._sources:
                raise ValueError(f"two event sources are both named {source.key!r}")
            self._sources[source.key] = source
        self._dead_letters: dict[str, list[DeadLetter]] = collections.defaultdict(list)
        self._in_flight = InFlight()
        self._running_calls: dict[str, tuple[Call[Any], str]] = {}  # spawned calls by id, with their source
        self._batch_jobs: list[BatchJob[Any]] = []

    def __repr__(self) -> str:
        return f"<microfaas Platform of app {self.app.name!r}: {self._state}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Platform:
        if self._state != "new":
            raise RuntimeError("a Platform runs once; call app.run() again for a new one")
        if self.app._platform is not None:
            raise RuntimeError(f"app {self.app.name!r} is already running")
        self._state = "running"
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._start()
        except BaseException as exc:
            await self._stop()
            self._tg.cancel_scope.cancel()
            if await self._tg.__aexit__(type(exc), exc, exc.__traceback__):
                raise RuntimeError("platform start was interrupted") from exc
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self._stop()
        self._tg.cancel_scope.cancel()
        # The body's own exception propagates as it is, not wrapped in a group; only a
        # failure of the platform's own tasks (a bug) surfaces from the task group.
        await self._tg.__aexit__(None, None, None)

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sched = Scheduler(
            self.nodes_config.resource_manager(),
            keep_alive=self._keep_alive,
            queue_limit=self._queue_limit,
            pipeline_depth=getattr(self.nodes_config, "pipeline_depth", 0),
        )
        self._specs = dict(self.app.functions)
        self._shipper = Shipper(self._specs)
        for name, spec in self._specs.items():
            self._sched.add_function(FunctionProfile.of(spec))
            self._stats[name] = StatsRecorder(name)
        self._setup = NodeSetup(sys_path=tuple(sys.path), cwd=os.getcwd(), preload=self._shipper.modules_to_preload())
        self.app._platform = self
        self._tg.start_soon(self._run_timer)
        self._tg.start_soon(self._watch_memory)
        self._apply(self._sched.start(now=self._clock()))
        # Come up with min_nodes nodes and every pinned container ready (or failed).
        while self._pending_nodes or self._pending_starts:
            for event in [*self._pending_nodes.values(), *self._pending_starts.values()]:
                await event.wait()
        for source in self._sources.values():
            await self._tg.start(source.run, self)

    async def _stop(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        if self.app._platform is self:
            self.app._platform = None
        with anyio.CancelScope(shield=True):
            if not hasattr(self, "_sched"):
                self._lifecycle.close()
                return
            self._apply(self._sched.shutdown(now=self._clock()))
            async with anyio.create_task_group() as tg:
                for node in list(self._nodes.values()):
                    tg.start_soon(node.stop)
            self._nodes.clear()
            self._lifecycle.close()

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # -- the API ---------------------------------------------------------------------------

    async def invoke(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Invoke function ``name`` and return its result (see ``FunctionHandle.invoke``)."""
        self._lookup(name)
        blob = dump_args(name, args, kwargs)
        return await self._invoke(name, blob, self._new_id(), attempt=1)

    async def spawn(self, name: str, /, *args: Any, **kwargs: Any) -> Call[Any]:
        """Start an invocation in the background, retried per the function's ``retries``."""
        spec = self._lookup(name)
        blob = dump_args(name, args, kwargs)
        call: Call[Any] = Call(self._new_id(), name)
        self._tg.start_soon(self.run_call, call, blob, spec.retries)
        return call

    async def map(
        self,
        name: str,
        /,
        *iterables: Iterable[Any],
        return_exceptions: bool = False,
        max_in_flight: int | None = None,
    ) -> AsyncIterator[Any]:
        """Invoke ``name`` once per item and yield the results in input order."""
        spec = self._lookup(name)
        if max_in_flight is None:
            max_in_flight = (spec.max_containers or 32) * spec.concurrency
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        window: collections.deque[Call[Any]] = collections.deque()
        try:
            for args in zip(*iterables, strict=False):
                call: Call[Any] = Call(self._new_id(), name)
                self._tg.start_soon(self.run_call, call, dump_args(name, args, {}), None)
                window.append(call)
                if len(window) >= max_in_flight:
                    yield await self._map_result(window.popleft(), return_exceptions)
            while window:
                yield await self._map_result(window.popleft(), return_exceptions)
        finally:
            for call in window:
                call.cancel()

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
        from .sources.batch import start_batch  # sources sit above the platform

        job = await start_batch(self, name, items, max_parallel=max_parallel, on_progress=on_progress)
        self._batch_jobs = [j for j in self._batch_jobs if not j.done()]
        self._batch_jobs.append(job)  # for drain's report of what is pending
        return job

    def stats(self, name: str) -> FunctionStats:
        """What has happened to function ``name`` so far."""
        self._lookup(name, require_open=False)
        by_state = collections.Counter(str(rec.state) for rec in self._sched.containers(name))
        live_states = [state for state in ContainerState if state is not ContainerState.STOPPED]
        usage = self._sched.usage_at(name, now=self._clock())
        return self._stats[name].snapshot({str(state): by_state.get(str(state), 0) for state in live_states}, usage)

    def usage(self) -> PlatformUsage:
        """Nodes, node-seconds, container-seconds by state and idle MB·s so far."""
        now = self._clock()
        usage = self._sched.usage_at(now=now)
        return PlatformUsage(
            nodes=len(self._sched.resources.nodes),
            node_seconds=self._sched.resources.node_seconds(now=now),
            container_seconds=usage.container_seconds,
            idle_memory_mb_s=usage.idle_memory_mb_s,
        )

    def containers(self, name: str | None = None) -> list[ContainerInfo]:
        """The live containers of function ``name`` (or of every function)."""
        if name is not None:
            self._lookup(name, require_open=False)
        infos = []
        for rec in self._sched.containers(name):
            container = self._containers.get(rec.id)
            infos.append(
                ContainerInfo(
                    id=rec.id,
                    function=rec.function,
                    state=rec.state,
                    node=rec.node_id,
                    pinned=rec.pinned,
                    pid=container.pid if container is not None else None,
                    calls=rec.calls,
                    start_s=container.start_s if container is not None else None,
                    load_s=container.load_s if container is not None else None,
                    init_s=container.init_s if container is not None else None,
                )
            )
        return infos

    def function_names(self) -> list[str]:
        return list(self._specs)

    def dead_letters(self, name: str) -> list[DeadLetter]:
        """Events for function ``name`` that failed every attempt, oldest first, with their errors."""
        self._lookup(name, require_open=False)
        return list(self._dead_letters.get(name, ()))

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the API asks for it
        """Wait until nothing is in flight: spawned calls, topic deliveries, stream records, batch tasks.

        :raises TimeoutError: naming what is still pending after ``timeout`` seconds.
        """
        with anyio.move_on_after(timeout) as scope:
            while True:
                await self._in_flight.wait_idle()
                await anyio.lowlevel.checkpoint()
                if not self._in_flight.count:
                    return
        if scope.cancelled_caught:
            pending = [item for source in self._sources.values() for item in source.pending()]
            self._batch_jobs = [job for job in self._batch_jobs if not job.done()]
            for job in self._batch_jobs:
                done, _, total = job.progress
                pending.append(f"{total - done} task(s) of batch job {job.id} for {job.function_name}")
            calls = collections.Counter(
                call.function_name for call, source in self._running_calls.values() if source == "spawn" and not call.done()
            )
            pending += [f"{n} spawned call(s) of {name}" for name, n in sorted(calls.items())]
            summary = "; ".join(pending) or f"{self._in_flight.count} item(s) in flight"
            raise TimeoutError(f"drain timed out after {timeout}s; still pending: {summary}")

    # -- for tests: lifecycle events and faults ----------------------------------------------

    def events(self, kind: str | Iterable[str] | None = None, function: str | None = None) -> list[LifecycleEvent]:
        """What happened so far, oldest first: cold and warm starts, releases, crashes, retries, ...

        :param kind: only events of this kind (or these kinds); see ``microfaas.lifecycle.KINDS``.
        :param function: only events of this function.
        :raises ValueError: an unknown kind.
        """
        return self._lifecycle.events(kind, function)

    def subscribe_events(
        self, kind: str | Iterable[str] | None = None, function: str | None = None, *, replay: bool = False
    ) -> MemoryObjectReceiveStream[LifecycleEvent]:
        """Every later event (with ``replay``, the past ones first), as a stream that ends when the platform stops.

        ``async for event in faas.subscribe_events("cold_start"): ...``; close it (or use
        ``with``) to unsubscribe. Subscribed at once, so nothing after this call is missed.
        """
        return self._lifecycle.subscribe(kind, function, replay=replay)

    def record_retry(self, error: FaaSError, *, function: str, source: str, invocation_id: str, attempt: int, delay: float) -> None:
        """Report that an event's attempt failed and will be retried (event sources call this)."""
        self._lifecycle.retry(error, function=function, source=source, invocation_id=invocation_id, attempt=attempt, delay=delay)

    def inject(self, name: str, /, *, crash: int = 0, timeout: int = 0, start_failure: int = 0) -> None:
        """Make the next ``crash`` + ``timeout`` calls of ``name`` crash or time out, its next ``start_failure`` starts fail.

        Counts add up over calls; the platform then behaves as under real faults (see ``microfaas.faults``).
        """
        self._lookup(name, require_open=False)
        self._faults.arm(name, crash=crash, timeout=timeout, start_failure=start_failure)

    def armed_faults(self, name: str) -> dict[str, int]:
        """The faults still armed for ``name``: ``{"crash": n, "timeout": n, "start_failure": n}``."""
        self._lookup(name, require_open=False)
        return self._faults.armed(name)

    def clear_faults(self, name: str | None = None) -> None:
        """Disarm the faults not yet taken (of ``name``, or of every function)."""
        self._faults.clear(name)

    async def kill(self, container: str | ContainerInfo) -> None:
        """Kill a running container with SIGKILL, as a real crash; return once the platform has seen it die.

        :raises ValueError: no such container (or it has not finished starting).
        """
        container_id = container.id if isinstance(container, ContainerInfo) else container
        target = self._containers.get(container_id)
        if target is None:
            live = ", ".join(sorted(self._containers)) or "none"
            raise ValueError(f"no running container {container_id!r}; the running ones are: {live}")
        with self._lifecycle.subscribe(ev.CONTAINER_EXITED) as exits:
            self._faults.killed(container_id)
            target.kill(INJECTED)
            async for event in exits:
                if event.container == container_id:
                    break

    def topic(self, name: str) -> TopicSource:
        """The running topic ``name``: ``await faas.topic("orders").publish(data)``."""
        return self.source(f"topic:{name}")  # type: ignore[return-value]

    def stream(self, name: str) -> StreamSource:
        """The running stream ``name``: ``await faas.stream("clicks").put(value, key=...)``."""
        return self.source(f"stream:{name}")  # type: ignore[return-value]

    def source(self, key: str) -> Source:
        """The running event source ``key`` (``"topic:orders"``, ``"stream:clicks"``)."""
        try:
            return self._sources[key]
        except KeyError:
            kind, _, name = key.partition(":")
            known = ", ".join(sorted(k.partition(":")[2] for k in self._sources if k.startswith(kind + ":"))) or "none"
            raise UnknownFunction(f"app {self.app.name!r} has no {kind} {name!r}; it has: {known}") from None

    async def serve_http(self, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Serve this platform over HTTP on uvicorn until cancelled (extra ``http``).

        Serves the functions' ``mf.Http`` routes and ``/healthz``; with
        ``invoke_api=True`` also ``/v1/functions`` (see ``microfaas.http.make_asgi_app``
        for the options: invoke_api, expose, token, debug, max_body, uvicorn_options).
        Under ``port = await task_group.start(faas.serve_http, host, 0)`` the bound
        port is reported once the server accepts connections.
        """
        from .http import serve

        await serve(self, host, port, **options)

    # -- one invocation --------------------------------------------------------------------

    async def _invoke(self, name: str, blob: bytes, invocation_id: str, *, attempt: int) -> Any:
        stats = self._stats[name]
        stats.invocations += 1
        now = started = self._clock()
        try:
            call = _Attempt(name, invocation_id, attempt, blob, self._loop.create_future())
            while True:
                if self._state != "running":
                    raise PlatformClosed(f"app {self.app.name!r} was stopped; open a new platform with `async with app.run()`")
                self._apply(self._sched.request(invocation_id, name, now=now), own=call)
                try:
                    outcome = await call.future
                except BaseException:
                    self._abandon(call)
                    raise
                if type(outcome) is not NotStarted:
                    break
                # Its container died with the call still queued in it: ask again.
                self._queued_calls.pop(invocation_id, None)
                call.future = self._loop.create_future()
                call.container = None
                now = self._clock()
            value = self._result(call, outcome)
        except FaaSError as exc:
            count_failure(stats, exc)
            self._lifecycle.call_failed(exc, attempt=attempt, injected=self._faults.was_injected(invocation_id, exc))
            raise
        stats.completed += 1
        stats.latencies.append(self._clock() - started)
        return value

    def _decided(self, call: _Attempt, decision: RunOn | FailRequest) -> None:
        """The core decided about ``call``: send it to its container, or fail it."""
        if call.future.done():  # its caller is gone
            if type(decision) is RunOn:
                self._apply(self._sched.call_finished(decision.container_id, now=self._clock()))
            return
        if type(decision) is FailRequest:
            call.future.set_result(decision)
            return
        assert type(decision) is RunOn
        container = call.container = self._containers[decision.container_id]
        call.cold_start = decision.cold_start
        if self._faults and self._inject_fault(call, container, queued=decision.queued):
            return
        timeout = self._specs[call.function].timeout
        request = CallRequest(
            invocation_id=call.invocation_id, attempt=call.attempt, timeout_s=timeout, cold_start=decision.cold_start, args=call.blob
        )
        started = container.start_call(call.future, request, queued=decision.queued)
        if started:
            self._started(call)
        else:
            self._queued_calls[call.invocation_id] = call

    def _inject_fault(self, call: _Attempt, container: Container, *, queued: bool) -> bool:
        """Carry out a fault armed with ``faas.inject`` for ``call``, if any; True when the call is not to be sent."""
        fault = self._faults.take_call_fault(call.function, call.invocation_id)
        if fault == "timeout" or (fault == "crash" and queued):
            # The call is never sent: as if it had run past its timeout, or as if the
            # container had died under it (not merely before it started).
            container.kill("timeout" if fault == "timeout" else INJECTED)
            call.future.set_result(InjectedTimeout() if fault == "timeout" else Died(None, INJECTED))
            self._started(call)  # counted and recorded as started; no timeout clock
            return True
        if fault == "crash":  # the call is sent to a container that has just been killed
            container.kill(INJECTED)
        return False

    def _queued_call_started(self, invocation_id: str) -> None:
        call = self._queued_calls.pop(invocation_id, None)
        if call is not None:
            self._started(call)

    def _started(self, call: _Attempt) -> None:
        """``call`` got its slot in its container: count it, and start the clock on its timeout."""
        name, invocation_id, container = call.function, call.invocation_id, call.container
        assert container is not None
        stats = self._stats[name]
        if call.cold_start:
            stats.cold_starts += 1
        else:
            stats.warm_starts += 1
        self._lifecycle.call_started(name, container, cold=call.cold_start, invocation_id=invocation_id, attempt=call.attempt)
        timeout = self._specs[name].timeout
        if timeout is not None and not call.future.done():
            # The deadline is on a loop timer, not a cancel scope: it holds whether or not the
            # caller is still waiting.
            call.deadlines = self._deadlines[container.id]
            call.deadlines.add(invocation_id, timeout)

    def _abandon(self, call: _Attempt) -> None:
        """The caller of ``call`` stopped waiting: withdraw its request, or leave the call running."""
        if call.container is not None:
            # The container keeps running it, under the same deadline.
            call.container.abandoned.add(call.invocation_id)
        elif self._waiters.pop(call.invocation_id, None) is not None:
            self._apply(self._sched.cancel(call.invocation_id, now=self._clock()))

    def _result(self, call: _Attempt, outcome: Outcome | FailRequest | InjectedTimeout) -> Any:
        """The call's value, or the microfaas error its outcome means."""
        if call.deadlines is not None:
            call.deadlines.discard(call.invocation_id)
        if isinstance(outcome, FailRequest):
            raise request_error(
                call.function,
                call.invocation_id,
                outcome,
                waiting=self._sched.waiting(),
                queue_limit=self._sched.queue_limit,
                app_name=self.app.name,
                start_error=self._start_errors.pop(outcome.container_id or "", None),
            )
        spec = self._specs[call.function]
        return call_result(call.function, call.invocation_id, call.container, outcome, timeout=spec.timeout, memory_mb=spec.memory_mb)

    async def run_call(self, call: Call[Any], blob: bytes, retries: Retries | None, *, source: str = "spawn", event: Any = None) -> None:
        """Run a spawned call: retried and dead-lettered per ``retries`` (None: one attempt, no dead letter).

        ``source`` and ``event`` (None: the call's ``(args, kwargs)``) are what its dead letter records;
        batch jobs and timers pass their own.
        """
        first_attempt_at = time.time()
        self._in_flight.started()
        self._running_calls[call.id] = (call, source)
        with call._scope:
            try:
                for attempt in itertools.count(1):
                    call.attempts = attempt
                    try:
                        value = await self._invoke(call.function_name, blob, call.id, attempt=attempt)
                    except FaaSError as exc:
                        delay = retry_delay(retries, attempt) if retries is not None else 0.0
                        retry = retries is not None and isinstance(exc, RETRYABLE)
                        if retry and self._may_retry(retries, attempt, first_attempt_at, delay):  # type: ignore[arg-type]
                            self._lifecycle.retry(
                                exc, function=call.function_name, source=source, invocation_id=call.id, attempt=attempt, delay=delay
                            )
                            await anyio.sleep(delay)
                            continue
                        call._fail(exc)
                    else:
                        call._succeed(value)
                    return
            finally:
                if not call.done():
                    if self._state == "closed":
                        call._fail(PlatformClosed(f"app {self.app.name!r} stopped before call {call.id} of {call.function_name} finished"))
                    else:
                        call._fail(CallCancelled(f"call {call.id} of {call.function_name} was cancelled"), cancelled=True)
                if retries is not None and call.status is CallStatus.FAILED and isinstance(call._error, FaaSError):
                    self.add_dead_letter(
                        function=call.function_name,
                        source=source,
                        event=loads_or_blob(blob) if event is None else event,
                        error=call._error,
                        attempts=call.attempts,
                        invocation_id=call.id,
                        first_attempt_at=first_attempt_at,
                    )
                self._running_calls.pop(call.id, None)
                self._in_flight.finished()

    @staticmethod
    def _may_retry(retries: Retries, attempt: int, first_attempt_at: float, delay: float) -> bool:
        """Whether another attempt is allowed: retries left, and the event not too old by then."""
        if attempt > retries.max_retries:
            return False
        return retries.max_event_age is None or time.time() + delay - first_attempt_at <= retries.max_event_age

    # -- for event sources ---------------------------------------------------------------------

    def add_dead_letter(
        self,
        *,
        function: str,
        source: str,
        event: Any,
        error: FaaSError,
        attempts: int,
        invocation_id: str,
        first_attempt_at: float,
    ) -> DeadLetter:
        """Keep an event that failed every attempt (event sources call this)."""
        letter = DeadLetter(
            function=function,
            source=source,
            event=event,
            error=error,
            attempts=attempts,
            invocation_id=invocation_id,
            first_attempt_at=first_attempt_at,
            failed_at=time.time(),
        )
        self._dead_letters[function].append(letter)
        self._lifecycle.dead_letter(letter)
        return letter

    @property
    def in_flight(self) -> InFlight:
        """Work accepted and not finished; sources count their events here so ``drain`` sees them."""
        return self._in_flight

    def new_invocation_id(self) -> str:
        return self._new_id()

    async def invoke_with_id(self, name: str, invocation_id: str, attempt: int, /, *args: Any, **kwargs: Any) -> Any:
        """One attempt of an event's invocation (sources keep the id across retries)."""
        self._lookup(name)
        return await self._invoke(name, dump_args(name, args, kwargs), invocation_id, attempt=attempt)

    async def _map_result(self, call: Call[Any], return_exceptions: bool) -> Any:
        try:
            return await call.result()
        except FaaSError as exc:
            if return_exceptions:
                return exc
            raise

    def _deadline_passed(self, container: Container, invocation_id: str) -> None:
        """An invocation ran past its timeout: kill its container (its caller gets FunctionTimeout)."""
        if invocation_id not in container._pending:
            return
        container.timed_out = invocation_id
        container.kill("timeout")
        if invocation_id in container.abandoned:
            self._emit(ev.TIMEOUT, container.id, invocation_id=invocation_id, abandoned=True, injected=False)

    # -- carrying out the core's decisions --------------------------------------------------

    def _apply(self, actions: list[Any], own: _Attempt | None = None) -> None:
        """Carry out the core's actions. ``own`` is the request that produced them: it waits
        for a later decision unless one is among them."""
        if own is not None:
            self._waiters[own.invocation_id] = own
        for action in actions:
            kind = type(action)
            if kind is RunOn or kind is FailRequest:
                call = self._waiters.pop(action.request_id, None)
                if call is not None:
                    self._decided(call, action)
                elif kind is RunOn:  # its caller is gone: give the slot back
                    self._apply(self._sched.call_finished(action.container_id, now=self._clock()))
            elif kind is StartContainer:
                self._pending_starts[action.container_id] = anyio.Event()
                self._tg.start_soon(self._start_container, action)
            elif kind is StopContainer:
                self._stop_container(action)
            elif kind is AcquireNode:
                self._pending_nodes[action.node_id] = anyio.Event()
                self._tg.start_soon(self._acquire_node, action.node_id)
            elif kind is ReleaseNode:
                self._lifecycle.emit(ev.NODE_RELEASED, node=action.node_id, reason="shutdown" if self._state == "closed" else "empty")
                node = self._nodes.pop(action.node_id, None)
                if node is not None:
                    self._tg.start_soon(node.stop)
            else:  # pragma: no cover - a new action type the shell does not know yet
                raise TypeError(f"unknown scheduler action {action!r}")
        epoch = self._sched.wake_epoch
        if epoch != self._wake_epoch:
            self._wake_epoch = epoch
            wake = self._sched.next_wake()
            if wake is not None and wake < self._timer_target:
                self._timer_target = wake
                self._timer_kick.set()

    async def _start_container(self, action: StartContainer) -> None:
        container_id = action.container_id
        try:
            started = self._clock()
            try:
                node = self._nodes.get(action.node_id)
                if node is None:
                    raise StartFailed(f"node {action.node_id} is gone", stage="node")
                if self._faults and self._faults.take_start_failure(action.function):
                    raise StartFailed("the start failure was injected with faas.inject(start_failure=...)", stage="injected")
                start_timeout = max(MIN_START_TIMEOUT, self._specs[action.function].timeout or 0.0)
                try:
                    with anyio.fail_after(start_timeout):
                        container = await node.start_container(container_id, self._shipper.bundle(action.function))
                except TimeoutError:
                    raise StartFailed(
                        f"the container was not ready within {start_timeout}s (max(10s, timeout)); it was killed", stage="init"
                    ) from None
            except (StartFailed, SerializationError, OSError) as exc:
                self._start_errors[container_id] = exc
                stage = getattr(exc, "stage", None)
                self._emit(ev.START_FAILED, container_id, stage=stage, error=str(exc), injected=stage == "injected")
                self._apply(self._sched.container_start_failed(container_id, now=self._clock()))
                return
            self._deadlines[container_id] = Deadlines(self._loop, functools.partial(self._deadline_passed, container))
            container.on_exit = self._container_exited
            container.on_reply = self._call_done
            container.on_call_started = self._queued_call_started
            self._containers[container_id] = container
            stats = self._stats[action.function]
            stats.containers_started += 1
            container.start_s = self._clock() - started
            stats.init_times.append(container.start_s)
            self._tg.start_soon(container.serve_replies)
            record = self._sched.container(container_id)
            if record is None or record.state is not ContainerState.STARTING:
                container.terminate()  # stopped (or the platform closed) while it was starting
                self._tg.start_soon(self._kill_after_grace, container)
                return
            self._lifecycle.container_started(action.function, container, pinned=action.pinned)
            self._apply(self._sched.container_started(container_id, now=self._clock()))
        finally:
            event = self._pending_starts.pop(container_id, None)
            if event is not None:
                event.set()

    def _stop_container(self, action: StopContainer) -> None:
        kind = {"idle": ev.IDLE_RELEASE, "evicted": ev.EVICTION}.get(action.reason, ev.CONTAINER_STOPPED)
        self._emit(kind, action.container_id, reason=action.reason)
        container = self._containers.get(action.container_id)
        if container is not None:
            container.terminate()
            self._tg.start_soon(self._kill_after_grace, container)

    async def _kill_after_grace(self, container: Container) -> None:
        with anyio.move_on_after(1.0):
            await container.exited.wait()
        container.kill("stopped")

    def _container_exited(self, container: Container) -> None:
        self._emit(ev.CONTAINER_EXITED, container.id, returncode=container.returncode, reason=container.kill_reason)
        self._containers.pop(container.id, None)
        deadlines = self._deadlines.pop(container.id, None)
        if deadlines is not None:
            deadlines.close()
        for invocation_id in [i for i, call in self._queued_calls.items() if call.container is container]:
            del self._queued_calls[invocation_id]  # abandoned: nobody asks again
        node = self._nodes.get(container.node_id)
        if node is not None:
            node.container_gone(container)
        self._apply(self._sched.container_exited(container.id, now=self._clock()))

    def _call_done(self, container: Container) -> None:
        self._apply(self._sched.call_finished(container.id, now=self._clock(), duration_s=container.last_call_s))

    async def _acquire_node(self, node_id: str) -> None:
        try:
            try:
                node = await self.nodes_config.acquire(node_id, self._setup, self._tg)
            except (StartFailed, OSError) as exc:
                for record in self._sched.containers():
                    if record.node_id == node_id:
                        self._start_errors[record.id] = StartFailed(f"node {node_id} could not be acquired: {exc}", stage="node")
                self._lifecycle.emit(ev.NODE_FAILED, node=node_id, error=str(exc))
                self._apply(self._sched.node_failed(node_id, now=self._clock()))
                return
            if node_id not in self._sched.resources.nodes:
                await node.stop()  # released (or the platform closed) while it was coming up
                return
            self._nodes[node_id] = node
            if node.preload_failures:
                self._shipper.ship_by_value(node.preload_failures)
            self._lifecycle.emit(ev.NODE_ACQUIRED, node=node_id)
            self._apply(self._sched.node_acquired(node_id, now=self._clock()))
        finally:
            event = self._pending_nodes.pop(node_id, None)
            if event is not None:
                event.set()

    async def _run_timer(self) -> None:
        """Tick the core at its next wake. ``_apply`` lowers ``_timer_target`` (and kicks
        this loop) when a fact brings a wake forward; a wake that moved later, or went
        away, costs at most one early tick that finds nothing to do."""
        while True:
            with anyio.move_on_after(max(0.0, self._timer_target - self._clock())) as sleep:
                await self._timer_kick.wait()
            self._timer_kick = anyio.Event()
            if not sleep.cancelled_caught:
                continue  # kicked: an earlier target was set; sleep until it
            self._timer_target = -math.inf  # no kicks while carrying out the tick
            self._apply(self._sched.tick(now=self._clock()))
            wake = self._sched.next_wake()
            self._timer_target = wake if wake is not None else math.inf

    async def _watch_memory(self) -> None:
        while True:
            await anyio.sleep(MEMORY_POLL_INTERVAL)
            for container in list(self._containers.values()):
                if not container.in_flight:
                    continue
                used = container.memory_used_mb()
                spec = self._specs[self._sched.container(container.id).function]  # type: ignore[union-attr]
                if used is not None and used > spec.memory_mb:
                    container.memory_at_kill_mb = used
                    container.kill("oom")

    # -- helpers -----------------------------------------------------------------------------

    def _emit(self, kind: str, container_id: str, **detail: Any) -> None:
        """A lifecycle event about container ``container_id`` (its function and node from the core's record)."""
        record = self._sched.container(container_id)
        function, node = (record.function, record.node_id) if record is not None else (None, None)
        self._lifecycle.emit(kind, function=function, container=container_id, node=node, **detail)

    def _lookup(self, name: str, *, require_open: bool = True) -> FunctionSpec:
        if require_open and self._state != "running":
            raise PlatformClosed(f"app {self.app.name!r} is not running; call functions inside `async with app.run() as faas:`")
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise UnknownFunction(f"app {self.app.name!r} has no function {name!r}; it has: {known}") from None

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"
