"""The scheduler core: gives every request a container, with no I/O.

How this works. The shell (``platform.py`` for real nodes, ``sim.py`` for
simulated ones) feeds facts in -- a request arrived, a container started or
exited, a call finished, a node came up, time passed -- each with ``now``, and
gets back a list of actions to carry out:

``RunOn(request, container)``
    run the request in that container (``cold_start`` says it waited for the start);
``StartContainer(container, function, node)`` / ``StopContainer(container, reason)``
    create or destroy a container; the shell reports ``container_started`` or
    ``container_start_failed``, and ``container_exited`` when the process is gone;
``FailRequest(request, reason)``
    answer the request with an error: ``throttled``, ``start_failed`` or ``closed``;
``AcquireNode(node)`` / ``ReleaseNode(node)``
    from the ResourceManager (``resources.py``).

When to look again is ``next_wake()``; the shell calls ``tick(now=...)`` then.

Rules, as in AWS Lambda and OpenWhisk:

* Warm first: a request goes to a container of its function with a free slot,
  the most recently used first (LIFO keeps the pool small).
* Otherwise it waits in its function's FIFO and the scheduler starts only as
  many containers as the waiting requests need beyond the slots already starting
  (``concurrency`` counts slots), up to ``max_containers``. A container that comes
  up serves the oldest waiting requests or goes idle; a container freed by a
  finished call serves a waiting request before any start completes.
* Placement is best fit (``ResourceManager.place``). With no room and no node to
  acquire, idle unpinned containers are evicted, least recently used first
  (or lowest ``eviction_priority`` first, if the keep-alive policy says); if
  that is not enough the start waits in one FIFO shared by all functions, so a
  large function is not starved by small ones.
* At most ``queue_limit`` requests wait at once; past it a request is throttled.
* Pipelining (``pipeline_depth`` > 0, off by default): when a function's calls are
  short (the recent average under ``PIPELINE_MAX_CALL_S``), its concurrency is 1
  and it cannot grow, a request that would wait is sent at once to the busy
  container with the fewest calls queued, up to ``pipeline_depth`` calls on top
  of the running one, where it waits for that container's slot. The container
  is never idle between calls, and the shell can batch its writes. A call queued
  behind one that runs long waits for it, so long calls are never pipelined.
* An idle container is stopped after its keep-alive (the function's
  ``idle_timeout``, else the policy's). A policy may ask for containers ahead
  of calls: one pre-warmed after an idle period (``prewarm_delay``), or spares
  when a call leaves no free container (``spares``; started only where there is
  room without evicting, kept ``spare_ttl`` until first used). ``min_containers`` containers are pinned:
  started with the platform, never stopped for idleness, replaced when they die.

Invariants (checked by tests/test_scheduler_rules.py): no node over capacity; a
request is answered exactly once (RunOn or FailRequest); a pinned container is
never stopped for idleness.
"""

from __future__ import annotations

import collections
import heapq
import math
from typing import Final

import attrs

from .actions import Action, ContainerRecord, ContainerState, FailRequest, FunctionProfile, RunOn, StartContainer, StopContainer
from .keepalive import FixedKeepAlive, KeepAlivePolicy
from .resources import ResourceManager
from .usage import Usage, UsageMeter

__all__ = [
    "Action",
    "ContainerRecord",
    "ContainerState",
    "FailRequest",
    "FunctionProfile",
    "RunOn",
    "Scheduler",
    "StartContainer",
    "StopContainer",
]

# A pinned container that fails to start is retried after this many seconds,
# doubling per consecutive failure up to the maximum.
PINNED_RETRY_INITIAL: Final = 0.5
PINNED_RETRY_MAX: Final = 30.0
# Calls are pipelined only while a function's recent average call is shorter than this:
# there a round trip to the platform between calls is a large part of the work.
PIPELINE_MAX_CALL_S: Final = 0.001
# Weight of the newest call in the running average of call durations.
_RECENT_WEIGHT: Final = 0.125


@attrs.define(eq=False)
class _Function:
    profile: FunctionProfile
    containers: dict[str, ContainerRecord] = attrs.Factory(dict)
    # Containers with a free slot, most recently used last.
    available: dict[str, None] = attrs.Factory(dict)
    waiting: collections.deque[str] = attrs.Factory(collections.deque)
    starting_slots: int = 0
    queued_starts: int = 0  # entries of this function in the shared capacity queue
    start_failures: int = 0
    pinned_retry_at: float | None = None
    prewarm_at: float | None = None
    recent_call_s: float = math.inf  # running average of call durations (inf: none reported yet)

    def can_grow(self) -> bool:
        cap = self.profile.max_containers
        return cap is None or len(self.containers) + self.queued_starts < cap

    def deficit(self) -> int:
        """Waiting requests not covered by a starting or queued container."""
        covered = self.starting_slots + self.queued_starts * self.profile.concurrency
        return len(self.waiting) - covered

    def pinned_live(self) -> int:
        return sum(1 for c in self.containers.values() if c.pinned)


class Scheduler:
    """The sans-I/O scheduler. Every method takes ``now`` and returns actions.

    :param resources: the node bookkeeping.
    :param keep_alive: the policy for functions whose ``idle_timeout`` is None.
    :param queue_limit: how many requests may wait at once (None: no limit).
    :param pipeline_depth: how many calls a busy container may hold queued behind its
        running one (0: no pipelining). The shell must then tell which calls really
        started, and report call durations to ``call_finished``.
    """

    def __init__(
        self,
        resources: ResourceManager,
        *,
        keep_alive: KeepAlivePolicy | None = None,
        queue_limit: int | None = None,
        pipeline_depth: int = 0,
    ) -> None:
        if queue_limit is not None and queue_limit < 0:
            raise ValueError(f"queue_limit must be >= 0 or None, got {queue_limit}")
        if pipeline_depth < 0:
            raise ValueError(f"pipeline_depth must be >= 0, got {pipeline_depth}")
        self.pipeline_depth = pipeline_depth
        self.resources = resources
        self.keep_alive: KeepAlivePolicy = keep_alive if keep_alive is not None else FixedKeepAlive()
        self.queue_limit = queue_limit
        self.closed = False
        self._functions: dict[str, _Function] = {}
        self._containers: dict[str, ContainerRecord] = {}  # live: starting, idle, busy
        self._stopping: dict[str, ContainerRecord] = {}
        self._waiting_function: dict[str, str] = {}  # request id -> function name
        self._capacity_queue: collections.deque[str] = collections.deque()
        self._expiry: list[tuple[float, str]] = []  # (time, container id), at most one live entry per container
        # (time, "pin" | "prewarm", function): pinned retries and pre-warms, lazily pruned.
        self._timers: list[tuple[float, str, str]] = []
        self._next_container = 1
        self._wake_epoch = 0  # see ``wake_epoch``
        self.usage = UsageMeter()

    # -- registration and queries -----------------------------------------------------

    def add_function(self, profile: FunctionProfile) -> None:
        if profile.name in self._functions:
            raise ValueError(f"function {profile.name!r} is already registered")
        if not self.resources.fits_a_node(profile.memory_mb):
            raise ValueError(
                f"{profile.name}: memory_mb={profile.memory_mb} does not fit on a node of "
                f"{self.resources.node_memory_mb} MB; lower memory_mb or raise node_memory_mb"
            )
        self._functions[profile.name] = _Function(profile)
        self.keep_alive.function_added(profile.name, memory_mb=profile.memory_mb)

    def function_deployed(self, profile: FunctionProfile, *, now: float) -> list[Action]:
        """A function was added while running (``faas.deploy``): register it and start its pinned containers.

        :raises ValueError: as ``add_function``.
        """
        self.add_function(profile)
        return self._replenish_pinned(self._functions[profile.name], now)

    def retire_function(self, function: str, *, now: float) -> list[Action]:
        """``function`` takes no new requests (a newer version replaced it): stop its idle containers,
        pinned ones too, and keep none for it. The shell calls this again after each later fact about
        one of its containers (a call finished, a start completed) until it has none; requests already
        waiting for it are still served."""
        fn = self._functions[function]
        if fn.profile.min_containers:
            fn.profile = attrs.evolve(fn.profile, min_containers=0)
        fn.pinned_retry_at = fn.prewarm_at = None
        actions: list[Action] = [
            self._stop(rec, "retired", now) for rec in list(fn.containers.values()) if rec.state is ContainerState.IDLE
        ]
        if actions and self._capacity_queue:
            actions += self._drain_capacity_queue(now)
        return actions

    def profile(self, function: str) -> FunctionProfile:
        return self._functions[function].profile

    def container(self, container_id: str) -> ContainerRecord | None:
        return self._containers.get(container_id) or self._stopping.get(container_id)

    def containers(self, function: str | None = None) -> list[ContainerRecord]:
        """Live containers (starting, idle, busy) and those being stopped."""
        records = list(self._containers.values()) + list(self._stopping.values())
        return [c for c in records if function is None or c.function == function]

    def live(self, function: str) -> int:
        return len(self._functions[function].containers)

    def usage_at(self, function: str | None = None, *, now: float) -> Usage:
        """Container-seconds by state and idle MB·s so far, for one function or all."""
        return self.usage.snapshot(function, self.containers(function), now=now)

    def waiting(self, function: str | None = None) -> int:
        if function is None:
            return len(self._waiting_function)
        return len(self._functions[function].waiting)

    # -- facts ------------------------------------------------------------------------

    def start(self, *, now: float) -> list[Action]:
        """The platform starts: acquire ``min_nodes`` and start pinned containers."""
        actions: list[Action] = []
        while len(self.resources.nodes) < self.resources.min_nodes:
            actions.append(self.resources.acquire(now=now))
        for fn in self._functions.values():
            actions += self._replenish_pinned(fn, now)
        return actions

    def request(self, request_id: str, function: str, *, now: float) -> list[Action]:
        """A request for ``function`` arrived."""
        if self.closed:
            return [FailRequest(request_id=request_id, reason="closed")]
        fn = self._functions[function]
        policy = self.keep_alive
        policy.observe_arrival(function, now=now)
        actions: list[Action]
        if fn.available:
            container_id = next(reversed(fn.available))
            actions = [self._dispatch(fn, fn.containers[container_id], request_id, cold=False, now=now)]
            cold = False
        elif self.pipeline_depth and not fn.waiting and (rec := self._pipeline_to(fn)) is not None:
            return [self._queue_on(rec, request_id, now)]
        else:
            if self.queue_limit is not None and len(self._waiting_function) >= self.queue_limit:
                return [FailRequest(request_id=request_id, reason="throttled")]
            fn.waiting.append(request_id)
            self._waiting_function[request_id] = function
            actions = self._provision(fn, now)
            cold = True
        if not fn.available and fn.profile.idle_timeout is None:
            # The pool ran dry: the policy may want containers standing by for the calls that follow.
            spares = policy.spares(function, cold=cold, now=now)
            if spares > 0:
                actions += self._start_spares(fn, spares, now)
        return actions

    def cancel(self, request_id: str, *, now: float) -> list[Action]:
        """The caller gave up on a request that may still be waiting."""
        function = self._waiting_function.pop(request_id, None)
        if function is None:
            return []
        self._functions[function].waiting.remove(request_id)
        # A start queued for room may no longer be needed; drop it so it holds up no one.
        return self._drain_capacity_queue(now) if self._capacity_queue else []

    def container_started(self, container_id: str, *, now: float) -> list[Action]:
        rec = self._containers.get(container_id)
        if rec is None or rec.state is not ContainerState.STARTING:
            return []
        fn = self._functions[rec.function]
        fn.starting_slots -= rec.concurrency
        fn.start_failures = 0
        self.usage.record(rec, ContainerState.IDLE, now)
        rec.last_used = now
        actions: list[Action] = []
        while fn.waiting and rec.busy < rec.concurrency:
            actions.append(self._dispatch(fn, rec, self._pop_waiting(fn), cold=True, now=now))
        if rec.busy < rec.concurrency:
            fn.available[rec.id] = None
        if rec.busy == 0:
            self._went_idle(fn, rec, now)
            # An idle container can be evicted: a start queued for room may go now.
            if self._capacity_queue:
                actions += self._drain_capacity_queue(now)
        return actions

    def container_start_failed(self, container_id: str, *, now: float) -> list[Action]:
        rec = self._containers.get(container_id)
        if rec is None or rec.state is not ContainerState.STARTING:
            return self.container_exited(container_id, now=now)
        self._forget(rec, now)
        return self._after_start_failed(rec, now) + self._drain_capacity_queue(now)

    def call_finished(self, container_id: str, *, now: float, duration_s: float | None = None) -> list[Action]:
        """A call in ``container_id`` finished (with a result or a handler error).

        :param duration_s: how long it ran, if known; it decides whether calls are pipelined.
        """
        rec = self._containers.get(container_id)
        if rec is None or rec.busy == 0:
            return []
        fn = self._functions[rec.function]
        if duration_s is not None:
            recent = fn.recent_call_s
            fn.recent_call_s = duration_s if recent == math.inf else recent + _RECENT_WEIGHT * (duration_s - recent)
        rec.last_used = now
        actions: list[Action] = []
        if rec.queued:
            rec.queued -= 1  # the next queued call takes the freed slot
        else:
            rec.busy -= 1
            if not fn.waiting:
                fn.available.pop(rec.id, None)
                fn.available[rec.id] = None  # most recently used goes last
                if rec.busy == 0:
                    self._went_idle(fn, rec, now)
                    if self._capacity_queue:
                        return self._drain_capacity_queue(now)
                return []
            actions.append(self._dispatch(fn, rec, self._pop_waiting(fn), cold=False, now=now))
        while fn.waiting and rec.queued < self.pipeline_depth and rec.busy == rec.concurrency and self._may_pipeline(fn):
            actions.append(self._queue_on(rec, self._pop_waiting(fn), now))
        # Fewer requests wait: a start queued for room may no longer be needed.
        if actions and self._capacity_queue:
            actions += self._drain_capacity_queue(now)
        return actions

    def container_exited(self, container_id: str, *, now: float) -> list[Action]:
        """The container's process is gone: stopped by us, crashed, or killed."""
        stopped = self._stopping.pop(container_id, None)
        if stopped is not None:
            self.usage.record(stopped, ContainerState.STOPPED, now)
            return []
        rec = self._containers.get(container_id)
        if rec is None:
            return []
        if rec.state is ContainerState.STARTING:
            return self.container_start_failed(container_id, now=now)
        self._forget(rec, now)
        return self._after_exit(rec, now) + self._drain_capacity_queue(now)

    def node_acquired(self, node_id: str, *, now: float) -> list[Action]:
        if node_id not in self.resources.nodes:
            return []
        self.resources.node_acquired(node_id, now=now)
        actions: list[Action] = []
        for rec in self._containers.values():
            if rec.node_id == node_id and rec.awaiting_node:
                rec.awaiting_node = False
                actions.append(StartContainer(container_id=rec.id, function=rec.function, node_id=node_id, pinned=rec.pinned))
        return actions + self._drain_capacity_queue(now)

    def node_failed(self, node_id: str, *, now: float) -> list[Action]:
        """A node could not be acquired, or was lost with its containers."""
        # Forget the node and all its containers before reacting to their loss, so
        # that no replacement (a pin, a start for a waiting request, a queued start)
        # is placed on the lost node and no eviction picks one of its containers.
        self.resources.node_lost(node_id, now=now)
        lost = [c for c in self._containers.values() if c.node_id == node_id]
        was_starting = {c.id for c in lost if c.state is ContainerState.STARTING}
        for rec in lost:
            self._forget(rec, now)
        for rec in [c for c in self._stopping.values() if c.node_id == node_id]:
            del self._stopping[rec.id]  # gone with the node; no exit will be reported
        actions: list[Action] = []
        for rec in lost:
            actions += self._after_start_failed(rec, now) if rec.id in was_starting else self._after_exit(rec, now)
        return actions + self._drain_capacity_queue(now)

    def tick(self, *, now: float) -> list[Action]:
        """Time passed: stop expired idle containers, retry pins, pre-warm, release empty nodes."""
        actions: list[Action] = []
        while (due := self._next_expiry()) is not None and due.expires_at <= now:
            heapq.heappop(self._expiry)
            due.expiry_entry = None
            actions.append(self._stop(due, "idle", now))
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, kind, name = heapq.heappop(timers)
            fn = self._functions[name]
            if kind == "pin" and fn.pinned_retry_at == at:
                fn.pinned_retry_at = None
                actions += self._replenish_pinned(fn, now)
            elif kind == "prewarm" and fn.prewarm_at == at:
                fn.prewarm_at = None
                if not fn.containers and fn.deficit() <= 0:
                    actions += self._try_start(fn, pinned=False, now=now) or []
        if actions:
            actions += self._drain_capacity_queue(now)
        actions += self.resources.expire(now=now)
        return actions

    @property
    def wake_epoch(self) -> int:
        """Changes whenever ``next_wake`` may have come earlier (a keep-alive, pre-warm or retry
        was set, a node was acquired or emptied). A shell may ask ``next_wake`` only then:
        otherwise the wake it holds is at worst early, and ``tick`` finds nothing to do."""
        return self._wake_epoch + self.resources.wake_epoch

    def next_wake(self) -> float | None:
        """When ``tick`` next has something to do (None: only new facts matter)."""
        due = self._next_expiry()
        times = [due.expires_at] if due is not None else []
        timers = self._timers
        while timers:
            at, kind, name = timers[0]
            fn = self._functions[name]
            if at == (fn.pinned_retry_at if kind == "pin" else fn.prewarm_at):
                times.append(at)
                break
            heapq.heappop(timers)
        node_wake = self.resources.next_wake()
        if node_wake is not None:
            times.append(node_wake)
        return min(times, default=None)

    def shutdown(self, *, now: float) -> list[Action]:
        """The platform stops: fail waiting requests, stop every container, release nodes."""
        self.closed = True
        actions: list[Action] = []
        for request_id in list(self._waiting_function):
            actions.append(FailRequest(request_id=request_id, reason="closed"))
        self._waiting_function.clear()
        self._capacity_queue.clear()
        for fn in self._functions.values():
            fn.waiting.clear()
            fn.queued_starts = 0
            fn.pinned_retry_at = fn.prewarm_at = None
        for rec in list(self._containers.values()):
            if rec.awaiting_node:
                self._forget(rec, now)  # never started: no process to stop, no exit will be reported
            else:
                actions.append(self._stop(rec, "shutdown", now))
        actions += self.resources.release_all(now=now)
        return actions

    # -- internals ----------------------------------------------------------------------

    def _after_start_failed(self, rec: ContainerRecord, now: float) -> list[Action]:
        """A forgotten container never came up: fail one waiting request, back off a pin."""
        fn = self._functions[rec.function]
        fn.start_failures += 1
        actions: list[Action] = []
        if fn.waiting:
            actions.append(FailRequest(request_id=self._pop_waiting(fn), reason="start_failed", container_id=rec.id))
        if rec.pinned:
            self._retry_pinned(fn, now + min(PINNED_RETRY_MAX, PINNED_RETRY_INITIAL * 2 ** (fn.start_failures - 1)))
        actions += self._provision(fn, now)
        return actions

    def _after_exit(self, rec: ContainerRecord, now: float) -> list[Action]:
        """A forgotten container died after starting: replace a pin, cover waiting requests."""
        fn = self._functions[rec.function]
        actions = self._replenish_pinned(fn, now) if rec.pinned else []
        actions += self._provision(fn, now)
        return actions

    def _dispatch(self, fn: _Function, rec: ContainerRecord, request_id: str, *, cold: bool, now: float) -> RunOn:
        rec.busy += 1
        rec.calls += 1
        rec.last_used = now
        if rec.state is not ContainerState.BUSY:
            self.usage.record(rec, ContainerState.BUSY, now)
        if rec.busy >= rec.concurrency:
            fn.available.pop(rec.id, None)
        return RunOn(request_id=request_id, container_id=rec.id, cold_start=cold)

    def _may_pipeline(self, fn: _Function) -> bool:
        return fn.profile.concurrency == 1 and fn.recent_call_s < PIPELINE_MAX_CALL_S and not fn.can_grow()

    def _pipeline_to(self, fn: _Function) -> ContainerRecord | None:
        """The busy container to queue a call on: the one with the fewest queued (None: do not pipeline)."""
        if not self._may_pipeline(fn):
            return None
        best = None
        for rec in fn.containers.values():
            if rec.state is ContainerState.BUSY and rec.queued < self.pipeline_depth and (best is None or rec.queued < best.queued):
                best = rec
        return best

    def _queue_on(self, rec: ContainerRecord, request_id: str, now: float) -> RunOn:
        rec.queued += 1
        rec.calls += 1
        rec.last_used = now
        return RunOn(request_id=request_id, container_id=rec.id, cold_start=False, queued=True)

    def _pop_waiting(self, fn: _Function) -> str:
        request_id = fn.waiting.popleft()
        del self._waiting_function[request_id]
        return request_id

    def _retry_pinned(self, fn: _Function, at: float) -> None:
        fn.pinned_retry_at = at
        heapq.heappush(self._timers, (at, "pin", fn.profile.name))
        self._wake_epoch += 1

    def _went_idle(self, fn: _Function, rec: ContainerRecord, now: float) -> None:
        self.usage.record(rec, ContainerState.IDLE, now)
        if rec.pinned:
            return
        if fn.profile.idle_timeout is not None:
            ttl = fn.profile.idle_timeout
        elif rec.spare and rec.calls == 0:
            ttl = self.keep_alive.spare_ttl(rec.function, now=now)  # a spare came up: no call ended
        else:
            ttl = self.keep_alive.ttl_for(rec.function, now=now)
            delay = self.keep_alive.prewarm_delay(rec.function, now=now)
            if delay is not None:
                fn.prewarm_at = now + delay
                heapq.heappush(self._timers, (fn.prewarm_at, "prewarm", rec.function))
                self._wake_epoch += 1
        rec.expires_at = now + ttl
        # One heap entry per container: an entry earlier than its new expiry is moved when it
        # comes up (``_next_expiry``), so a container used again and again pushes nothing.
        if rec.expires_at < (rec.expiry_entry if rec.expiry_entry is not None else math.inf):
            heapq.heappush(self._expiry, (rec.expires_at, rec.id))
            rec.expiry_entry = rec.expires_at
            self._wake_epoch += 1

    def _next_expiry(self) -> ContainerRecord | None:
        """The idle container that expires first, with the heap's top made exact.

        Entries of containers that are gone, busy or re-entered are dropped; an entry
        earlier than its container's expiry (it was used since) is moved to that time.
        """
        expiry = self._expiry
        while expiry:
            at, container_id = expiry[0]
            rec = self._containers.get(container_id)
            if rec is None or rec.expiry_entry != at:
                heapq.heappop(expiry)  # gone, or superseded by an earlier entry
            elif rec.state is not ContainerState.IDLE or rec.expires_at == math.inf:
                heapq.heappop(expiry)
                rec.expiry_entry = None
            elif rec.expires_at > at:
                heapq.heapreplace(expiry, (rec.expires_at, container_id))
                rec.expiry_entry = rec.expires_at
            else:
                return rec
        return None

    def _start_spares(self, fn: _Function, spares: int, now: float) -> list[Action]:
        """Start containers until ``spares`` are starting beyond the waiting requests (called when
        no container has a free slot).

        Spares never evict and never queue for room: they are a bet on demand, not demand."""
        concurrency = fn.profile.concurrency
        free = fn.starting_slots - len(fn.waiting)  # slots starting that no waiting request claims
        actions: list[Action] = []
        memory_mb = fn.profile.memory_mb
        while free < spares * concurrency and fn.can_grow() and not self._capacity_queue:
            if self.resources.place(memory_mb) is None and not self.resources.can_acquire():
                break
            started = self._try_start(fn, pinned=False, now=now, spare=True)
            if started is None:  # pragma: no cover - place/can_acquire said there was room
                break
            actions += started
            free += concurrency
        return actions

    def _provision(self, fn: _Function, now: float) -> list[Action]:
        """Start (or queue) containers for the waiting requests not yet covered."""
        actions: list[Action] = []
        while fn.deficit() > 0 and fn.can_grow():
            started = None if self._capacity_queue else self._try_start(fn, pinned=False, now=now)
            if started is None:
                self._capacity_queue.append(fn.profile.name)
                fn.queued_starts += 1
            else:
                actions += started
        return actions

    def _drain_capacity_queue(self, now: float) -> list[Action]:
        """Start queued containers in FIFO order while they fit; stop at the first that does not."""
        actions: list[Action] = []
        queue = self._capacity_queue
        while queue:
            fn = self._functions[queue[0]]
            fn.queued_starts -= 1
            if fn.deficit() <= 0:
                queue.popleft()
                continue
            started = self._try_start(fn, pinned=False, now=now)
            if started is None:
                fn.queued_starts += 1
                break
            queue.popleft()
            actions += started
        return actions

    def _replenish_pinned(self, fn: _Function, now: float) -> list[Action]:
        actions: list[Action] = []
        if fn.pinned_retry_at is not None:
            return actions
        for _ in range(fn.profile.min_containers - fn.pinned_live()):
            started = self._try_start(fn, pinned=True, now=now)
            if started is None:
                # No room now; look again after a short wait.
                self._retry_pinned(fn, now + PINNED_RETRY_INITIAL)
                break
            actions += started
        return actions

    def _try_start(self, fn: _Function, *, pinned: bool, now: float, spare: bool = False) -> list[Action] | None:
        """Reserve room for a new container of ``fn`` and start it; None when nothing fits."""
        memory_mb = fn.profile.memory_mb
        actions: list[Action] = []
        node_id = self.resources.place(memory_mb)
        if node_id is None and self.resources.can_acquire():
            acquire = self.resources.acquire(now=now)
            actions.append(acquire)
            node_id = acquire.node_id
        if node_id is None:
            evictions = self._evict_for(memory_mb, now)
            if not evictions:
                return None
            actions += evictions
            node_id = self.resources.place(memory_mb)
            assert node_id is not None, "eviction freed room that placement cannot find"
        self.resources.reserve(node_id, memory_mb)
        container_id = f"c-{self._next_container}"
        self._next_container += 1
        rec = ContainerRecord(
            id=container_id,
            function=fn.profile.name,
            node_id=node_id,
            memory_mb=memory_mb,
            concurrency=fn.profile.concurrency,
            pinned=pinned,
            last_used=now,
            state_since=now,
            awaiting_node=not self.resources.is_ready(node_id),
            spare=spare,
        )
        fn.containers[container_id] = rec
        self._containers[container_id] = rec
        fn.starting_slots += rec.concurrency
        if not rec.awaiting_node:
            actions.append(StartContainer(container_id=container_id, function=rec.function, node_id=node_id, pinned=pinned))
        return actions

    def _evict_for(self, memory_mb: int, now: float) -> list[Action]:
        """Stop the idle, unpinned containers of lowest eviction priority that make room on one node.

        The priority is the policy's ``eviction_priority``: by default the time of
        last use, so the least recently used go first."""
        priority = self.keep_alive.eviction_priority
        idle = sorted(
            (c for c in self._containers.values() if c.state is ContainerState.IDLE and not c.pinned),
            key=lambda c: priority(c, now=now),
        )
        chosen: dict[str, list[ContainerRecord]] = collections.defaultdict(list)
        freed: dict[str, int] = collections.defaultdict(int)
        for rec in idle:
            chosen[rec.node_id].append(rec)
            freed[rec.node_id] += rec.memory_mb
            if self.resources.nodes[rec.node_id].free_mb + freed[rec.node_id] >= memory_mb:
                stops: list[Action] = [self._stop(victim, "evicted", now) for victim in chosen[rec.node_id]]
                for victim in chosen[rec.node_id]:
                    self.keep_alive.evicted(victim, remaining=len(self._functions[victim.function].containers), now=now)
                return stops
        return []

    def _stop(self, rec: ContainerRecord, reason: str, now: float) -> StopContainer:
        self._forget(rec, now, ContainerState.STOPPING)
        self._stopping[rec.id] = rec
        return StopContainer(container_id=rec.id, reason=reason)

    def _forget(self, rec: ContainerRecord, now: float, state: ContainerState = ContainerState.STOPPED) -> None:
        """Take a container out of service and give back its room."""
        fn = self._functions[rec.function]
        del self._containers[rec.id]
        del fn.containers[rec.id]
        fn.available.pop(rec.id, None)
        if rec.state is ContainerState.STARTING:
            fn.starting_slots -= rec.concurrency
        self.usage.record(rec, state, now)
        self.resources.free(rec.node_id, rec.memory_mb, now=now)
