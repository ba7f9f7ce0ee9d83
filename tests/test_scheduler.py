"""The sans-I/O scheduler core, one fact at a time.

No event loop and no clock: every test builds a ``Scheduler`` over a
``ResourceManager``, feeds it facts with an explicit ``now`` and asserts the exact
actions it hands back, the way h11's ``test_state.py`` narrates its state machine.
Container ids are ``c-1, c-2, ...`` and node ids ``n-1, n-2, ...`` in the order the
core creates them.
"""

from __future__ import annotations

import math

import pytest

from microfaas.keepalive import FixedKeepAlive, KeepAlivePolicy, NeverUnload
from microfaas.resources import AcquireNode, ReleaseNode, ResourceManager
from microfaas.scheduler import (
    PINNED_RETRY_INITIAL,
    ContainerState,
    FailRequest,
    FunctionProfile,
    RunOn,
    Scheduler,
    StartContainer,
    StopContainer,
)

# -- helpers ------------------------------------------------------------------------------


def make(
    *profiles: FunctionProfile,
    node_memory_mb: int = 1024,
    max_nodes: int = 1,
    min_nodes: int = 0,
    release_after: float = 30.0,
    keep_alive=None,
    queue_limit: int | None = None,
) -> Scheduler:
    resources = ResourceManager(node_memory_mb=node_memory_mb, max_nodes=max_nodes, min_nodes=min_nodes, release_after=release_after)
    sched = Scheduler(resources, keep_alive=keep_alive, queue_limit=queue_limit)
    for profile in profiles:
        sched.add_function(profile)
    return sched


def booted(*profiles: FunctionProfile, **kwargs) -> Scheduler:
    """A scheduler whose ``min_nodes`` (default 1) nodes are already up, at t=0."""
    kwargs.setdefault("min_nodes", 1)
    sched = make(*profiles, **kwargs)
    actions = sched.start(now=0.0)
    nodes = [a.node_id for a in actions if isinstance(a, AcquireNode)]
    assert nodes == [f"n-{i}" for i in range(1, kwargs["min_nodes"] + 1)]
    for node_id in nodes:
        sched.node_acquired(node_id, now=0.0)
    return sched


def start(container_id: str, function: str, node_id: str = "n-1", *, pinned: bool = False) -> StartContainer:
    return StartContainer(container_id=container_id, function=function, node_id=node_id, pinned=pinned)


def run(request_id: str, container_id: str, *, cold: bool) -> RunOn:
    return RunOn(request_id=request_id, container_id=container_id, cold_start=cold)


def state(sched: Scheduler, container_id: str) -> ContainerState | None:
    rec = sched.container(container_id)
    return None if rec is None else rec.state


def used_mb(sched: Scheduler, node_id: str) -> int:
    return sched.resources.nodes[node_id].used_mb


F = FunctionProfile(name="f", memory_mb=256)


# -- cold and warm starts ---------------------------------------------------------------------


def test_first_request_acquires_a_node_then_starts_the_container_on_it() -> None:
    sched = make(F)
    assert sched.start(now=0.0) == []

    # No node yet: the container is reserved on a node that is being acquired.
    assert sched.request("r1", "f", now=1.0) == [AcquireNode(node_id="n-1")]
    assert state(sched, "c-1") is ContainerState.STARTING
    assert used_mb(sched, "n-1") == 256

    # The node comes up: now the container can be started on it.
    assert sched.node_acquired("n-1", now=2.0) == [start("c-1", "f")]
    assert sched.container_started("c-1", now=3.0) == [run("r1", "c-1", cold=True)]
    assert state(sched, "c-1") is ContainerState.BUSY


def test_cold_start_then_warm_reuse() -> None:
    sched = booted(F)
    assert sched.request("r1", "f", now=1.0) == [start("c-1", "f")]
    assert sched.waiting("f") == 1
    assert sched.container_started("c-1", now=2.0) == [run("r1", "c-1", cold=True)]
    assert sched.waiting("f") == 0

    assert sched.call_finished("c-1", now=3.0) == []
    assert state(sched, "c-1") is ContainerState.IDLE

    # The idle container is reused: no start, not a cold start.
    assert sched.request("r2", "f", now=4.0) == [run("r2", "c-1", cold=False)]
    assert sched.container("c-1").calls == 2
    assert sched.live("f") == 1


def test_warm_pick_is_the_most_recently_used_idle_container() -> None:
    sched = booted(F)
    sched.request("r1", "f", now=0.0)
    sched.request("r2", "f", now=0.0)
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.container_started("c-2", now=1.0) == [run("r2", "c-2", cold=True)]

    # c-2 finishes first, c-1 last: c-1 is the most recently used.
    sched.call_finished("c-2", now=2.0)
    sched.call_finished("c-1", now=3.0)
    assert sched.request("r3", "f", now=4.0) == [run("r3", "c-1", cold=False)]
    assert sched.request("r4", "f", now=4.0) == [run("r4", "c-2", cold=False)]

    # Now c-2 finishes last, so it is picked first.
    sched.call_finished("c-1", now=5.0)
    sched.call_finished("c-2", now=6.0)
    assert sched.request("r5", "f", now=7.0) == [run("r5", "c-2", cold=False)]


def test_a_container_with_free_slots_takes_more_requests() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=256, concurrency=2))
    sched.request("r1", "f", now=0.0)
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.request("r2", "f", now=2.0) == [run("r2", "c-1", cold=False)]
    # Both slots taken: the third request needs a new container.
    assert sched.request("r3", "f", now=2.0) == [start("c-2", "f")]
    assert sched.container("c-1").busy == 2


def test_a_burst_starts_only_as_many_containers_as_slots_needed() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, concurrency=3))
    actions = {f"r{i}": sched.request(f"r{i}", "f", now=0.0) for i in range(1, 8)}
    # Seven requests, three slots per container: three containers, started by r1, r4, r7.
    assert actions == {
        "r1": [start("c-1", "f")],
        "r2": [],
        "r3": [],
        "r4": [start("c-2", "f")],
        "r5": [],
        "r6": [],
        "r7": [start("c-3", "f")],
    }
    assert sched.waiting("f") == 7
    # The first container up takes the three oldest requests, in order.
    assert sched.container_started("c-2", now=1.0) == [run(r, "c-2", cold=True) for r in ("r1", "r2", "r3")]
    assert sched.container_started("c-1", now=1.0) == [run(r, "c-1", cold=True) for r in ("r4", "r5", "r6")]
    assert sched.container_started("c-3", now=1.0) == [run("r7", "c-3", cold=True)]
    # c-3 has two free slots left: the next requests are warm.
    assert sched.request("r8", "f", now=2.0) == [run("r8", "c-3", cold=False)]


def test_a_waiting_call_takes_a_container_freed_before_its_own_cold_start() -> None:
    sched = booted(F)
    sched.request("r1", "f", now=0.0)
    sched.container_started("c-1", now=1.0)

    # r2 arrives while c-1 is busy: a second container is started for it.
    assert sched.request("r2", "f", now=2.0) == [start("c-2", "f")]
    # c-1 frees first, and r2 takes it without waiting for c-2.
    assert sched.call_finished("c-1", now=3.0) == [run("r2", "c-1", cold=False)]
    assert sched.waiting() == 0

    # c-2 comes up with nothing to do: it goes idle and its keep-alive clock starts.
    assert sched.container_started("c-2", now=4.0) == []
    assert state(sched, "c-2") is ContainerState.IDLE
    assert sched.container("c-2").expires_at == 4.0 + 600.0
    assert sched.request("r3", "f", now=5.0) == [run("r3", "c-2", cold=False)]


def test_max_containers_makes_calls_wait_and_serves_them_fifo() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, max_containers=2))
    assert sched.request("r1", "f", now=0.0) == [start("c-1", "f")]
    assert sched.request("r2", "f", now=0.0) == [start("c-2", "f")]
    # At the cap: the rest wait, no more starts.
    assert sched.request("r3", "f", now=0.0) == []
    assert sched.request("r4", "f", now=0.0) == []
    assert sched.live("f") == 2

    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.container_started("c-2", now=1.0) == [run("r2", "c-2", cold=True)]
    assert sched.call_finished("c-2", now=2.0) == [run("r3", "c-2", cold=False)]
    assert sched.call_finished("c-1", now=3.0) == [run("r4", "c-1", cold=False)]
    assert sched.call_finished("c-1", now=4.0) == []
    assert sched.waiting() == 0


# -- keep-alive ------------------------------------------------------------------------------


def _one_idle_container(sched: Scheduler, *, now: float) -> None:
    sched.request("r1", "f", now=now)
    sched.container_started("c-1", now=now)
    assert sched.call_finished("c-1", now=now) == []


def test_idle_container_stops_after_the_function_idle_timeout() -> None:
    # The function's idle_timeout wins over the policy's ttl.
    sched = booted(FunctionProfile(name="f", memory_mb=256, idle_timeout=10.0), keep_alive=FixedKeepAlive(600))
    _one_idle_container(sched, now=5.0)
    assert sched.next_wake() == 15.0
    assert sched.tick(now=14.9) == []
    assert sched.tick(now=15.0) == [StopContainer(container_id="c-1", reason="idle")]
    assert state(sched, "c-1") is ContainerState.STOPPING
    assert used_mb(sched, "n-1") == 0
    assert sched.container_exited("c-1", now=15.5) == []
    assert sched.container("c-1") is None
    # min_nodes=1 keeps the empty node: nothing left to wake for.
    assert sched.next_wake() is None


def test_idle_timeout_none_uses_the_policy_ttl() -> None:
    sched = booted(F, keep_alive=FixedKeepAlive(60))
    _one_idle_container(sched, now=5.0)
    assert sched.next_wake() == 65.0
    assert sched.tick(now=64.0) == []
    assert sched.tick(now=65.0) == [StopContainer(container_id="c-1", reason="idle")]


def test_default_policy_keeps_idle_containers_ten_minutes() -> None:
    sched = booted(F)
    _one_idle_container(sched, now=0.0)
    assert sched.next_wake() == 600.0


def test_reuse_restarts_the_keep_alive_clock() -> None:
    sched = booted(F, keep_alive=FixedKeepAlive(10))
    _one_idle_container(sched, now=0.0)  # expires at 10
    assert sched.request("r2", "f", now=8.0) == [run("r2", "c-1", cold=False)]
    assert sched.next_wake() is None  # busy containers do not expire
    sched.call_finished("c-1", now=9.0)  # expires at 19
    assert sched.next_wake() == 19.0
    assert sched.tick(now=10.0) == []
    assert sched.tick(now=19.0) == [StopContainer(container_id="c-1", reason="idle")]


def test_never_unload_keeps_idle_containers_forever() -> None:
    sched = booted(F, keep_alive=NeverUnload())
    _one_idle_container(sched, now=0.0)
    assert sched.container("c-1").expires_at == math.inf
    assert sched.next_wake() is None
    assert sched.tick(now=1e9) == []
    assert state(sched, "c-1") is ContainerState.IDLE


# -- pinned containers ------------------------------------------------------------------------

PINNED = FunctionProfile(name="p", memory_mb=128, min_containers=2)


def test_pinned_containers_start_with_the_platform() -> None:
    sched = make(PINNED, min_nodes=1)
    # The node is still being acquired: the pins wait for it.
    assert sched.start(now=0.0) == [AcquireNode(node_id="n-1")]
    assert sched.node_acquired("n-1", now=1.0) == [start("c-1", "p", pinned=True), start("c-2", "p", pinned=True)]
    assert sched.container_started("c-1", now=2.0) == []
    assert sched.container_started("c-2", now=2.0) == []
    assert sched.live("p") == 2
    assert sched.request("r1", "p", now=3.0) == [run("r1", "c-2", cold=False)]


def test_pinned_containers_are_never_stopped_for_idleness() -> None:
    sched = booted(PINNED, keep_alive=FixedKeepAlive(0))
    sched.start(now=0.0)
    assert sched.live("p") == 2
    sched.container_started("c-1", now=0.0)
    sched.container_started("c-2", now=0.0)
    sched.request("r1", "p", now=1.0)
    sched.call_finished("c-2", now=2.0)
    assert sched.next_wake() is None
    assert sched.tick(now=1e9) == []
    assert {state(sched, c) for c in ("c-1", "c-2")} == {ContainerState.IDLE}


def test_a_pinned_container_that_exits_is_replaced() -> None:
    sched = booted(PINNED)
    sched.container_started("c-1", now=0.0)
    sched.container_started("c-2", now=0.0)
    assert sched.container_exited("c-1", now=5.0) == [start("c-3", "p", pinned=True)]
    assert sched.live("p") == 2


def test_a_pinned_start_failure_is_retried_with_backoff() -> None:
    sched = booted(FunctionProfile(name="p", memory_mb=128, min_containers=1))
    assert state(sched, "c-1") is ContainerState.STARTING

    assert sched.container_start_failed("c-1", now=1.0) == []
    assert sched.next_wake() == 1.0 + PINNED_RETRY_INITIAL
    assert sched.tick(now=1.4) == []
    assert sched.tick(now=1.5) == [start("c-2", "p", pinned=True)]

    # The second failure in a row waits twice as long, the third four times.
    assert sched.container_start_failed("c-2", now=2.0) == []
    assert sched.next_wake() == 3.0
    assert sched.tick(now=3.0) == [start("c-3", "p", pinned=True)]
    assert sched.container_start_failed("c-3", now=3.0) == []
    assert sched.next_wake() == 5.0
    assert sched.tick(now=5.0) == [start("c-4", "p", pinned=True)]

    # A success resets the backoff.
    assert sched.container_started("c-4", now=6.0) == []
    assert sched.container_exited("c-4", now=7.0) == [start("c-5", "p", pinned=True)]
    assert sched.container_start_failed("c-5", now=8.0) == []
    assert sched.next_wake() == 8.0 + PINNED_RETRY_INITIAL


# -- failures, limits, cancels, shutdown --------------------------------------------------------


def test_a_start_failure_fails_exactly_one_waiting_request() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, concurrency=2))
    assert sched.request("r1", "f", now=0.0) == [start("c-1", "f")]
    assert sched.request("r2", "f", now=0.0) == []
    # The oldest waiting request gets the error; the other gets a new container.
    assert sched.container_start_failed("c-1", now=1.0) == [
        FailRequest(request_id="r1", reason="start_failed", container_id="c-1"),
        start("c-2", "f"),
    ]
    assert sched.waiting("f") == 1
    assert used_mb(sched, "n-1") == 100
    assert sched.container_started("c-2", now=2.0) == [run("r2", "c-2", cold=True)]


def test_a_container_that_crashes_while_starting_counts_as_a_failed_start() -> None:
    sched = booted(F)
    sched.request("r1", "f", now=0.0)
    assert sched.container_exited("c-1", now=1.0) == [FailRequest(request_id="r1", reason="start_failed", container_id="c-1")]
    assert sched.live("f") == 0
    assert used_mb(sched, "n-1") == 0


def test_a_busy_container_that_crashes_is_forgotten_and_waiting_calls_get_a_new_one() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, max_containers=1))
    sched.request("r1", "f", now=0.0)
    sched.container_started("c-1", now=0.0)
    assert sched.request("r2", "f", now=1.0) == []
    # The shell fails r1 itself (ContainerCrashed); the core replaces the container for r2.
    assert sched.container_exited("c-1", now=2.0) == [start("c-2", "f")]
    assert sched.call_finished("c-1", now=2.0) == []
    assert sched.container_started("c-2", now=3.0) == [run("r2", "c-2", cold=True)]


def test_queue_limit_throttles_requests_past_the_limit() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, max_containers=1), queue_limit=2)
    assert sched.request("r1", "f", now=0.0) == [start("c-1", "f")]
    assert sched.request("r2", "f", now=0.0) == []
    assert sched.request("r3", "f", now=0.0) == [FailRequest(request_id="r3", reason="throttled")]
    assert sched.waiting() == 2

    # r1 leaves the queue when c-1 comes up: there is room for one more.
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.request("r4", "f", now=1.0) == []
    assert sched.request("r5", "f", now=1.0) == [FailRequest(request_id="r5", reason="throttled")]


def test_queue_limit_zero_serves_only_warm_requests() -> None:
    sched = booted(FunctionProfile(name="p", memory_mb=128, min_containers=1), queue_limit=0)
    sched.container_started("c-1", now=0.0)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    # The pinned container is busy and nobody may wait: throttled, no cold start.
    assert sched.request("r2", "p", now=1.0) == [FailRequest(request_id="r2", reason="throttled")]
    assert sched.live("p") == 1


def test_cancel_takes_a_request_out_of_the_queue() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, max_containers=1))
    sched.request("r1", "f", now=0.0)
    sched.request("r2", "f", now=0.0)
    sched.request("r3", "f", now=0.0)
    assert sched.cancel("r2", now=0.5) == []
    assert sched.cancel("r2", now=0.5) == []  # twice is harmless
    assert sched.waiting("f") == 2
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.call_finished("c-1", now=2.0) == [run("r3", "c-1", cold=False)]
    assert sched.call_finished("c-1", now=3.0) == []


def test_a_container_started_for_a_cancelled_request_goes_idle() -> None:
    sched = booted(F)
    sched.request("r1", "f", now=0.0)
    sched.cancel("r1", now=0.5)
    assert sched.container_started("c-1", now=1.0) == []
    assert state(sched, "c-1") is ContainerState.IDLE


def test_shutdown_fails_waiting_requests_and_stops_everything() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, max_containers=2), PINNED)
    sched.container_started("c-1", now=0.0)  # pinned
    sched.container_started("c-2", now=0.0)  # pinned
    sched.request("r1", "f", now=1.0)
    sched.request("r2", "f", now=1.0)
    sched.request("r3", "f", now=1.0)
    sched.container_started("c-3", now=2.0)  # serves r1; c-4 still starting for r2

    assert sched.shutdown(now=3.0) == [
        FailRequest(request_id="r2", reason="closed"),
        FailRequest(request_id="r3", reason="closed"),
        StopContainer(container_id="c-1", reason="shutdown"),
        StopContainer(container_id="c-2", reason="shutdown"),
        StopContainer(container_id="c-3", reason="shutdown"),
        StopContainer(container_id="c-4", reason="shutdown"),
        ReleaseNode(node_id="n-1"),
    ]
    assert sched.request("r4", "f", now=4.0) == [FailRequest(request_id="r4", reason="closed")]
    # Exits and late finishes after shutdown change nothing, and nothing is replaced.
    assert sched.call_finished("c-3", now=4.0) == []
    assert sched.container_exited("c-1", now=4.0) == []
    assert sched.container_start_failed("c-4", now=4.0) == []
    assert sched.next_wake() is None
    assert sched.tick(now=1e6) == []


def test_shutdown_forgets_containers_that_never_got_their_node() -> None:
    sched = make(F)
    assert sched.request("r1", "f", now=0.0) == [AcquireNode(node_id="n-1")]
    # c-1 has no process yet: nothing to stop, and no exit will ever be reported for it.
    assert sched.shutdown(now=1.0) == [FailRequest(request_id="r1", reason="closed"), ReleaseNode(node_id="n-1")]
    assert sched.containers() == []
    assert sched.node_acquired("n-1", now=2.0) == []


# -- nodes -------------------------------------------------------------------------------------

LARGE = FunctionProfile(name="large", memory_mb=700)
MEDIUM = FunctionProfile(name="medium", memory_mb=500)
SMALL = FunctionProfile(name="small", memory_mb=200)


def test_placement_is_best_fit_on_the_fullest_node_with_room() -> None:
    sched = make(LARGE, MEDIUM, SMALL, node_memory_mb=1000, max_nodes=3)
    assert sched.request("r1", "large", now=0.0) == [AcquireNode(node_id="n-1")]
    # n-1 has 300 MB left, not enough for medium: a second node.
    assert sched.request("r2", "medium", now=0.0) == [AcquireNode(node_id="n-2")]
    assert sched.node_acquired("n-1", now=1.0) == [start("c-1", "large", "n-1")]
    assert sched.node_acquired("n-2", now=1.0) == [start("c-2", "medium", "n-2")]
    sched.container_started("c-1", now=2.0)
    sched.container_started("c-2", now=2.0)

    # Both nodes have room for small; n-1 (300 free) is fuller than n-2 (500 free).
    assert sched.request("r3", "small", now=3.0) == [start("c-3", "small", "n-1")]
    # n-1 is now full (100 free): the next small goes on n-2.
    assert sched.request("r4", "small", now=3.0) == [start("c-4", "small", "n-2")]
    assert [used_mb(sched, n) for n in ("n-1", "n-2")] == [900, 700]


def test_containers_waiting_for_one_node_all_start_when_it_is_acquired() -> None:
    sched = make(SMALL, node_memory_mb=1000, max_nodes=2)
    assert sched.request("r1", "small", now=0.0) == [AcquireNode(node_id="n-1")]
    # The acquiring node already counts for placement: no second node.
    assert sched.request("r2", "small", now=0.0) == []
    assert sched.node_acquired("n-1", now=1.0) == [start("c-1", "small"), start("c-2", "small")]
    assert sched.container_started("c-2", now=2.0) == [run("r1", "c-2", cold=True)]
    assert sched.container_started("c-1", now=2.0) == [run("r2", "c-1", cold=True)]


def test_idle_containers_are_evicted_least_recently_used_first_at_max_nodes() -> None:
    a, b, c = (FunctionProfile(name=n, memory_mb=400) for n in "abc")
    sched = booted(a, b, c, node_memory_mb=1000)
    for fn, req, cid, t in (("a", "ra", "c-1", 1.0), ("b", "rb", "c-2", 2.0)):
        assert sched.request(req, fn, now=t) == [start(cid, fn)]
        sched.container_started(cid, now=t)
        sched.call_finished(cid, now=t)
    # 200 MB free, no node to acquire: a (used at t=1) is evicted, b (t=2) is kept.
    assert sched.request("rc", "c", now=3.0) == [
        StopContainer(container_id="c-1", reason="evicted"),
        start("c-3", "c"),
    ]
    assert state(sched, "c-2") is ContainerState.IDLE
    assert used_mb(sched, "n-1") == 800


def test_pinned_and_busy_containers_are_never_evicted() -> None:
    pinned = FunctionProfile(name="p", memory_mb=400, min_containers=1)
    busy = FunctionProfile(name="b", memory_mb=400)
    other = FunctionProfile(name="o", memory_mb=400)
    sched = booted(pinned, busy, other, node_memory_mb=1000)
    sched.container_started("c-1", now=0.0)  # pinned, idle
    sched.request("rb", "b", now=1.0)
    sched.container_started("c-2", now=1.0)  # busy
    # Nothing may be evicted: the start waits for room.
    assert sched.request("ro", "o", now=2.0) == []
    assert sched.waiting("o") == 1
    # When b's call finishes, b's container is idle and evictable.
    assert sched.call_finished("c-2", now=3.0) == [
        StopContainer(container_id="c-2", reason="evicted"),
        start("c-3", "o"),
    ]
    assert sched.container_started("c-3", now=4.0) == [run("ro", "c-3", cold=True)]


def test_the_capacity_queue_is_fifo_so_large_functions_are_not_starved() -> None:
    hog = FunctionProfile(name="hog", memory_mb=500)
    tiny = FunctionProfile(name="tiny", memory_mb=300)
    big = FunctionProfile(name="big", memory_mb=500)
    crumb = FunctionProfile(name="crumb", memory_mb=100)
    sched = booted(hog, tiny, big, crumb, node_memory_mb=1000)
    sched.request("r1", "hog", now=0.0)
    sched.request("r2", "tiny", now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.container_started("c-2", now=0.0)
    assert used_mb(sched, "n-1") == 800

    # big does not fit in the 200 MB left: it queues for capacity.
    assert sched.request("r3", "big", now=1.0) == []
    # crumb would fit, but it queues behind big instead of taking big's room.
    assert sched.request("r4", "crumb", now=1.0) == []
    assert used_mb(sched, "n-1") == 800

    # tiny's call ends: evicting it makes room for big, at the head of the queue.
    assert sched.call_finished("c-2", now=2.0) == [
        StopContainer(container_id="c-2", reason="evicted"),
        start("c-3", "big"),
    ]
    # crumb still does not fit (0 MB free), so it keeps waiting.
    assert used_mb(sched, "n-1") == 1000
    assert sched.container_started("c-3", now=3.0) == [run("r3", "c-3", cold=True)]
    # hog finishes and goes idle; crumb evicts it.
    assert sched.call_finished("c-1", now=4.0) == [
        StopContainer(container_id="c-1", reason="evicted"),
        start("c-4", "crumb"),
    ]


def test_a_queued_start_runs_when_a_starting_container_goes_idle() -> None:
    # c-2 is started for r2 but r2 is served by c-1 first, so c-2 comes up idle.
    # big, queued for room, must then evict it instead of waiting for its keep-alive.
    f = FunctionProfile(name="f", memory_mb=400)
    big = FunctionProfile(name="big", memory_mb=400)
    sched = booted(f, big, node_memory_mb=1000, keep_alive=NeverUnload())
    sched.request("r1", "f", now=0.0)
    sched.container_started("c-1", now=0.0)
    assert sched.request("r2", "f", now=1.0) == [start("c-2", "f")]
    assert sched.request("r3", "big", now=1.0) == []  # 200 MB free, c-2 is starting
    assert sched.call_finished("c-1", now=2.0) == [run("r2", "c-1", cold=False)]
    assert sched.container_started("c-2", now=3.0) == [
        StopContainer(container_id="c-2", reason="evicted"),
        start("c-3", "big"),
    ]


def _full_node_with_big_queued_before_crumb() -> Scheduler:
    """n-1 holds big (500, busy) and tiny (300, busy); another big and a crumb queue for room."""
    big = FunctionProfile(name="big", memory_mb=500)
    tiny = FunctionProfile(name="tiny", memory_mb=300)
    crumb = FunctionProfile(name="crumb", memory_mb=100)
    sched = booted(big, tiny, crumb, node_memory_mb=1000)
    sched.request("r1", "big", now=0.0)
    sched.request("r2", "tiny", now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.container_started("c-2", now=0.0)
    assert sched.request("r3", "big", now=1.0) == []
    assert sched.request("r4", "crumb", now=1.0) == []  # fits in 200 MB, but FIFO
    return sched


def test_cancelling_the_request_at_the_head_of_the_capacity_queue_lets_the_next_start() -> None:
    sched = _full_node_with_big_queued_before_crumb()
    assert sched.cancel("r3", now=2.0) == [start("c-3", "crumb")]
    assert sched.container_started("c-3", now=3.0) == [run("r4", "c-3", cold=True)]


def test_a_freed_container_serving_the_head_of_the_capacity_queue_lets_the_next_start() -> None:
    sched = _full_node_with_big_queued_before_crumb()
    # big's own container frees up and takes r3: big no longer needs a new container.
    assert sched.call_finished("c-1", now=2.0) == [run("r3", "c-1", cold=False), start("c-3", "crumb")]


def test_an_empty_node_is_released_after_release_after_keeping_min_nodes() -> None:
    f = FunctionProfile(name="f", memory_mb=600, idle_timeout=5.0)
    sched = booted(f, node_memory_mb=1000, max_nodes=3, min_nodes=1, release_after=30.0)
    for r, c, n in (("r1", "c-1", "n-1"), ("r2", "c-2", "n-2"), ("r3", "c-3", "n-3")):
        actions = sched.request(r, "f", now=0.0)
        if n != "n-1":
            assert actions == [AcquireNode(node_id=n)]
            assert sched.node_acquired(n, now=0.0) == [start(c, "f", n)]
        sched.container_started(c, now=0.0)
    # The containers go idle at 1, 2 and 3, and stop 5 s later; the nodes are then empty.
    for t, c in ((1.0, "c-2"), (2.0, "c-3"), (3.0, "c-1")):
        sched.call_finished(c, now=t)
    assert sched.next_wake() == 6.0
    assert sched.tick(now=6.0) == [StopContainer(container_id="c-2", reason="idle")]
    assert sched.tick(now=8.0) == [
        StopContainer(container_id="c-3", reason="idle"),
        StopContainer(container_id="c-1", reason="idle"),
    ]
    # n-2 emptied at 6, n-3 and n-1 at 8.
    assert sched.next_wake() == 36.0
    assert sched.tick(now=35.9) == []
    assert sched.tick(now=36.0) == [ReleaseNode(node_id="n-2")]
    # Two nodes left, one may go; it is the one emptied first (a tie: n-3 or n-1).
    assert sched.next_wake() == 38.0
    released = sched.tick(now=38.0)
    assert len(released) == 1 and isinstance(released[0], ReleaseNode)
    assert len(sched.resources.nodes) == 1
    # min_nodes=1: the last node is kept however long it stays empty.
    assert sched.next_wake() is None
    assert sched.tick(now=1e6) == []


def test_a_node_that_is_used_again_is_not_released() -> None:
    f = FunctionProfile(name="f", memory_mb=100, idle_timeout=1.0)
    sched = make(f, release_after=10.0)
    sched.request("r1", "f", now=0.0)
    sched.node_acquired("n-1", now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.call_finished("c-1", now=0.0)
    assert sched.tick(now=1.0) == [StopContainer(container_id="c-1", reason="idle")]
    assert sched.next_wake() == 11.0
    assert sched.request("r2", "f", now=5.0) == [start("c-2", "f")]
    assert sched.next_wake() is None
    assert sched.tick(now=11.0) == []
    assert list(sched.resources.nodes) == ["n-1"]


def test_a_node_that_fails_to_come_up_fails_the_starts_waiting_for_it() -> None:
    sched = make(F, max_nodes=2)
    assert sched.request("r1", "f", now=0.0) == [AcquireNode(node_id="n-1")]
    assert sched.node_failed("n-1", now=1.0) == [FailRequest(request_id="r1", reason="start_failed", container_id="c-1")]
    assert sched.resources.nodes == {}
    assert sched.live("f") == 0
    # A later request acquires a fresh node.
    assert sched.request("r2", "f", now=2.0) == [AcquireNode(node_id="n-2")]


def test_a_lost_node_takes_its_containers_and_pins_are_replaced_elsewhere() -> None:
    sched = booted(PINNED, F, max_nodes=2)
    sched.container_started("c-1", now=0.0)
    sched.container_started("c-2", now=0.0)
    sched.request("r1", "f", now=1.0)
    sched.container_started("c-3", now=1.0)

    # n-1 vanishes with all three containers; the pins are placed on a new node, never on n-1.
    assert sched.node_failed("n-1", now=2.0) == [AcquireNode(node_id="n-2")]
    assert "n-1" not in sched.resources.nodes
    assert {c.id for c in sched.containers()} == {"c-4", "c-5"}
    assert {c.node_id for c in sched.containers()} == {"n-2"}
    assert sched.node_acquired("n-2", now=3.0) == [start("c-4", "p", "n-2", pinned=True), start("c-5", "p", "n-2", pinned=True)]
    assert sched.call_finished("c-3", now=3.0) == []


def test_a_lost_node_lets_queued_starts_acquire_a_replacement() -> None:
    f = FunctionProfile(name="f", memory_mb=1000)
    sched = booted(f, node_memory_mb=1000, min_nodes=1, max_nodes=1)
    # c-1 fills the only node allowed, so r2's start waits for room.
    sched.request("r1", "f", now=0.0)
    sched.container_started("c-1", now=0.0)
    assert sched.request("r2", "f", now=1.0) == []
    # n-1 is lost: r2's container goes on a newly acquired node.
    assert sched.node_failed("n-1", now=2.0) == [AcquireNode(node_id="n-2")]
    assert sched.node_acquired("n-2", now=3.0) == [start("c-2", "f", "n-2")]
    assert sched.container_started("c-2", now=4.0) == [run("r2", "c-2", cold=True)]


# -- configuration --------------------------------------------------------------------------


def test_add_function_rejects_memory_larger_than_a_node() -> None:
    sched = make(node_memory_mb=512)
    with pytest.raises(ValueError, match=r"big: memory_mb=513 does not fit on a node of 512 MB"):
        sched.add_function(FunctionProfile(name="big", memory_mb=513))
    sched.add_function(FunctionProfile(name="exact", memory_mb=512))
    with pytest.raises(ValueError, match="already registered"):
        sched.add_function(FunctionProfile(name="exact", memory_mb=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_memory_mb": 0}, "node_memory_mb must be >= 1"),
        ({"node_memory_mb": 1, "max_nodes": 0}, "max_nodes must be >= 1"),
        ({"node_memory_mb": 1, "max_nodes": 1, "min_nodes": 2}, "min_nodes must be between 0 and max_nodes=1"),
        ({"node_memory_mb": 1, "release_after": -1}, "release_after must be >= 0"),
    ],
)
def test_resource_manager_rejects_bad_configuration(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ResourceManager(**kwargs)


def test_scheduler_rejects_a_negative_queue_limit() -> None:
    with pytest.raises(ValueError, match="queue_limit must be >= 0"):
        Scheduler(ResourceManager(node_memory_mb=1), queue_limit=-1)


def test_keep_alive_rejects_a_negative_ttl() -> None:
    with pytest.raises(ValueError, match="FixedKeepAlive: ttl must be >= 0 seconds"):
        FixedKeepAlive(-1)


# -- usage accounting ----------------------------------------------------------------------


def test_usage_counts_container_seconds_by_state_and_idle_memory() -> None:
    sched = make(FunctionProfile(name="f", memory_mb=100, idle_timeout=10.0))
    assert sched.request("r1", "f", now=0.0) == [AcquireNode(node_id="n-1")]
    assert sched.node_acquired("n-1", now=0.5) == [start("c-1", "f")]
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.call_finished("c-1", now=3.0) == []
    half_way = sched.usage_at("f", now=8.0)
    assert half_way.container_seconds == {"starting": 1.0, "idle": 5.0, "busy": 2.0, "stopping": 0.0}
    assert half_way.idle_memory_mb_s == 500.0
    assert sched.tick(now=13.0) == [StopContainer(container_id="c-1", reason="idle")]
    assert sched.container_exited("c-1", now=13.5) == []
    done = sched.usage_at("f", now=100.0)
    assert done.container_seconds == {"starting": 1.0, "idle": 10.0, "busy": 2.0, "stopping": 0.5}
    assert done.idle_memory_mb_s == 1000.0
    assert sched.usage_at(now=100.0) == done


def test_node_seconds_count_from_the_acquisition_request_to_the_release() -> None:
    sched = make(FunctionProfile(name="f", memory_mb=100, idle_timeout=1.0), release_after=5.0)
    sched.request("r1", "f", now=10.0)
    sched.node_acquired("n-1", now=12.0)
    sched.container_started("c-1", now=12.0)
    sched.call_finished("c-1", now=13.0)
    assert sched.resources.node_seconds(now=13.0) == 3.0
    assert sched.tick(now=14.0) == [StopContainer(container_id="c-1", reason="idle")]
    assert sched.tick(now=19.0) == [ReleaseNode(node_id="n-1")]
    assert sched.resources.node_seconds(now=50.0) == 9.0


# -- pre-warming ---------------------------------------------------------------------------


class PrewarmAfterFive(KeepAlivePolicy):
    """Unload at once after a call, pre-warm 5 s later, keep the pre-warmed container 3 s."""

    def __init__(self) -> None:
        self.prewarm_pending: set[str] = set()

    def observe_arrival(self, function: str, *, now: float) -> None:
        self.prewarm_pending.discard(function)

    def ttl_for(self, function: str, *, now: float) -> float:
        return 3.0 if function in self.prewarm_pending else 0.0

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        if function in self.prewarm_pending:
            return None
        self.prewarm_pending.add(function)
        return 5.0


def test_a_policy_can_unload_at_once_and_prewarm_before_the_next_call() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=100, idle_timeout=None), keep_alive=PrewarmAfterFive())
    assert sched.request("r1", "f", now=0.0) == [start("c-1", "f")]
    assert sched.container_started("c-1", now=1.0) == [run("r1", "c-1", cold=True)]
    assert sched.call_finished("c-1", now=2.0) == []
    assert sched.next_wake() == 2.0
    assert sched.tick(now=2.0) == [StopContainer(container_id="c-1", reason="idle")]
    sched.container_exited("c-1", now=2.1)
    assert sched.next_wake() == 7.0
    assert sched.tick(now=7.0) == [start("c-2", "f")]
    assert sched.container_started("c-2", now=7.5) == []
    assert sched.next_wake() == 10.5  # the pre-warmed container is kept 3 s
    assert sched.request("r2", "f", now=9.0) == [run("r2", "c-2", cold=False)]


def test_no_prewarm_when_a_container_is_already_up() -> None:
    policy = PrewarmAfterFive()
    sched = booted(FunctionProfile(name="f", memory_mb=100, idle_timeout=None), keep_alive=policy)
    sched.request("r1", "f", now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.call_finished("c-1", now=1.0)
    sched.tick(now=1.0)
    sched.container_exited("c-1", now=1.0)
    sched.request("r2", "f", now=3.0)  # arrives before the pre-warm: a cold start of its own
    assert sched.tick(now=6.0) == []


# -- pipelining -------------------------------------------------------------------------------

P = FunctionProfile(name="p", memory_mb=100, max_containers=1)


def piped(request_id: str, container_id: str) -> RunOn:
    return RunOn(request_id=request_id, container_id=container_id, cold_start=False, queued=True)


def one_warm_container(*profiles: FunctionProfile, depth: int = 2, duration_s: float = 0.0002) -> Scheduler:
    """A pipelining scheduler with ``c-1`` up and idle, after one call of ``duration_s``."""
    resources = ResourceManager(node_memory_mb=1024, max_nodes=1, min_nodes=1)
    sched = Scheduler(resources, pipeline_depth=depth)
    for profile in profiles:
        sched.add_function(profile)
    sched.start(now=0.0)
    sched.node_acquired("n-1", now=0.0)
    name = profiles[0].name
    assert sched.request("r0", name, now=0.0) == [start("c-1", name)]
    assert sched.container_started("c-1", now=0.0) == [run("r0", "c-1", cold=True)]
    assert sched.call_finished("c-1", now=0.0, duration_s=duration_s) == []
    return sched


def test_short_calls_are_queued_in_a_full_container_up_to_the_pipeline_depth() -> None:
    sched = one_warm_container(P, depth=2)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    assert sched.request("r2", "p", now=1.0) == [piped("r2", "c-1")]
    assert sched.request("r3", "p", now=1.0) == [piped("r3", "c-1")]
    assert sched.request("r4", "p", now=1.0) == []  # depth reached: r4 waits
    assert sched.waiting("p") == 1
    rec = sched.container("c-1")
    assert (rec.busy, rec.queued) == (1, 2)
    # r1 finishes: r2 takes the slot, and r4 is queued behind r3.
    assert sched.call_finished("c-1", now=1.1, duration_s=0.0002) == [piped("r4", "c-1")]
    assert (rec.busy, rec.queued, sched.waiting("p")) == (1, 2, 0)
    for _ in range(3):
        assert sched.call_finished("c-1", now=1.2, duration_s=0.0002) == []
    assert (rec.busy, rec.state) == (0, ContainerState.IDLE)


def test_a_container_holds_queued_calls_up_to_a_millisecond_of_recent_work_under_a_deep_pipeline() -> None:
    # Calls of 0.3 ms: a depth of 64 would allow 64 queued, but 3 of them are already 0.9 ms of work.
    sched = one_warm_container(P, depth=64, duration_s=0.0003)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    answers = [sched.request(f"r{i}", "p", now=1.0) for i in (2, 3, 4, 5)]
    assert answers == [[piped("r2", "c-1")], [piped("r3", "c-1")], [piped("r4", "c-1")], []]
    assert sched.container("c-1").queued == 3
    # Calls of 20 us: a millisecond is 50 of them, so the depth of 64 is not what stops them.
    sched = one_warm_container(P, depth=64, duration_s=0.00002)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    queued = [i for i in range(2, 100) if sched.request(f"r{i}", "p", now=1.0)]
    assert len(queued) == 50 and sched.waiting("p") == 98 - 50
    # When r1 ends, the oldest queued call takes its slot and the oldest waiting one is queued.
    assert sched.call_finished("c-1", now=1.1, duration_s=0.00002) == [piped("r52", "c-1")]
    # A call close to the 1 ms limit still has one call queued behind it.
    sched = one_warm_container(P, depth=64, duration_s=0.0009)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    assert [sched.request(f"r{i}", "p", now=1.0) for i in (2, 3)] == [[piped("r2", "c-1")], []]


def test_calls_are_not_pipelined_when_they_are_long_or_the_function_can_grow_or_runs_concurrently() -> None:
    # Long calls: a queued call would wait behind one.
    sched = one_warm_container(P, duration_s=0.5)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    assert sched.request("r2", "p", now=1.0) == []
    # Room to grow: a second container is better than a queue.
    sched = one_warm_container(FunctionProfile(name="g", memory_mb=100, max_containers=2))
    assert sched.request("r1", "g", now=1.0) == [run("r1", "c-1", cold=False)]
    assert sched.request("r2", "g", now=1.0) == [start("c-2", "g")]
    # Concurrency above 1: the container takes more calls through its own slots.
    sched = one_warm_container(FunctionProfile(name="k", memory_mb=100, max_containers=1, concurrency=2))
    assert sched.request("r1", "k", now=1.0) == [run("r1", "c-1", cold=False)]
    assert sched.request("r2", "k", now=1.0) == [run("r2", "c-1", cold=False)]
    assert sched.request("r3", "k", now=1.0) == []
    # Pipelining off (the default).
    sched = one_warm_container(P, depth=0)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    assert sched.request("r2", "p", now=1.0) == []


def test_the_running_average_of_call_durations_turns_pipelining_off_and_on() -> None:
    sched = one_warm_container(P, depth=1)
    assert sched.request("r1", "p", now=1.0) == [run("r1", "c-1", cold=False)]
    # r1 ran long: the average rises past the limit, so r2 waits instead of queueing.
    assert sched.call_finished("c-1", now=2.0, duration_s=1.0) == []
    assert sched.request("r2", "p", now=2.0) == [run("r2", "c-1", cold=False)]
    assert sched.request("r3", "p", now=2.0) == []
    # Short calls bring the average back down (weight 1/8 each): once it is under 1 ms,
    # a request that finds the container busy is queued in it again.
    for i in range(1, 100):
        assert sched.call_finished("c-1", now=3.0, duration_s=0.0001) == [run(f"r{i + 2}", "c-1", cold=False)]
        if sched.request(f"r{i + 3}", "p", now=3.0) == [piped(f"r{i + 3}", "c-1")]:
            break
    average = 0.0002 + (1.0 - 0.0002) / 8  # the warm-up call, then r1
    short_calls = 0
    while average >= 0.001:
        average += (0.0001 - average) / 8
        short_calls += 1
    assert i == short_calls == 37


def test_pipeline_depth_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="pipeline_depth must be >= 0"):
        Scheduler(ResourceManager(node_memory_mb=1024), pipeline_depth=-1)


def test_a_container_used_again_and_again_keeps_one_expiry_entry_and_expires_after_its_last_use() -> None:
    g = FunctionProfile(name="g", memory_mb=100, idle_timeout=60.0)
    sched = booted(g)
    assert sched.request("r0", "g", now=0.0) == [start("c-1", "g")]
    sched.container_started("c-1", now=0.0)
    sched.call_finished("c-1", now=0.0)
    epoch = sched.wake_epoch
    for i in range(1, 1001):
        assert sched.request(f"r{i}", "g", now=i * 0.01) == [run(f"r{i}", "c-1", cold=False)]
        sched.call_finished("c-1", now=i * 0.01)
    assert len(sched._wakes._expiry) == 1  # white-box: no entry per call
    assert sched.wake_epoch == epoch  # each later expiry moved the wake later, never earlier
    assert sched.next_wake() == pytest.approx(10.0 + 60.0)
    assert sched.tick(now=69.9) == []
    assert sched.tick(now=70.0) == [StopContainer(container_id="c-1", reason="idle")]
