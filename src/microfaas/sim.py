"""Replay a trace of invocations through the real scheduler on a virtual clock.

How this works. ``simulate`` builds the same ``Scheduler`` and ``ResourceManager``
that ``runtime/cluster.py`` drives, and plays the part of the async shell with no I/O,
no threads and no clock: time is a float that jumps from one event to the next.
Pending outcomes sit in a heap of ``(time, seq, kind, payload)`` and arrivals in a sorted list; ``seq``
breaks ties in insertion order, so a run is deterministic. At equal times the
outcomes of earlier actions (a node came up, a container started, a call
finished) are fed in before new arrivals, and the scheduler's ``tick`` runs
only when ``next_wake()`` comes before the next event (or at its time, after
the events of that instant).

Each action the core hands back is carried out the way the shell would:

* ``RunOn``          -> ``call_finished`` after the invocation's ``duration_s``;
* ``StartContainer`` -> ``container_started`` after the function's ``cold_start_s``;
* ``AcquireNode``    -> ``node_acquired`` after ``acquire_delay``;
* ``StopContainer``  -> ``container_exited`` at once;
* ``ReleaseNode`` and ``FailRequest`` are recorded.

The run stops once every invocation is answered and no start, node or call is
pending; with ``drain=True`` it keeps ticking until idle containers and empty
nodes are released (at most ``DRAIN_HORIZON`` seconds past the last event).
The report counts cold and warm starts, waits, failures, nodes held and the
memory held by idle containers, the costs a keep-alive policy trades off.
"""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from .keepalive import KeepAlivePolicy
from .resources import AcquireNode, ReleaseNode, ResourceManager
from .scheduler import Action, FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer
from .traces import Trace, TraceError, TraceFunction, load_azure, load_csv
from .validation import Validator, at_least

__all__ = [
    "REPLAY_NODES",
    "Invocation",
    "ReplayReport",
    "SimFunction",
    "SimReport",
    "SimulatedNodes",
    "Trace",
    "TraceError",
    "TraceFunction",
    "load_azure",
    "load_csv",
    "replay",
    "simulate",
]

# With drain=True, ticks stop this many virtual seconds after the last event
# (pinned containers that cannot start are retried forever).
DRAIN_HORIZON: Final = 86_400.0

# Event kinds; outcomes of earlier actions come before arrivals at the same instant.
_NODE_UP, _STARTED, _FINISHED = "node_up", "started", "finished"


def _at_least(low: float) -> Validator:
    # None passes: the optional fields take it, and the converted ones never see it.
    return at_least(low, optional=True)


@attrs.frozen(kw_only=True)
class SimulatedNodes:
    """Nodes the simulation may hold; see ``ResourceManager`` for the meaning."""

    max_nodes: int = attrs.field(default=1, validator=_at_least(1))
    node_memory_mb: int = attrs.field(default=4096, validator=_at_least(1))
    min_nodes: int = attrs.field(default=0, validator=_at_least(0))
    acquire_delay: float = attrs.field(default=0.0, converter=float, validator=_at_least(0))
    release_after: float = attrs.field(default=30.0, converter=float, validator=_at_least(0))

    @min_nodes.validator
    def _check_min_nodes(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value > self.max_nodes:
            raise ValueError(f"SimulatedNodes: min_nodes must be <= max_nodes={self.max_nodes}, got {value}")

    def resource_manager(self) -> ResourceManager:
        return ResourceManager(
            node_memory_mb=self.node_memory_mb, max_nodes=self.max_nodes, min_nodes=self.min_nodes, release_after=self.release_after
        )


@attrs.frozen
class SimFunction:
    """A function in the simulation: its scheduling profile and its cold-start time."""

    name: str
    memory_mb: int = attrs.field(default=128, kw_only=True, validator=_at_least(1))
    concurrency: int = attrs.field(default=1, kw_only=True, validator=_at_least(1))
    min_containers: int = attrs.field(default=0, kw_only=True, validator=_at_least(0))
    max_containers: int | None = attrs.field(default=None, kw_only=True, validator=_at_least(1))
    idle_timeout: float | None = attrs.field(default=60.0, kw_only=True, validator=_at_least(0))  # None: the keep-alive policy's
    cold_start_s: float = attrs.field(default=0.5, kw_only=True, converter=float, validator=_at_least(0))

    def profile(self) -> FunctionProfile:
        return FunctionProfile.of(self)


@attrs.frozen
class Invocation:
    """A call of ``function`` arriving at ``time_s`` that runs for ``duration_s``."""

    time_s: float = attrs.field(converter=float, validator=_at_least(0))
    function: str
    duration_s: float = attrs.field(converter=float, validator=_at_least(0))


@attrs.frozen(kw_only=True)
class SimReport:
    """What a run cost. ``waits_s[i]`` is invocation i's wait (None if it failed)."""

    invocations: int
    cold_starts: int
    warm_starts: int
    failed: dict[str, int]  # reason -> count
    wait_s: float  # sum over answered calls of (RunOn time - arrival time)
    max_wait_s: float
    waits_s: tuple[float | None, ...]
    cold_starts_by_function: dict[str, int]
    containers_started: int
    containers_stopped: dict[str, int]  # reason -> count
    peak_nodes: int
    node_seconds: float  # from AcquireNode to ReleaseNode, or to end_s
    idle_memory_mb_s: float  # memory of started, idle containers integrated over time
    end_s: float
    actions: tuple[tuple[float, Action], ...] = ()


@attrs.define
class _Box:
    """The driver's view of one container, for the idle-memory integral."""

    function: str
    memory_mb: int
    up: bool = False
    busy: int = 0
    idle_since: float = 0.0


class _Driver:
    """Carries the core's actions out on a virtual clock.

    Arrivals are given as parallel lists sorted by time (``times``, ``names``,
    ``durations``) and merged with the heap of outcomes, so they cost no heap
    entry; ``ids[i]`` is call i's request id (``index`` maps ids back to i, None
    when the ids are the indices themselves).
    """

    def __init__(
        self,
        sched: Scheduler,
        fns: dict[str, SimFunction],
        nodes: SimulatedNodes,
        record: bool,
        arrivals: tuple[list[float], list[str], list[float]],
        ids: Any,
        index: dict[str, int] | None,
    ) -> None:
        self.sched, self.fns, self.nodes, self.record = sched, fns, nodes, record
        self.times, self.names, self.durations = arrivals
        self.ids, self.index = ids, index
        self.next_call = 0
        self.now = 0.0
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.waits: list[float | None] = [None] * len(self.times)
        self.boxes: dict[str, _Box] = {}
        self.held: dict[str, float] = {}  # node id -> acquired at
        self.node_seconds = self.idle_mb_s = 0.0
        self.peak_nodes = self.started = self.cold = self.warm = self.decisions = 0
        self.cold_by_fn: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self.stopped: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[float, Action]] = []
        self.progress: Callable[[int, int], None] | None = None

    def push(self, time: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.heap, (time, self.seq, kind, payload))
        self.seq += 1

    def _idle_end(self, box: _Box) -> None:
        if box.up and box.busy == 0:
            self.idle_mb_s += box.memory_mb * (self.now - box.idle_since)

    def apply(self, actions: list[Action]) -> None:
        if not actions:
            return
        pending = collections.deque(actions)
        now = self.now
        while pending:
            action = pending.popleft()
            if self.record:
                self.log.append((now, action))
            if type(action) is RunOn:
                box = self.boxes[action.container_id]
                self._idle_end(box)
                box.busy += 1
                request_id = action.request_id
                # Without an index the request ids are the int call numbers themselves, not the str RunOn declares.
                i: int = request_id if self.index is None else self.index[request_id]  # type: ignore[assignment]
                self.waits[i] = now - self.times[i]
                if action.cold_start:
                    self.cold += 1
                    self.cold_by_fn[box.function] += 1
                else:
                    self.warm += 1
                self.push(now + self.durations[i], _FINISHED, action.container_id)
            elif isinstance(action, StartContainer):
                self.started += 1
                fn = self.fns[action.function]
                self.boxes[action.container_id] = _Box(function=action.function, memory_mb=fn.memory_mb)
                self.push(now + fn.cold_start_s, _STARTED, action.container_id)
            elif isinstance(action, StopContainer):
                stopped = self.boxes.pop(action.container_id, None)
                if stopped is not None:
                    self._idle_end(stopped)
                self.stopped[action.reason] += 1
                self.decisions += 1
                pending.extend(self.sched.container_exited(action.container_id, now=now))
            elif isinstance(action, FailRequest):
                self.failed[action.reason] += 1
                request_id = action.request_id
                i = request_id if self.index is None else self.index[request_id]  # type: ignore[assignment]  # as for RunOn
                self.waits[i] = None
            elif isinstance(action, AcquireNode):
                self.held[action.node_id] = now
                self.peak_nodes = max(self.peak_nodes, len(self.held))
                self.push(now + self.nodes.acquire_delay, _NODE_UP, action.node_id)
            elif isinstance(action, ReleaseNode):
                self.node_seconds += now - self.held.pop(action.node_id)
            else:  # pragma: no cover - a new action type the driver does not know yet
                raise TypeError(f"unknown scheduler action {action!r}")

    def handle(self, kind: str, payload: Any) -> None:
        now, sched = self.now, self.sched
        self.decisions += 1
        if kind == _FINISHED:
            box = self.boxes.get(payload)
            if box is not None:
                box.busy -= 1
                box.idle_since = now
            self.apply(sched.call_finished(payload, now=now))
        elif kind == _STARTED:
            box = self.boxes.get(payload)
            if box is None:
                return  # stopped while starting (shutdown): not started, as containers.py asks of a shell
            box.up, box.idle_since = True, now
            self.apply(sched.container_started(payload, now=now))
        elif kind == _NODE_UP:
            self.apply(sched.node_acquired(payload, now=now))

    def run(self, drain: bool) -> None:
        last_event = 0.0
        stalled_at: float | None = None
        heap, times, names, ids, sched = self.heap, self.times, self.names, self.ids, self.sched
        n = len(times)
        progress, every = self.progress, 1 << 14
        wake, wake_epoch = None, -1
        while True:
            if sched.wake_epoch != wake_epoch:  # else the wake held is right, or at worst early
                wake, wake_epoch = sched.next_wake(), sched.wake_epoch
            i = self.next_call
            at = times[i] if i < n else math.inf
            top = heap[0][0] if heap else math.inf
            if (top <= at and top < math.inf) or at < top:
                event = top if top <= at else at
                if wake is None or event <= wake:
                    self.now = last_event = max(self.now, event)
                    if top <= at:
                        _, _, kind, payload = heapq.heappop(heap)
                        self.handle(kind, payload)
                    else:
                        self.next_call = i + 1
                        self.decisions += 1
                        self.apply(sched.request(ids[i], names[i], now=self.now))
                        if progress is not None and not (i + 1) % every:
                            progress(i + 1, n)
                    continue
            pending = bool(heap) or i < n
            if wake is None or not (pending or (drain and wake <= last_event + DRAIN_HORIZON)):
                return
            time = max(wake, self.now)
            if time == stalled_at:
                # next_wake() and tick() may round differently; step past the float.
                time = math.nextafter(time, math.inf)
            self.now = time
            self.decisions += 1
            actions = sched.tick(now=time)
            stalled_at = time if not actions else None
            wake_epoch = -1  # the tick used up the wake: ask again
            self.apply(actions)

    def finish(self) -> None:
        for box in self.boxes.values():
            self._idle_end(box)
        for acquired_at in self.held.values():
            self.node_seconds += self.now - acquired_at


# The replay's default nodes: 16 nodes of 1 TB, so that memory pressure plays no
# part in a keep-alive comparison (the 50-function day peaks well below this).
REPLAY_NODES: Final = SimulatedNodes(max_nodes=16, node_memory_mb=4 << 20, release_after=30.0)


def simulate(
    functions: Iterable[SimFunction],
    invocations: Iterable[Invocation],
    nodes: SimulatedNodes | None = None,
    *,
    keep_alive: KeepAlivePolicy | None = None,
    queue_limit: int | None = None,
    drain: bool = False,
    record: bool = False,
) -> SimReport:
    """Run ``invocations`` through a ``Scheduler`` on simulated ``nodes``; see the module doc."""
    nodes = nodes if nodes is not None else SimulatedNodes()
    fns: dict[str, SimFunction] = {}
    for fn in functions:
        if fn.name in fns:
            raise ValueError(f"functions: {fn.name!r} is given twice")
        fns[fn.name] = fn
    calls = list(invocations)
    for i, call in enumerate(calls):
        if call.function not in fns:
            raise ValueError(f"invocations[{i}].function: unknown function {call.function!r}")
    sched = Scheduler(nodes.resource_manager(), keep_alive=keep_alive, queue_limit=queue_limit)
    for fn in fns.values():
        sched.add_function(fn.profile())
    order = sorted(range(len(calls)), key=lambda i: (calls[i].time_s, i))
    arrivals = ([calls[i].time_s for i in order], [calls[i].function for i in order], [calls[i].duration_s for i in order])
    ids = [f"r-{i}" for i in order]
    driver = _Driver(sched, fns, nodes, record, arrivals, ids, {rid: k for k, rid in enumerate(ids)})
    driver.apply(sched.start(now=0.0))
    driver.run(drain)
    driver.finish()
    position = {i: k for k, i in enumerate(order)}
    waits = tuple(driver.waits[position[i]] for i in range(len(calls)))
    answered = [w for w in waits if w is not None]
    return SimReport(
        invocations=len(calls),
        cold_starts=driver.cold,
        warm_starts=driver.warm,
        failed=dict(driver.failed),
        wait_s=sum(answered),
        max_wait_s=max(answered, default=0.0),
        waits_s=waits,
        cold_starts_by_function=dict(driver.cold_by_fn),
        containers_started=driver.started,
        containers_stopped=dict(driver.stopped),
        peak_nodes=driver.peak_nodes,
        node_seconds=driver.node_seconds,
        idle_memory_mb_s=driver.idle_mb_s,
        end_s=driver.now,
        actions=tuple(driver.log),
    )


# -- trace replay ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ReplayReport:
    """What replaying a trace under one keep-alive policy cost.

    Ratios are cold starts / invocations. ``p75_app_cold_start_ratio`` is the
    75th percentile (linear interpolation) over apps of each app's ratio.
    ``wall_s`` and ``decisions`` (facts fed to the core) describe the run, not
    its outcome, and are left out of ``==``.
    """

    policy: str
    source: str
    invocations: int
    cold_starts: int
    warm_starts: int
    cold_start_ratio: float
    p75_app_cold_start_ratio: float
    app_cold_start_ratio: dict[str, float]
    function_cold_start_ratio: dict[str, float]
    function_invocations: dict[str, int]
    idle_memory_mb_s: float
    idle_memory_by_function: dict[str, float]
    node_seconds: float
    peak_nodes: int
    wait_s: float
    max_wait_s: float
    containers_started: int
    containers_stopped: dict[str, int]
    failed: dict[str, int]
    end_s: float
    decisions: int = attrs.field(default=0, eq=False)
    wall_s: float = attrs.field(default=0.0, eq=False)

    def summary(self) -> dict[str, Any]:
        """The headline numbers, JSON-ready."""
        return {
            "policy": self.policy,
            "invocations": self.invocations,
            "cold_starts": self.cold_starts,
            "cold_start_ratio": self.cold_start_ratio,
            "p75_app_cold_start_ratio": self.p75_app_cold_start_ratio,
            "idle_memory_mb_s": self.idle_memory_mb_s,
            "node_seconds": self.node_seconds,
            "wait_s": self.wait_s,
            "evictions": self.containers_stopped.get("evicted", 0),
            "failed": sum(self.failed.values()),
        }


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def policy_name(policy: KeepAlivePolicy | None) -> str:
    if policy is None:
        return "fixed:600"
    ttl = getattr(policy, "ttl", None)
    if type(policy).__name__ == "FixedKeepAlive" and ttl is not None:
        return f"fixed:{ttl:g}"
    return str(getattr(policy, "name", type(policy).__name__))


def replay(
    trace: Trace,
    *,
    keep_alive: KeepAlivePolicy | None = None,
    nodes: SimulatedNodes | None = None,
    concurrency: int = 1,
    queue_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> ReplayReport:
    """Replay ``trace`` through the real ``Scheduler`` on simulated ``nodes`` in virtual time.

    Every function has ``idle_timeout=None`` (the policy decides), the trace's
    memory and cold start, and ``concurrency`` calls per container (1: one
    invocation per container, as in the Azure model). ``nodes`` defaults to
    ``REPLAY_NODES``, large enough that memory pressure plays no part.
    ``progress(done, total)`` is called every 16384 arrivals.
    """
    import time as _time  # the wall clock is only read to report speed

    started = _time.perf_counter()
    nodes = nodes if nodes is not None else REPLAY_NODES
    fns = {
        f.name: SimFunction(f.name, memory_mb=f.memory_mb, concurrency=concurrency, idle_timeout=None, cold_start_s=f.cold_start_s)
        for f in trace.functions
    }
    sched = Scheduler(nodes.resource_manager(), keep_alive=keep_alive, queue_limit=queue_limit)
    for fn in fns.values():
        sched.add_function(fn.profile())
    names = [f.name for f in trace.functions]
    arrivals = (trace.times, [names[c] for c in trace.calls], trace.durations)
    driver = _Driver(sched, fns, nodes, False, arrivals, range(len(trace)), None)
    driver.progress = progress
    driver.apply(sched.start(now=0.0))
    driver.run(drain=False)
    driver.finish()
    end = driver.now

    per_fn: collections.Counter[str] = collections.Counter(names[c] for c in trace.calls)
    fn_ratio = {f: driver.cold_by_fn[f] / per_fn[f] for f in names if per_fn[f]}
    app_calls: collections.Counter[str] = collections.Counter()
    app_cold: collections.Counter[str] = collections.Counter()
    for f in trace.functions:
        app_calls[f.app] += per_fn[f.name]
        app_cold[f.app] += driver.cold_by_fn[f.name]
    app_ratio = {a: app_cold[a] / n for a, n in app_calls.items() if n}
    answered = [w for w in driver.waits if w is not None]
    return ReplayReport(
        policy=name or policy_name(keep_alive),
        source=trace.source,
        invocations=len(trace),
        cold_starts=driver.cold,
        warm_starts=driver.warm,
        cold_start_ratio=driver.cold / len(trace) if len(trace) else 0.0,
        p75_app_cold_start_ratio=percentile(app_ratio.values(), 0.75),
        app_cold_start_ratio=app_ratio,
        function_cold_start_ratio=fn_ratio,
        function_invocations=dict(per_fn),
        idle_memory_mb_s=driver.idle_mb_s,
        idle_memory_by_function={f: sched.usage_at(f, now=end).idle_memory_mb_s for f in names},
        node_seconds=driver.node_seconds,
        peak_nodes=driver.peak_nodes,
        wait_s=sum(answered),
        max_wait_s=max(answered, default=0.0),
        containers_started=driver.started,
        containers_stopped=dict(driver.stopped),
        failed=dict(driver.failed),
        end_s=end,
        decisions=driver.decisions,
        wall_s=_time.perf_counter() - started,
    )
