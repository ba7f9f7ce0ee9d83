"""Runtime: one running platform's machinery, assembled; what ``Platform`` delegates to.

What it owns. One anyio task group for the platform's whole life, holding the
cluster's tasks (container reply readers, node acquisitions, container starts, the
keep-alive timer, the memory watch) and the event sources. Spawned and mapped calls
are not tasks of that group: a new call's first attempt runs from a loop callback with
no task at all (``firstattempt.py``), and what follows a failed one (or a resumed call)
runs in a plain asyncio task that one task of that group tends (``calltasks.py``: an
anyio task per call cost more than a no-op call itself). Stopping
stops intake, fails what is waiting, and stops every container and node (SIGTERM,
grace, SIGKILL) inside a shielded scope.

The parts: ``Cluster`` carries out the core's decisions on the nodes, ``Invoker``
runs one attempt of an invocation, ``Deliverer`` is the one retry / dead-letter
loop, ``LifecycleLog`` records what happened and ``StatsRecorder`` counts it, and
``Durable`` keeps accepted work in the store (``store/``): opened first at start,
closed last at stop, so a spawned call is stored before ``spawn`` returns and what
an earlier platform left is resumed. The runtime is also what event sources see of
the platform: ``SourceRuntime``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .. import lifecycle as ev
from ..errors import CallCancelled, FaaSError, PlatformClosed, UnknownFunction, UnknownSource
from ..lifecycle import EVENTS_KEPT
from ..pool import LocalNodes
from ..scheduler import ContainerState
from ..store import MemoryStore, Snapshot, StoredCall
from ..usage import Usage
from .call import Call
from .calltasks import CallTasks
from .cluster import Cluster
from .delivery import CallDelivery, DeadLetter, Delivered, Deliverer, Delivery, InFlight
from .deploy import Deployer
from .durable import RECENT_CALLS, Durable
from .eventlog import LifecycleLog
from .faults import INJECTED, FaultPlan
from .firstattempt import FirstAttempt
from .invoker import Invoker
from .shipping import Shipper, dump_args
from .stats import ContainerInfo, FunctionStats, PlatformUsage, StatsRecorder, container_info

if TYPE_CHECKING:
    from ..keepalive import KeepAlivePolicy
    from ..nodes import NodeProvider
    from ..spec import FunctionSpec, Retries
    from ..store import Store
    from .delivery import Source, SourceRuntime
    from .deploy import Wiring

__all__ = ["Runtime"]


class Runtime:
    """The machinery of one platform run: made by ``Platform``, started by ``async with``.

    :param app_name: the app's name, for messages.
    :param functions: the app's functions by name.
    :param sources: the event sources to run (each with a unique ``key``).
    :param store: where accepted work is kept (default: a new ``MemoryStore``).
    :param wiring: wires deployed functions' triggers (None: a deployed function cannot have triggers).
    """

    def __init__(
        self,
        app_name: str,
        functions: Mapping[str, FunctionSpec],
        *,
        nodes: NodeProvider | None = None,
        keep_alive: KeepAlivePolicy | None = None,
        queue_limit: int | None = 100_000,
        sources: Iterable[Source] = (),
        events_kept: int | None = EVENTS_KEPT,
        store: Store | None = None,
        wiring: Wiring | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self._app_name = app_name
        self.preload = preload
        self.provider: NodeProvider = nodes if nodes is not None else LocalNodes()
        self.queue_limit = queue_limit
        self.clock: Callable[[], float] = time.monotonic
        self.lifecycle = LifecycleLog(self.clock, limit=events_kept)
        self.faults = FaultPlan()
        self.specs: dict[str, FunctionSpec] = dict(functions)  # by scheduler name (a deployed version: "resize@v2")
        self.functions: dict[str, FunctionSpec] = dict(functions)  # what callers invoke, by name
        self.routes: dict[str, str] = {name: name for name in functions}  # name -> the scheduler name that serves it
        self.declared = frozenset(functions)
        self.stats = {name: StatsRecorder(name) for name in self.specs}
        self.sources: dict[str, Source] = {}
        for source in sources:
            if source.key in self.sources:
                raise ValueError(f"two event sources are both named {source.key!r}")
            self.sources[source.key] = source
        self._source_scopes: dict[str, anyio.CancelScope] = {}
        self._sources_started = False
        self.wiring = wiring
        self._keep_alive = keep_alive
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._in_flight = InFlight()
        self._call_tasks = CallTasks()
        self._first_attempts: list[FirstAttempt] = []  # to begin on the loop's next turn
        self.running_calls: dict[str, Call[Any]] = {}  # spawned calls by id (each with its ``_source``)
        self.batch_jobs: list[Any] = []  # BatchJobs, for drain's report of what is pending
        self.recent_jobs: collections.OrderedDict[str, Any] = collections.OrderedDict()  # BatchJobs by id, newest last
        self.store: Store = store if store is not None else MemoryStore()
        self.durable = Durable(self, self.store)
        self.snapshot: Snapshot = Snapshot()  # what the store held at start; the sources take their part
        self._store_open = False
        self.deliverer = Deliverer(self._attempt, self.lifecycle, self.store)
        self.deployer = Deployer(self)
        self.state = "new"

    # -- starting and stopping ----------------------------------------------------------------

    def prepare(self) -> None:
        """Build the scheduler core and the shell around it; no I/O yet.

        :raises ValueError: a function does not fit the nodes (the message names it).
        """
        self.cluster = Cluster(
            self.provider,
            self.specs,
            keep_alive=self._keep_alive,
            queue_limit=self.queue_limit,
            lifecycle=self.lifecycle,
            stats=self.stats,
            faults=self.faults,
            shipper=Shipper(self.specs),
            clock=self.clock,
            preload=self.preload,
        )
        self.invoker = Invoker(self._app_name, self.cluster, stats=self.stats, lifecycle=self.lifecycle, faults=self.faults)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Open the store, bring up the cluster's minimum, resume what the store held, then start
        every event source, in ``tg`` (the platform's task group).

        :raises StoreError: the store cannot be opened (the message names it and why).
        """
        if not hasattr(self, "cluster"):
            self.prepare()
        self._tg = tg
        self.snapshot = await self.store.open()
        self._store_open = True
        self.state = "running"
        self.invoker.open = True
        tg.start_soon(self._call_tasks.tend, self._settle_first_attempts)
        await self.cluster.start(tg)
        await self.deployer.restore(self.snapshot)
        self.durable.resume(self.snapshot)
        for source in list(self.sources.values()):
            await tg.start(self._run_source, source)
        self._sources_started = True
        tg.start_soon(self.durable.prune)

    async def start_source(self, source: Source, runtime: SourceRuntime | None = None) -> None:
        """Run ``source`` (a deployed function's trigger) from now on: at once, or with the others if they have not started.

        :param runtime: what the source sees of the platform (None: this runtime; a deploy under way
            passes its own view, see ``sources/wiring.py``).
        :raises Exception: what the source raised before it was ready (``ConnectorUnreachable``): it is not kept.
        """
        if source.key in self.sources:
            raise ValueError(f"two event sources are both named {source.key!r}")
        self.sources[source.key] = source
        if self._sources_started:
            try:
                await self._tg.start(self._run_source, source, runtime)
            except BaseException:
                if self.sources.get(source.key) is source:
                    del self.sources[source.key]
                self._source_scopes.pop(source.key, None)
                raise

    def stop_source(self, key: str, *, cancel: bool = False) -> None:
        """Stop source ``key``: through its ``stop()`` (it finishes what it is doing), else (or with ``cancel``) by cancelling it."""
        self.end_source(self.detach_source(key), cancel=cancel)

    def end_source(self, detached: tuple[Source, anyio.CancelScope | None], *, cancel: bool = False) -> None:
        """Stop a source ``detach_source`` took out: through its ``stop()`` unless ``cancel``, else by cancelling it."""
        source, scope = detached
        stop = getattr(source, "stop", None)
        if callable(stop) and not cancel:
            stop()
        elif scope is not None:
            scope.cancel()

    def detach_source(self, key: str) -> tuple[Source, anyio.CancelScope | None]:
        """Take source ``key`` out of the platform's table, still running (another may take its key)."""
        return self.sources.pop(key), self._source_scopes.pop(key, None)

    def reattach_source(self, key: str, detached: tuple[Source, anyio.CancelScope | None]) -> None:
        """Put back a source ``detach_source`` took out (whatever took its key is gone)."""
        source, scope = detached
        self.sources[key] = source
        if scope is not None:
            self._source_scopes[key] = scope

    async def _run_source(
        self, source: Source, runtime: SourceRuntime | None = None, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.CancelScope() as scope:
            self._source_scopes[source.key] = scope
            await source.run(runtime if runtime is not None else self, task_status=task_status)

    async def stop(self) -> None:
        """Stop intake and every container and node; shielded, so it completes under cancellation."""
        if self.state == "closed":
            return
        self.state = "closed"
        with anyio.CancelScope(shield=True):
            if hasattr(self, "invoker"):
                self.invoker.open = False
                await self.cluster.stop()
            self.lifecycle.close()

    async def close_store(self) -> None:
        """Commit what is left and give the store up: once the platform's tasks have all ended."""
        if self._store_open:
            self._store_open = False
            with anyio.CancelScope(shield=True):
                await self.store.close()

    # -- what event sources may ask (SourceRuntime) -------------------------------------------

    @property
    def app_name(self) -> str:
        return self._app_name

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def in_flight(self) -> InFlight:
        """Work accepted and not finished; sources count their events here so ``drain`` sees them."""
        return self._in_flight

    def function(self, name: str, *, require_open: bool = True) -> FunctionSpec:
        if require_open and self.state != "running":
            raise PlatformClosed(f"app {self._app_name!r} is not running; call functions inside `async with app.run() as faas:`")
        try:
            return self.functions[name]
        except KeyError:
            known = ", ".join(sorted(self.functions)) or "none"
            raise UnknownFunction(f"app {self._app_name!r} has no function {name!r}; it has: {known}") from None

    def function_names(self) -> list[str]:
        """The functions callers may invoke now: the declared ones and the deployed ones.

        :raises PlatformClosed: the platform is not running.
        """
        if self.state != "running":
            raise PlatformClosed(f"app {self._app_name!r} is not running; deploy inside `async with app.run() as faas:`")
        return list(self.functions)

    async def _attempt(self, name: str, blob: bytes, invocation_id: str, attempt: int) -> Any:
        return await self.invoker.invoke(self.route(name), blob, invocation_id, attempt)

    def route(self, name: str) -> str:
        """The version serving ``name`` now, which its next attempt goes to (a retry after a deploy runs the new one).

        :raises UnknownFunction: the function was undeployed.
        """
        target = self.routes.get(name)
        if target is None:
            self.function(name)  # raises: the function was undeployed
        return target or name

    def new_invocation_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def deliver(self, delivery: Delivery, retries: Retries) -> Delivered:
        return await self.deliverer.deliver(delivery, retries)

    def dead_letter(self, delivery: Delivery, error: FaaSError, *, attempts: int, first_attempt_at: float) -> None:
        self.deliverer.dead_letter(delivery, error, attempts=attempts, first_attempt_at=first_attempt_at)

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        self._tg.start_soon(func, *args)

    def emit(self, kind: str, *, function: str | None = None, **detail: Any) -> None:
        self.lifecycle.emit(kind, function=function, **detail)

    def start_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """Run a call: a new one's first attempt from a loop callback on the loop's next turn
        (``firstattempt.py``), a resumed one in a task of its own (``calltasks.py``)."""
        call._source = delivery.source
        self.running_calls[call.id] = call
        if delivery.attempts_made:
            self._call_tasks.start(self.run_call(call, delivery, retries))
            return
        self._in_flight.started()
        first_attempts = self._first_attempts
        if not first_attempts:
            self.cluster.loop.call_soon(self._begin_first_attempts)
        first_attempts.append(FirstAttempt(self, call, delivery, retries))

    def _begin_first_attempts(self) -> None:
        """Begin the first attempts of the calls started since the loop's last turn (one callback for them all)."""
        first_attempts, self._first_attempts = self._first_attempts, []
        for first_attempt in first_attempts:
            first_attempt.begin()

    def retry_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries, error: FaaSError) -> None:
        """Go on in a task with a call whose first attempt (``FirstAttempt``) failed with ``error``."""
        self._call_tasks.start(self._run_call(call, delivery, retries, error))

    def call_failed_unexpectedly(self, error: BaseException) -> None:
        """A bug while running a call outside a task: it fails the platform, as one in a call task does."""
        self._call_tasks.failed(error)

    async def run_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """Deliver a call and settle ``call`` with the outcome: retried and dead-lettered per
        ``retries`` (None: one attempt and no dead letter, as for ``map``).

        ``call.cancel()`` cancels this task (see ``Call``); that cancellation ends here, as
        the call's ``CallCancelled``. Any other (the platform stopping) goes on up.
        """
        self._in_flight.started()
        call._source = delivery.source
        self.running_calls[call.id] = call
        await self._run_call(call, delivery, retries, None)

    async def _run_call(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None, failed: FaaSError | None) -> None:
        """``run_call``'s task, counted in flight already; ``failed``: how its first attempt, made
        with no task (``FirstAttempt``), failed (None: none was made)."""
        call._task = task = asyncio.current_task()
        try:
            if call._cancel_requested:
                pass  # cancelled before its task started: settled below, never attempted (again)
            elif retries is None:
                call.attempts = 1
                try:
                    call._succeed(await self._attempt(call.function_name, delivery.blob, call.id, 1))
                except FaaSError as exc:
                    call._fail(exc)
            else:
                if failed is None:
                    outcome = await self.deliverer.deliver(delivery, retries)
                else:
                    outcome = await self.deliverer.deliver_after(delivery, retries, failed)
                call.attempts = outcome.attempts
                if outcome.error is None:
                    call._succeed(outcome.value)
                else:
                    call._fail(outcome.error)
        except asyncio.CancelledError:
            if not call._cancel_requested:
                raise
            if task is not None:
                task.uncancel()
        finally:
            call._task = None
            if not call.done():
                if self.state == "closed":
                    call._fail(self._cut_short(call))
                else:
                    call._fail(CallCancelled(f"call {call.id} of {call.function_name} was cancelled"), cancelled=True)
            self.call_ended(call, delivery, retries)

    def call_ended(self, call: Call[Any], delivery: CallDelivery, retries: Retries | None) -> None:
        """``call`` has been settled: it is no longer running; a spawned one's outcome goes to the store."""
        self.running_calls.pop(call.id, None)
        if retries is not None:
            self.durable.finished(call, delivery)
        self._in_flight.finished()

    def _cut_short(self, call: Call[Any]) -> PlatformClosed:
        # Not dead-lettered; a stored call resumes on the next run.
        return PlatformClosed(f"app {self._app_name!r} stopped before call {call.id} of {call.function_name} finished")

    def _settle_first_attempts(self) -> None:
        """At the stop, once the call tasks have ended: settle the calls whose first attempt is still out."""
        for call in list(self.running_calls.values()):
            if isinstance(call._task, FirstAttempt):
                call._task.end(self._cut_short(call))

    # -- the API ---------------------------------------------------------------------------------

    async def invoke(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.function(name)
        return await self.invoker.invoke(self.routes[name], dump_args(name, args, kwargs), self.new_invocation_id(), 1)

    def start_invocation(self, name: str, blob: bytes, on_done: Callable[[Any, FaaSError | None], object]) -> None:
        """Invoke ``name`` with its ``(args, kwargs)`` pickled already, with no task (``Invoker.start``)."""
        self.function(name)
        self.invoker.start(self.routes[name], blob, self.new_invocation_id(), 1, on_done)

    async def spawn(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call[Any]:
        self.function(name)
        blob = dump_args(name, args, kwargs)
        row = StoredCall(id=self.new_invocation_id(), function=name, source="spawn", args=blob, accepted_at=time.time())
        await self.store.put_call(row)  # accepted once stored
        if self.state != "running":
            raise PlatformClosed(
                f"app {self._app_name!r} stopped while call {row.id} of {name} was being stored; it runs when the store is opened again"
            )
        call: Call[Any] = Call(row.id, name)
        self.durable.start(row, call)
        return call

    async def map(
        self, name: str, iterables: tuple[Iterable[Any], ...], *, return_exceptions: bool, max_in_flight: int | None
    ) -> AsyncIterator[Any]:
        spec = self.function(name)
        if max_in_flight is None:
            max_in_flight = (spec.max_containers or 32) * spec.concurrency
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        window: collections.deque[Call[Any]] = collections.deque()
        try:
            for args in zip(*iterables, strict=False):
                call: Call[Any] = Call(self.new_invocation_id(), name)
                self.start_call(call, CallDelivery(name, "map", call.id, dump_args(name, args, {})), None)
                window.append(call)
                if len(window) >= max_in_flight:
                    yield await _map_result(window.popleft(), return_exceptions)
            while window:
                yield await _map_result(window.popleft(), return_exceptions)
        finally:
            for call in window:
                call.cancel()

    # -- reading ---------------------------------------------------------------------------------

    def function_stats(self, name: str) -> FunctionStats:
        self._known(name)
        sched = self.cluster.sched
        names = self.deployer.scheduler_names(name)
        by_state = collections.Counter(str(rec.state) for n in names for rec in sched.containers(n))
        live_states = [state for state in ContainerState if state is not ContainerState.STOPPED]
        now = self.clock()
        usages = [sched.usage_at(n, now=now) for n in names]
        usage = usages[0] if len(usages) == 1 else _summed(usages)
        return self.stats[name].snapshot({str(state): by_state.get(str(state), 0) for state in live_states}, usage)

    def _known(self, name: str) -> None:
        """:raises UnknownFunction: ``name`` is neither served now nor was it ever deployed here."""
        if name not in self.stats:
            self.function(name, require_open=False)

    def usage(self) -> PlatformUsage:
        now = self.clock()
        sched = self.cluster.sched
        usage = sched.usage_at(now=now)
        return PlatformUsage(
            nodes=len(sched.resources.nodes),
            node_seconds=sched.resources.node_seconds(now=now),
            container_seconds=usage.container_seconds,
            idle_memory_mb_s=usage.idle_memory_mb_s,
        )

    def containers(self, name: str | None) -> list[ContainerInfo]:
        if name is not None:
            self._known(name)
        names = self.deployer.scheduler_names(name) if name is not None else [None]
        return [container_info(rec, self.cluster.containers.get(rec.id)) for n in names for rec in self.cluster.sched.containers(n)]

    def dead_letters(self, name: str) -> list[DeadLetter]:
        if name not in self.deliverer.dead_letters:
            self.function(name, require_open=False)
        return list(self.deliverer.dead_letters.get(name, ()))

    def call(self, call_id: str) -> Call[Any]:
        return self.durable.call(call_id)

    async def redrive(self, name: str) -> int:
        self.function(name)
        return await self.durable.redrive(name, self.sources)

    def add_batch_job(self, job: Any) -> None:
        self.batch_jobs = [j for j in self.batch_jobs if not j.done()]
        self.batch_jobs.append(job)
        self.recent_jobs[job.id] = job
        while len(self.recent_jobs) > RECENT_CALLS // 10:
            self.recent_jobs.popitem(last=False)

    # -- waiting and testing -----------------------------------------------------------------------

    async def drain(self, timeout: float | None) -> None:  # noqa: ASYNC109 - the API asks for it
        with anyio.move_on_after(timeout) as scope:
            while True:
                await self._in_flight.wait_idle()
                await anyio.lowlevel.checkpoint()
                if not self._in_flight.count:
                    return
        if scope.cancelled_caught:
            raise TimeoutError(f"drain timed out after {timeout}s; still pending: {'; '.join(self.pending())}")

    def pending(self) -> list[str]:
        """What is accepted and not yet finished, described for people."""
        pending = [item for source in self.sources.values() for item in source.pending()]
        self.batch_jobs = [job for job in self.batch_jobs if not job.done()]
        for job in self.batch_jobs:
            done, _, total = job.progress
            pending.append(f"{total - done} task(s) of batch job {job.id} for {job.function_name}")
        calls = collections.Counter(
            call.function_name for call in self.running_calls.values() if call._source in ("spawn", "map") and not call.done()
        )
        pending += [f"{n} spawned call(s) of {name}" for name, n in sorted(calls.items())]
        return pending or [f"{self._in_flight.count} item(s) in flight"]

    async def kill(self, container_id: str) -> None:
        target = self.cluster.containers.get(container_id)
        if target is None:
            live = ", ".join(sorted(self.cluster.containers)) or "none"
            raise ValueError(f"no running container {container_id!r}; the running ones are: {live}")
        with self.lifecycle.subscribe(ev.CONTAINER_EXITED) as exits:
            self.faults.killed(container_id)
            target.kill(INJECTED)
            async for event in exits:
                if event.container == container_id:
                    break

    def source(self, key: str) -> Source:
        try:
            return self.sources[key]
        except KeyError:
            kind, _, name = key.partition(":")
            known = ", ".join(sorted(k.partition(":")[2] for k in self.sources if k.startswith(kind + ":"))) or "none"
            raise UnknownSource(f"app {self._app_name!r} has no {kind} {name!r}; it has: {known}") from None


def _summed(usages: list[Usage]) -> Usage:
    seconds: collections.Counter[str] = collections.Counter()
    for usage in usages:
        seconds.update(usage.container_seconds)
    return Usage(container_seconds=dict(seconds), idle_memory_mb_s=sum(u.idle_memory_mb_s for u in usages))


async def _map_result(call: Call[Any], return_exceptions: bool) -> Any:
    try:
        return await call.result()
    except FaaSError as exc:
        if return_exceptions:
            return exc
        raise
