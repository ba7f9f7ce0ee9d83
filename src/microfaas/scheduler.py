"""The scheduler core: gives every request a container, with no I/O.

How this works. The shell (``runtime/cluster.py`` for real nodes, ``sim.py`` for
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
Every container moves through the lifecycle table of ``containers.py``; a fact
that table does not allow (a start reported twice, a call finished in an idle
container, an id never issued) raises ``CoreMisuse``. The core's parts:
``functions.py`` (per-function bookkeeping and pipelining), ``wakes.py``
(expiries and timers), ``keepalive.py`` (policies), ``usage.py`` (accounting).

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
  of the running one and no more than ``PIPELINE_QUEUED_WORK_S`` of work by the
  recent average, where it waits for that container's slot. The container
  is never idle between calls, and the shell can batch its writes. A call queued
  behind one that runs long waits for it, so long calls are never pipelined.
* An idle container is stopped after its keep-alive (the function's
  ``idle_timeout``, else the policy's ``went_idle`` decision). A policy may ask
  for containers ahead of calls: one pre-warmed after an idle period (the
  decision's ``prewarm``), or spares when a call leaves no free container
  (``spares``; started only where there is room without evicting, kept
  ``spare_ttl`` until first used). ``min_containers`` containers are pinned:
  started with the platform, never stopped for idleness, replaced when they die.

Invariants (checked by tests/test_scheduler_rules.py): no node over capacity; a
request is answered exactly once (RunOn or FailRequest); a pinned container is
never stopped for idleness.
"""

from __future__ import annotations

from typing import Final

import attrs

from .actions import Action, ContainerRecord, ContainerState, FailRequest, FunctionProfile, RunOn, StartContainer, StopContainer
from .containers import ContainerBook, CoreMisuse, Fact, next_state
from .functions import PIPELINE_MAX_CALL_S, FunctionState
from .keepalive import FixedKeepAlive, KeepAlivePolicy
from .placement import Placement
from .resources import ResourceManager
from .usage import Usage
from .wakes import PIN, Wakes

__all__ = [
    "PIPELINE_MAX_CALL_S",
    "Action",
    "ContainerRecord",
    "ContainerState",
    "CoreMisuse",
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

# Enum members as module constants: a global is read faster than a class attribute on the hot path.
_STARTING: Final = ContainerState.STARTING
_BUSY: Final = ContainerState.BUSY
_STARTED, _START_FAILED, _EXITED = Fact.CONTAINER_STARTED, Fact.CONTAINER_START_FAILED, Fact.CONTAINER_EXITED
_FINISHED, _NODE_FAILED, _RUN_ON, _WITHDRAWN = Fact.CALL_FINISHED, Fact.NODE_FAILED, Fact.RUN_ON, Fact.START_WITHDRAWN


class Scheduler:
    """The sans-I/O scheduler. Every method takes ``now`` and returns actions.

    :param resources: the node bookkeeping.
    :param keep_alive: the policy for functions whose ``idle_timeout`` is None.
    :param queue_limit: how many requests may wait at once (None: no limit).
    :param pipeline_depth: how many calls a busy container may hold queued behind its
        running one at most (0: no pipelining); fewer when that many would be more than
        ``PIPELINE_QUEUED_WORK_S`` of work by the function's recent average. The shell must then tell which calls really
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
        self._functions: dict[str, FunctionState] = {}
        self._waiting_function: dict[str, str] = {}  # request id -> function name
        self._book = book = ContainerBook(resources, self._functions)
        self._move = book.move
        self._containers = book.live  # starting, idle, busy
        self._stopping = book.stopping
        self.usage = book.usage
        self._placement = Placement(resources, self._functions, book, self.keep_alive)
        self._capacity_queue = self._placement.queue  # starts waiting for room, one FIFO for all functions
        self._wakes = Wakes(self._containers)

    # -- registration and queries -----------------------------------------------------

    def add_function(self, profile: FunctionProfile) -> None:
        if profile.name in self._functions:
            raise ValueError(f"function {profile.name!r} is already registered")
        if not self.resources.fits_a_node(profile.memory_mb):
            raise ValueError(
                f"{profile.name}: memory_mb={profile.memory_mb} does not fit on a node of "
                f"{self.resources.node_memory_mb} MB; lower memory_mb or raise node_memory_mb"
            )
        self._functions[profile.name] = FunctionState(profile)
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
        self._wakes.cancel_timers(function)
        actions: list[Action] = [
            self._book.stop(rec, "retired", now) for rec in list(fn.containers.values()) if rec.state is ContainerState.IDLE
        ]
        if actions and self._capacity_queue:
            actions += self._placement.drain(now)
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
        elif self.pipeline_depth and not fn.waiting and (rec := fn.pipeline_to(self.pipeline_depth)) is not None:
            return [self._queue_on(rec, request_id, now)]
        else:
            if self.queue_limit is not None and len(self._waiting_function) >= self.queue_limit:
                return [FailRequest(request_id=request_id, reason="throttled")]
            fn.waiting.append(request_id)
            self._waiting_function[request_id] = function
            actions = self._placement.provision(fn, now)
            cold = True
        if not fn.available and fn.profile.idle_timeout is None:
            # The pool ran dry: the policy may want containers standing by for the calls that follow.
            spares = policy.spares(function, cold=cold, now=now)
            if spares > 0:
                actions += self._placement.start_spares(fn, spares, now)
        return actions

    def cancel(self, request_id: str, *, now: float) -> list[Action]:
        """The caller gave up on a request that may still be waiting (or was already answered)."""
        function = self._waiting_function.pop(request_id, None)
        if function is None:
            return []
        self._functions[function].waiting.remove(request_id)
        # A start queued for room may no longer be needed; drop it so it holds up no one.
        return self._placement.drain(now) if self._capacity_queue else []

    def container_started(self, container_id: str, *, now: float) -> list[Action]:
        """The container is ready.

        :raises CoreMisuse: it is not starting (a second report, or stopped meanwhile).
        """
        rec = self._containers.get(container_id)
        if rec is None or rec.awaiting_node:
            self._book.stale(container_id, rec, _STARTED, now)
            return []
        self._move(rec, _STARTED, now)
        fn = self._functions[rec.function]
        fn.starting_slots -= rec.concurrency
        fn.start_failures = 0
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
                actions += self._placement.drain(now)
        return actions

    def container_start_failed(self, container_id: str, *, now: float) -> list[Action]:
        """The container did not come up.

        :raises CoreMisuse: it was not starting (it was reported started, or it is gone).
        """
        rec = self._containers.get(container_id)
        if rec is None or rec.awaiting_node:
            self._book.stale(container_id, rec, _START_FAILED, now)
            return []
        self._book.forget(rec, _START_FAILED, now)
        return self._after_start_failed(rec, now) + self._placement.drain(now)

    def call_finished(self, container_id: str, *, now: float, duration_s: float | None = None) -> list[Action]:
        """A call in ``container_id`` finished (with a result or a handler error).

        :param duration_s: how long it ran, if known; it decides whether calls are pipelined.
        :raises CoreMisuse: no call runs in the container (it is starting or idle).
        """
        rec = self._containers.get(container_id)
        if rec is None or rec.busy == 0:
            if rec is not None and not rec.awaiting_node:
                next_state(container_id, rec.state, _FINISHED)  # raises: no call runs in it
            self._book.stale(container_id, rec, _FINISHED, now)
            return []
        fn = self._functions[rec.function]
        if duration_s is not None:
            fn.call_took(duration_s)
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
                    self._move(rec, _FINISHED, now)
                    self._went_idle(fn, rec, now)
                    if self._capacity_queue:
                        return self._placement.drain(now)
                return []
            actions.append(self._dispatch(fn, rec, self._pop_waiting(fn), cold=False, now=now))
        room = fn.pipeline_room(self.pipeline_depth) if fn.waiting else 0
        while fn.waiting and rec.queued < room and rec.busy == rec.concurrency:
            actions.append(self._queue_on(rec, self._pop_waiting(fn), now))
        # Fewer requests wait: a start queued for room may no longer be needed.
        if actions and self._capacity_queue:
            actions += self._placement.drain(now)
        return actions

    def container_exited(self, container_id: str, *, now: float) -> list[Action]:
        """The container's process is gone: stopped by us, crashed, or killed.

        :raises CoreMisuse: the core holds no process for it (gone already, or never started).
        """
        stopped = self._stopping.pop(container_id, None)
        if stopped is not None:
            self._move(stopped, _EXITED, now)
            return []
        rec = self._containers.get(container_id)
        if rec is None or rec.awaiting_node:
            self._book.stale(container_id, rec, _EXITED, now)
            return []
        was_starting = rec.state is _STARTING  # died before it was ready: a failed start
        self._book.forget(rec, _EXITED, now)
        after = self._after_start_failed if was_starting else self._after_exit
        return after(rec, now) + self._placement.drain(now)

    def node_acquired(self, node_id: str, *, now: float) -> list[Action]:
        """Node ``node_id`` came up (a node released or shut down meanwhile is ignored)."""
        if node_id not in self.resources.nodes:
            return []
        self.resources.node_acquired(node_id, now=now)
        actions: list[Action] = []
        for rec in self._containers.values():
            if rec.node_id == node_id and rec.awaiting_node:
                rec.awaiting_node = False
                actions.append(StartContainer(container_id=rec.id, function=rec.function, node_id=node_id, pinned=rec.pinned))
        return actions + self._placement.drain(now)

    def node_failed(self, node_id: str, *, now: float) -> list[Action]:
        """A node could not be acquired, or was lost with its containers (no exit will be reported for them)."""
        # Forget the node and all its containers before reacting to their loss, so
        # that no replacement (a pin, a start for a waiting request, a queued start)
        # is placed on the lost node and no eviction picks one of its containers.
        self.resources.node_lost(node_id, now=now)
        lost = [c for c in self._containers.values() if c.node_id == node_id]
        was_starting = {c.id for c in lost if c.state is _STARTING}
        for rec in lost:
            self._book.forget(rec, _NODE_FAILED, now)
        for rec in [c for c in self._stopping.values() if c.node_id == node_id]:
            del self._stopping[rec.id]
            self._move(rec, _NODE_FAILED, now)
        actions: list[Action] = []
        for rec in lost:
            actions += self._after_start_failed(rec, now) if rec.id in was_starting else self._after_exit(rec, now)
        return actions + self._placement.drain(now)

    def tick(self, *, now: float) -> list[Action]:
        """Time passed: stop expired idle containers, retry pins, pre-warm, release empty nodes."""
        actions: list[Action] = []
        wakes = self._wakes
        while (due := wakes.pop_expired(now)) is not None:
            actions.append(self._book.stop(due, "idle", now))
        while (timer := wakes.pop_timer(now)) is not None:
            kind, name = timer
            fn = self._functions[name]
            if kind == PIN:
                actions += self._replenish_pinned(fn, now)
            elif not fn.containers and fn.deficit() <= 0:  # a pre-warm, unless a container is up or coming
                actions += self._placement.start(fn, pinned=False, now=now) or []
        if actions:
            actions += self._placement.drain(now)
        actions += self.resources.expire(now=now)
        return actions

    @property
    def wake_epoch(self) -> int:
        """Changes whenever ``next_wake`` may have come earlier (a keep-alive, pre-warm or retry
        was set, a node was acquired or emptied). A shell may ask ``next_wake`` only then:
        otherwise the wake it holds is at worst early, and ``tick`` finds nothing to do."""
        return self._wakes.epoch + self.resources.wake_epoch

    def next_wake(self) -> float | None:
        """When ``tick`` next has something to do (None: only new facts matter)."""
        wake = self._wakes.next_wake()
        node_wake = self.resources.next_wake()
        if node_wake is not None and (wake is None or node_wake < wake):
            return node_wake
        return wake

    def shutdown(self, *, now: float) -> list[Action]:
        """The platform stops: fail waiting requests, stop every container, release nodes."""
        self.closed = True
        actions: list[Action] = []
        for request_id in list(self._waiting_function):
            actions.append(FailRequest(request_id=request_id, reason="closed"))
        self._waiting_function.clear()
        self._capacity_queue.clear()
        self._wakes.clear_timers()
        for fn in self._functions.values():
            fn.waiting.clear()
            fn.queued_starts = 0
        for rec in list(self._containers.values()):
            if rec.awaiting_node:
                self._book.forget(rec, _WITHDRAWN, now)  # no process to stop, no exit will be reported
            else:
                actions.append(self._book.stop(rec, "shutdown", now))
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
            backoff = min(PINNED_RETRY_MAX, PINNED_RETRY_INITIAL * 2 ** (fn.start_failures - 1))
            self._wakes.retry_pinned(rec.function, now + backoff)
        actions += self._placement.provision(fn, now)
        return actions

    def _after_exit(self, rec: ContainerRecord, now: float) -> list[Action]:
        """A forgotten container died after starting: replace a pin, cover waiting requests."""
        fn = self._functions[rec.function]
        actions = self._replenish_pinned(fn, now) if rec.pinned else []
        actions += self._placement.provision(fn, now)
        return actions

    def _dispatch(self, fn: FunctionState, rec: ContainerRecord, request_id: str, *, cold: bool, now: float) -> RunOn:
        rec.busy += 1
        rec.calls += 1
        rec.last_used = now
        if rec.state is not _BUSY:  # BUSY --run_on--> BUSY changes nothing
            self._move(rec, _RUN_ON, now)
        if rec.busy >= rec.concurrency:
            fn.available.pop(rec.id, None)
        return RunOn(request_id=request_id, container_id=rec.id, cold_start=cold)

    def _queue_on(self, rec: ContainerRecord, request_id: str, now: float) -> RunOn:
        """Pipeline ``request_id`` behind the running call of ``rec`` (its state stays BUSY)."""
        rec.queued += 1
        rec.calls += 1
        rec.last_used = now
        return RunOn(request_id=request_id, container_id=rec.id, cold_start=False, queued=True)

    def _pop_waiting(self, fn: FunctionState) -> str:
        request_id = fn.waiting.popleft()
        del self._waiting_function[request_id]
        return request_id

    def _went_idle(self, fn: FunctionState, rec: ContainerRecord, now: float) -> None:
        """``rec`` is IDLE: set its expiry from the keep-alive, and a pre-warm if the policy asks."""
        if rec.pinned:
            return
        if fn.profile.idle_timeout is not None:
            ttl = fn.profile.idle_timeout
        elif rec.spare and rec.calls == 0:
            ttl = self.keep_alive.spare_ttl(rec.function, now=now)  # a spare came up: no call ended
        else:
            decision = self.keep_alive.went_idle(rec.function, now=now)
            ttl = decision.ttl
            if decision.prewarm is not None:
                self._wakes.prewarm(rec.function, now + decision.prewarm)
        self._wakes.expire(rec, now + ttl)

    def _replenish_pinned(self, fn: FunctionState, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._wakes.pinned_retry_pending(fn.profile.name):
            return actions
        for _ in range(fn.profile.min_containers - fn.pinned_live()):
            started = self._placement.start(fn, pinned=True, now=now)
            if started is None:
                # No room now; look again after a short wait.
                self._wakes.retry_pinned(fn.profile.name, now + PINNED_RETRY_INITIAL)
                break
            actions += started
        return actions
