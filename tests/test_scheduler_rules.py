"""A hypothesis state machine over the scheduler core.

The machine plays the shell: it feeds the ``Scheduler`` random facts (requests,
container starts and start failures, crashes, finished calls, nodes coming up or
failing, cancels, time passing) and carries out every action it gets back the way
``platform.py`` would. ``StartContainer`` becomes a pending start that may later be
reported started or failed, ``RunOn`` a running call that may later finish,
``AcquireNode`` a pending node, ``StopContainer`` a process that will exit.

After every step the invariants from scheduler.py's header are checked against both
the core's own records and the model's view of what the shell has been told.
"""

from __future__ import annotations

import collections
import math

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from microfaas.keepalive import FixedKeepAlive, NeverUnload
from microfaas.resources import AcquireNode, NodeState, ReleaseNode, ResourceManager
from microfaas.scheduler import ContainerState, FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer

NODE_MB = 1000

PROFILES = {
    p.name: p
    for p in (
        FunctionProfile(name="a", memory_mb=300),
        FunctionProfile(name="b", memory_mb=200, concurrency=3, min_containers=1, max_containers=3, idle_timeout=5.0),
        FunctionProfile(name="c", memory_mb=500, max_containers=2),
        FunctionProfile(name="d", memory_mb=100, concurrency=2, min_containers=2, idle_timeout=0.0),
        # Pins take at most 400 MB, so "e" always fits on a node once the rest is evicted.
        FunctionProfile(name="e", memory_mb=600, idle_timeout=30.0),
        # One container: its short calls are pipelined when the scheduler may.
        FunctionProfile(name="p", memory_mb=100, max_containers=1),
    )
}
FUNCS = sorted(PROFILES)

pick = st.integers(min_value=0, max_value=10_000)


def _nth(items, i: int):
    items = sorted(items)
    return items[i % len(items)]


class SchedulerRules(RuleBasedStateMachine):
    # -- setup ---------------------------------------------------------------------------

    @initialize(
        max_nodes=st.integers(1, 3),
        want_min_nodes=st.integers(0, 1),
        release_after=st.sampled_from([0.0, 5.0, 10.0]),
        queue_limit=st.sampled_from([None, None, 0, 3]),
        keep_alive=st.sampled_from([FixedKeepAlive(0), FixedKeepAlive(5), FixedKeepAlive(20), NeverUnload()]),
        pipeline_depth=st.sampled_from([0, 1, 3]),
    )
    def setup(self, max_nodes, want_min_nodes, release_after, queue_limit, keep_alive, pipeline_depth) -> None:
        self.resources = ResourceManager(
            node_memory_mb=NODE_MB, max_nodes=max_nodes, min_nodes=min(want_min_nodes, max_nodes), release_after=release_after
        )
        self.sched = Scheduler(self.resources, keep_alive=keep_alive, queue_limit=queue_limit, pipeline_depth=pipeline_depth)
        for profile in PROFILES.values():
            self.sched.add_function(profile)
        self.now = 0.0
        self.closed = False
        self.next_request = 1
        # What the shell knows.
        self.requests: dict[str, str] = {}  # request id -> function
        self.answers: collections.Counter[str] = collections.Counter()
        self.cancelled: set[str] = set()
        self.pending_starts: set[str] = set()  # StartContainer carried out, not yet reported
        self.started: set[str] = set()  # reported started, not exited or stopped
        self.stopping: set[str] = set()  # StopContainer carried out, exit not yet reported
        self.running: dict[str, str] = {}  # request id -> container id, in the order sent
        self.last_run: dict[str, int] = {}  # function -> number of its last request that got a container
        self.pending_nodes: set[str] = set()
        self.ready_nodes: set[str] = set()
        self.node_of: dict[str, str] = {}  # container id -> node id, from StartContainer
        self.pinned: dict[str, bool] = {}
        self.seen_containers: set[str] = set()
        # Starts queued for room after the last call into the core (white-box): a call may drop
        # one it no longer needs after it has pipelined a request instead.
        self.queued_for_room: collections.Counter[str] = collections.Counter()
        self.apply(self.sched.start(now=self.now))

    # -- the shell -------------------------------------------------------------------------

    def apply(self, actions) -> None:
        self._apply(actions)
        self.queued_for_room = collections.Counter(self.sched._capacity_queue)

    def _apply(self, actions) -> None:
        for action in actions:
            match action:
                case StartContainer(container_id=cid, node_id=node_id, pinned=pinned):
                    assert cid not in self.seen_containers, f"{cid} started twice"
                    self.seen_containers.add(cid)
                    # A container is started only on a node that is up and still held.
                    assert node_id in self.ready_nodes, f"{cid} started on {node_id}, which is not ready"
                    assert self.resources.nodes[node_id].state is NodeState.READY
                    self.pending_starts.add(cid)
                    self.node_of[cid] = node_id
                    self.pinned[cid] = pinned
                case RunOn(request_id=rid, container_id=cid, queued=queued):
                    self._answer(rid)
                    self._check_first_come_first_served(rid)
                    assert cid in self.started, f"{rid} sent to {cid}, which is not up"
                    self.running[rid] = cid
                    rec = self.sched.container(cid)
                    assert rec is not None and rec.function == self.requests[rid]
                    if queued:
                        # Pipelined only onto a full container of a concurrency-1 function that cannot grow.
                        profile = PROFILES[rec.function]
                        assert self.sched.pipeline_depth > 0 and profile.concurrency == 1
                        assert rec.busy == rec.concurrency
                        # It cannot grow: its containers and its starts queued for room (white-box) are at its
                        # maximum. The starts are counted as the decision found them: the same call may drop
                        # a start queued for room once no request waits for it any more.
                        queued = max(list(self.sched._capacity_queue).count(rec.function), self.queued_for_room[rec.function])
                        grown = len(self.sched.containers(rec.function)) + queued
                        assert profile.max_containers is not None and grown >= profile.max_containers
                case FailRequest(request_id=rid, reason=reason):
                    self._answer(rid)
                    if reason == "closed":
                        assert self.closed
                    elif reason == "throttled":
                        assert self.sched.queue_limit is not None
                    else:
                        assert reason == "start_failed"
                case StopContainer(container_id=cid, reason=reason):
                    assert reason in ("idle", "evicted", "shutdown")
                    if reason != "shutdown":
                        # Only an idle container is stopped for idleness or evicted.
                        assert cid in self.started
                        assert cid not in self.running.values(), f"{cid} stopped ({reason}) with calls running"
                        assert not self.pinned[cid], f"pinned container {cid} stopped ({reason})"
                    self.pending_starts.discard(cid)
                    self.started.discard(cid)
                    for rid in [r for r, c in self.running.items() if c == cid]:
                        del self.running[rid]  # the shell fails these calls
                    if cid in self.seen_containers:
                        self.stopping.add(cid)
                case AcquireNode(node_id=node_id):
                    assert node_id not in self.pending_nodes and node_id not in self.ready_nodes
                    self.pending_nodes.add(node_id)
                case ReleaseNode(node_id=node_id):
                    assert node_id in self.pending_nodes or node_id in self.ready_nodes
                    live_on = [c for c in self.sched.containers() if c.node_id == node_id and c.state is not ContainerState.STOPPING]
                    assert not live_on, f"{node_id} released with {live_on}"
                    self.pending_nodes.discard(node_id)
                    self.ready_nodes.discard(node_id)
                case _:
                    raise AssertionError(f"unknown action {action!r}")

    def _answer(self, rid: str) -> None:
        assert rid in self.requests
        assert rid not in self.cancelled, f"{rid} answered after it was cancelled"
        self.answers[rid] += 1
        assert self.answers[rid] == 1, f"{rid} answered twice"

    def _check_first_come_first_served(self, rid: str) -> None:
        """A function's requests get their containers in the order they arrived."""
        fn, number = self.requests[rid], int(rid[1:])
        assert number > self.last_run.get(fn, 0), f"{rid} got a container after a later request of {fn}"
        self.last_run[fn] = number

    def _lose_container(self, cid: str) -> None:
        self.pending_starts.discard(cid)
        self.started.discard(cid)
        self.stopping.discard(cid)
        for rid in [r for r, c in self.running.items() if c == cid]:
            del self.running[rid]

    def _check_after_tick(self) -> None:
        for rec in self.sched.containers():
            if rec.state is ContainerState.IDLE and not rec.pinned:
                assert rec.expires_at > self.now, f"{rec.id} idle past expires_at={rec.expires_at} at now={self.now}"
        if len(self.resources.nodes) > self.resources.min_nodes:
            for node in self.resources.nodes.values():
                if node.state is NodeState.READY and node.containers == 0:
                    assert node.empty_since + self.resources.release_after > self.now, f"{node.id} kept empty past release_after"

    # -- rules -----------------------------------------------------------------------------

    @rule(fn=st.sampled_from(FUNCS), count=st.integers(1, 4))
    def request(self, fn: str, count: int) -> None:
        for _ in range(count):
            rid = f"r{self.next_request}"
            self.next_request += 1
            self.requests[rid] = fn
            self.apply(self.sched.request(rid, fn, now=self.now))

    @precondition(lambda self: self.pending_starts)
    @rule(i=pick)
    def container_started(self, i: int) -> None:
        cid = _nth(self.pending_starts, i)
        self.pending_starts.discard(cid)
        self.started.add(cid)
        self.apply(self.sched.container_started(cid, now=self.now))

    @precondition(lambda self: self.pending_starts)
    @rule(i=pick, as_exit=st.booleans())
    def container_start_failed(self, i: int, as_exit: bool) -> None:
        cid = _nth(self.pending_starts, i)
        self._lose_container(cid)
        report = self.sched.container_exited if as_exit else self.sched.container_start_failed
        self.apply(report(cid, now=self.now))

    @precondition(lambda self: self.started)
    @rule(i=pick)
    def container_crashed(self, i: int) -> None:
        cid = _nth(self.started, i)
        self._lose_container(cid)
        self.apply(self.sched.container_exited(cid, now=self.now))

    @precondition(lambda self: self.stopping)
    @rule(i=pick)
    def stopped_container_exited(self, i: int) -> None:
        cid = _nth(self.stopping, i)
        self._lose_container(cid)
        self.apply(self.sched.container_exited(cid, now=self.now))

    @precondition(lambda self: self.running)
    @rule(i=pick, duration_s=st.sampled_from([None, 0.0002, 0.01]))
    def call_finished(self, i: int, duration_s: float | None) -> None:
        rid = _nth(self.running, i)
        cid = self.running[rid]
        rec = self.sched.container(cid)
        if rec is not None and rec.queued:
            # Calls queued in a container start in the order they were sent: the oldest finishes.
            rid = next(r for r, c in self.running.items() if c == cid)
        del self.running[rid]
        self.apply(self.sched.call_finished(cid, now=self.now, duration_s=duration_s))

    @precondition(lambda self: self.pending_nodes)
    @rule(i=pick)
    def node_acquired(self, i: int) -> None:
        node_id = _nth(self.pending_nodes, i)
        self.pending_nodes.discard(node_id)
        self.ready_nodes.add(node_id)
        self.apply(self.sched.node_acquired(node_id, now=self.now))

    @precondition(lambda self: self.pending_nodes or self.ready_nodes)
    @rule(i=pick)
    def node_failed(self, i: int) -> None:
        node_id = _nth(self.pending_nodes | self.ready_nodes, i)
        self.pending_nodes.discard(node_id)
        self.ready_nodes.discard(node_id)
        for cid in [c for c, n in self.node_of.items() if n == node_id]:
            self._lose_container(cid)
        self.apply(self.sched.node_failed(node_id, now=self.now))
        assert node_id not in self.resources.nodes
        assert all(c.node_id != node_id for c in self.sched.containers())

    @precondition(lambda self: self.requests)
    @rule(i=pick)
    def cancel(self, i: int) -> None:
        rid = _nth(self.requests, i)
        waiting_before = self.sched.waiting()
        self.apply(self.sched.cancel(rid, now=self.now))
        if self.answers[rid] == 0 and rid not in self.cancelled:
            self.cancelled.add(rid)
            assert self.sched.waiting() == waiting_before - 1
        else:
            assert self.sched.waiting() == waiting_before

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.apply(self.sched.tick(now=self.now))
        self._check_after_tick()

    @precondition(lambda self: self.sched.next_wake() is not None)
    @rule()
    def wake_up(self) -> None:
        wake = self.sched.next_wake()
        assert wake is not None
        self.now = max(self.now, wake)
        self.apply(self.sched.tick(now=self.now))
        self._check_after_tick()

    @precondition(lambda self: not self.closed)
    @rule(data=st.data())
    def shutdown(self, data) -> None:
        # Rare: most runs should explore the open platform.
        if data.draw(st.integers(0, 9), label="roll") != 0:
            return
        self.closed = True
        self.apply(self.sched.shutdown(now=self.now))
        assert self.sched.waiting() == 0
        assert not self.resources.nodes
        assert all(c.state is ContainerState.STOPPING for c in self.sched.containers())

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def no_node_over_capacity(self) -> None:
        live = [c for c in self.sched.containers() if c.state is not ContainerState.STOPPING]
        for node in self.resources.nodes.values():
            on_node = [c for c in live if c.node_id == node.id]
            assert 0 <= node.used_mb <= node.capacity_mb
            assert node.used_mb == sum(c.memory_mb for c in on_node)
            assert node.containers == len(on_node)
        assert all(c.node_id in self.resources.nodes for c in live)

    @invariant()
    def the_wake_comes_earlier_only_with_a_new_wake_epoch(self) -> None:
        # The shell skips next_wake() while wake_epoch stands still; that is safe only if
        # the wake can then only move later (a tick that finds nothing) or stay.
        epoch, wake = self.sched.wake_epoch, self.sched.next_wake()
        wake = math.inf if wake is None else wake
        seen = getattr(self, "_seen_wake", None)
        if seen is not None and seen[0] == epoch:
            assert wake >= seen[1], f"next_wake moved from {seen[1]} to {wake} with wake_epoch unchanged ({epoch})"
        self._seen_wake = (epoch, wake)

    @invariant()
    def node_count_within_max_nodes(self) -> None:
        assert len(self.resources.nodes) <= self.resources.max_nodes
        assert set(self.resources.nodes) == self.pending_nodes | self.ready_nodes

    @invariant()
    def busy_slots_within_concurrency(self) -> None:
        running_on = collections.Counter(self.running.values())
        for rec in self.sched.containers():
            assert 0 <= rec.busy <= rec.concurrency
            assert 0 <= rec.queued <= self.sched.pipeline_depth
            assert rec.queued == 0 or rec.busy == rec.concurrency == 1, f"{rec.id}: {rec.queued} queued, busy={rec.busy}"
            if rec.state is not ContainerState.STOPPING:
                on = running_on[rec.id]
                assert rec.busy + rec.queued == on, f"{rec.id}: busy={rec.busy} queued={rec.queued}, running={on}"
                assert (rec.state is ContainerState.BUSY) == (rec.busy > 0)

    @invariant()
    def core_agrees_with_the_shell(self) -> None:
        starting = {c.id for c in self.sched.containers() if c.state is ContainerState.STARTING and not c.awaiting_node}
        up = {c.id for c in self.sched.containers() if c.state in (ContainerState.IDLE, ContainerState.BUSY)}
        assert starting == self.pending_starts
        assert up == self.started
        for c in self.sched.containers():
            if c.awaiting_node:
                assert c.node_id in self.pending_nodes

    @invariant()
    def every_request_answered_once_unless_waiting_or_cancelled(self) -> None:
        unanswered = [r for r in self.requests if self.answers[r] == 0 and r not in self.cancelled]
        assert self.sched.waiting() == len(unanswered)
        for fn in FUNCS:
            assert self.sched.waiting(fn) == sum(1 for r in unanswered if self.requests[r] == fn)

    @invariant()
    def no_request_waits_while_a_warm_slot_is_free(self) -> None:
        for fn in FUNCS:
            if self.sched.waiting(fn):
                for rec in self.sched.containers(fn):
                    if rec.state in (ContainerState.IDLE, ContainerState.BUSY):
                        assert rec.busy == rec.concurrency, f"{fn}: a request waits while {rec.id} has a free slot"

    @invariant()
    def queued_starts_wait_only_for_room(self) -> None:
        # White-box: the shared capacity queue is FIFO, so its head blocks everything
        # behind it. The head must still be needed and must really not fit (no room,
        # no node to acquire, not enough idle unpinned containers to evict on any node).
        queue = self.sched._capacity_queue
        if not queue:
            return
        head = queue[0]
        waiting = self.sched.waiting(head)
        covered = sum(c.concurrency for c in self.sched.containers(head) if c.state is ContainerState.STARTING)
        assert waiting > covered, f"stale head {head!r} in the capacity queue: {waiting} waiting, {covered} slots starting"
        memory_mb = PROFILES[head].memory_mb
        assert self.resources.place(memory_mb) is None, f"{head!r} queued though a node has room"
        assert not self.resources.can_acquire(), f"{head!r} queued though a node can be acquired"
        for node in self.resources.nodes.values():
            evictable = sum(
                c.memory_mb for c in self.sched.containers() if c.node_id == node.id and c.state is ContainerState.IDLE and not c.pinned
            )
            assert node.free_mb + evictable < memory_mb, f"{head!r} queued though evicting idle containers on {node.id} makes room"

    @invariant()
    def pinned_containers_stay_pinned(self) -> None:
        if self.closed:
            return
        for rec in self.sched.containers():
            if rec.pinned:
                assert rec.expires_at == float("inf")
        for fn in FUNCS:
            pinned = [c for c in self.sched.containers(fn) if c.pinned and c.state is not ContainerState.STOPPING]
            assert len(pinned) <= PROFILES[fn].min_containers

    def teardown(self) -> None:
        """Liveness: carry out everything and let time pass; no request may wait forever."""
        if not hasattr(self, "sched"):
            return
        for _ in range(500):
            if self.pending_nodes:
                self.node_acquired(0)
            elif self.pending_starts:
                self.container_started(0)
            elif self.running:
                self.call_finished(0, None)
            elif self.stopping:
                self.stopped_container_exited(0)
            elif (self.sched.waiting() or self._pins_missing()) and self.sched.next_wake() is not None:
                self.wake_up()
            else:
                break
            self.check_all()
        assert self.sched.waiting() == 0, f"requests stuck: {self.sched.waiting()} still waiting"
        assert not self._pins_missing(), "pinned containers were not replaced"

    def _pins_missing(self) -> bool:
        if self.closed:
            return False
        for fn in FUNCS:
            pinned = [c for c in self.sched.containers(fn) if c.pinned and c.state is not ContainerState.STOPPING]
            if len(pinned) < PROFILES[fn].min_containers:
                return True
        return False

    def check_all(self) -> None:
        self.no_node_over_capacity()
        self.node_count_within_max_nodes()
        self.busy_slots_within_concurrency()
        self.core_agrees_with_the_shell()
        self.every_request_answered_once_unless_waiting_or_cancelled()
        self.no_request_waits_while_a_warm_slot_is_free()


SchedulerRules.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestSchedulerRules = SchedulerRules.TestCase
