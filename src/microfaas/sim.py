"""Replay a trace of invocations through the real scheduler on a virtual clock.

How this works. ``simulate`` builds the same ``Scheduler`` and ``ResourceManager``
that ``platform.py`` drives, and plays the part of the async shell with no I/O,
no threads and no clock: time is a float that jumps from one event to the next.
Pending events sit in a heap of ``(time, order, seq, kind, payload)``; ``seq``
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
from collections.abc import Iterable
from typing import Any, Final

import attrs

from .keepalive import KeepAlivePolicy
from .resources import AcquireNode, ReleaseNode, ResourceManager
from .scheduler import Action, FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer

__all__ = ["Invocation", "SimFunction", "SimReport", "SimulatedNodes", "simulate"]

# With drain=True, ticks stop this many virtual seconds after the last event
# (pinned containers that cannot start are retried forever).
DRAIN_HORIZON: Final = 86_400.0

# Event kinds; outcomes of earlier actions come before arrivals at the same instant.
_NODE_UP, _STARTED, _FINISHED, _ARRIVAL = "node_up", "started", "finished", "arrival"
_ORDER: Final = {_NODE_UP: 0, _STARTED: 0, _FINISHED: 0, _ARRIVAL: 1}


def _at_least(low: float) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not value >= low:
            raise ValueError(f"{type(instance).__name__}: {attribute.name} must be >= {low}, got {value!r}")

    return check


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
        return FunctionProfile(
            name=self.name,
            memory_mb=self.memory_mb,
            concurrency=self.concurrency,
            min_containers=self.min_containers,
            max_containers=self.max_containers,
            idle_timeout=self.idle_timeout,
        )


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
    def __init__(self, sched: Scheduler, fns: dict[str, SimFunction], nodes: SimulatedNodes, record: bool) -> None:
        self.sched, self.fns, self.nodes, self.record = sched, fns, nodes, record
        self.now = 0.0
        self.heap: list[tuple[float, int, int, str, Any]] = []
        self.seq = 0
        self.arrived: dict[str, float] = {}
        self.durations: dict[str, float] = {}
        self.waits: dict[str, float | None] = {}
        self.boxes: dict[str, _Box] = {}
        self.held: dict[str, float] = {}  # node id -> acquired at
        self.node_seconds = self.idle_mb_s = 0.0
        self.peak_nodes = self.started = self.cold = self.warm = 0
        self.cold_by_fn: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self.stopped: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[float, Action]] = []

    def push(self, time: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.heap, (time, _ORDER[kind], self.seq, kind, payload))
        self.seq += 1

    def _idle_end(self, box: _Box) -> None:
        if box.up and box.busy == 0:
            self.idle_mb_s += box.memory_mb * (self.now - box.idle_since)

    def apply(self, actions: list[Action]) -> None:
        pending = collections.deque(actions)
        now = self.now
        while pending:
            action = pending.popleft()
            if self.record:
                self.log.append((now, action))
            if isinstance(action, RunOn):
                box = self.boxes[action.container_id]
                self._idle_end(box)
                box.busy += 1
                self.waits[action.request_id] = now - self.arrived[action.request_id]
                if action.cold_start:
                    self.cold += 1
                    self.cold_by_fn[box.function] += 1
                else:
                    self.warm += 1
                self.push(now + self.durations[action.request_id], _FINISHED, action.container_id)
            elif isinstance(action, StartContainer):
                self.started += 1
                self.boxes[action.container_id] = _Box(function=action.function, memory_mb=self.fns[action.function].memory_mb)
                self.push(now + self.fns[action.function].cold_start_s, _STARTED, action.container_id)
            elif isinstance(action, StopContainer):
                box = self.boxes.pop(action.container_id, None)
                if box is not None:
                    self._idle_end(box)
                self.stopped[action.reason] += 1
                pending.extend(self.sched.container_exited(action.container_id, now=now))
            elif isinstance(action, FailRequest):
                self.failed[action.reason] += 1
                self.waits[action.request_id] = None
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
        if kind == _ARRIVAL:
            request_id, function = payload
            self.arrived[request_id] = now
            self.apply(sched.request(request_id, function, now=now))
        elif kind == _STARTED:
            box = self.boxes.get(payload)
            if box is None:
                return  # stopped while starting (shutdown): the core ignores it too
            box.up, box.idle_since = True, now
            self.apply(sched.container_started(payload, now=now))
        elif kind == _FINISHED:
            box = self.boxes.get(payload)
            if box is not None:
                box.busy -= 1
                box.idle_since = now
            self.apply(sched.call_finished(payload, now=now))
        elif kind == _NODE_UP:
            self.apply(sched.node_acquired(payload, now=now))

    def run(self, drain: bool) -> None:
        last_event = 0.0
        stalled_at: float | None = None
        while True:
            wake = self.sched.next_wake()
            if self.heap and (wake is None or self.heap[0][0] <= wake):
                time, _, _, kind, payload = heapq.heappop(self.heap)
                self.now = last_event = max(self.now, time)
                self.handle(kind, payload)
                continue
            if wake is None or not (self.heap or (drain and wake <= last_event + DRAIN_HORIZON)):
                return
            time = max(wake, self.now)
            if time == stalled_at:
                # next_wake() and tick() may round differently; step past the float.
                time = math.nextafter(time, math.inf)
            self.now = time
            actions = self.sched.tick(now=time)
            stalled_at = time if not actions else None
            self.apply(actions)

    def finish(self) -> None:
        for box in self.boxes.values():
            self._idle_end(box)
        for acquired_at in self.held.values():
            self.node_seconds += self.now - acquired_at


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
    driver = _Driver(sched, fns, nodes, record)
    for i, call in sorted(enumerate(calls), key=lambda ic: (ic[1].time_s, ic[0])):
        request_id = f"r-{i}"
        driver.durations[request_id] = call.duration_s
        driver.push(call.time_s, _ARRIVAL, (request_id, call.function))
    driver.apply(sched.start(now=0.0))
    driver.run(drain)
    driver.finish()
    waits = tuple(driver.waits.get(f"r-{i}") for i in range(len(calls)))
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
