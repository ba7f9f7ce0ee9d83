"""The container lifecycle table (containers.py), one row at a time.

As in h11's ``test_state.py``: plain calls with an explicit ``now``, asserting the
exact actions returned and the state the core then holds for each container. The
first half walks every legal move of ``TRANSITIONS`` through the ``Scheduler``;
the second feeds facts that cannot be true and checks that each raises
``CoreMisuse`` naming the container, its state and the fact, and changes nothing.
"""

from __future__ import annotations

import pytest

from microfaas.containers import TRANSITIONS, CoreMisuse, Fact, next_state
from microfaas.resources import AcquireNode, ReleaseNode, ResourceManager
from microfaas.scheduler import ContainerState, FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer

STARTING, IDLE, BUSY = ContainerState.STARTING, ContainerState.IDLE, ContainerState.BUSY
STOPPING, STOPPED = ContainerState.STOPPING, ContainerState.STOPPED

F = FunctionProfile(name="f", memory_mb=256, idle_timeout=10.0)
G = FunctionProfile(name="g", memory_mb=256, idle_timeout=10.0)
TWO = FunctionProfile(name="two", memory_mb=256, concurrency=2, idle_timeout=10.0)


def booted(*profiles: FunctionProfile, min_nodes: int = 1, max_nodes: int = 1) -> Scheduler:
    """A scheduler over one 1024 MB node that is up at t=0 (none with ``min_nodes=0``)."""
    sched = Scheduler(ResourceManager(node_memory_mb=1024, max_nodes=max_nodes, min_nodes=min_nodes))
    for profile in profiles:
        sched.add_function(profile)
    for action in sched.start(now=0.0):
        assert isinstance(action, AcquireNode)
        sched.node_acquired(action.node_id, now=0.0)
    return sched


def state(sched: Scheduler, container_id: str) -> ContainerState:
    """The state the core holds for a container; STOPPED once it no longer tracks it."""
    rec = sched.container(container_id)
    return STOPPED if rec is None else rec.state


def start(container_id: str, function: str = "f") -> StartContainer:
    return StartContainer(container_id=container_id, function=function, node_id="n-1", pinned=False)


def run(request_id: str, container_id: str, *, cold: bool) -> RunOn:
    return RunOn(request_id=request_id, container_id=container_id, cold_start=cold)


def starting(sched: Scheduler, request_id: str = "r1", function: str = "f") -> str:
    """Ask for a container; return the id of the one that starts for it."""
    [action] = sched.request(request_id, function, now=1.0)
    assert isinstance(action, StartContainer)
    return action.container_id


def idle(sched: Scheduler, function: str = "f") -> str:
    """A container of ``function`` (which has none yet) that ran one call and went idle at t=2."""
    cid = starting(sched, f"{function}-0", function)
    sched.container_started(cid, now=1.0)
    assert sched.call_finished(cid, now=2.0) == []
    assert state(sched, cid) is IDLE
    return cid


def busy(sched: Scheduler, function: str = "f") -> str:
    """A container of ``function`` (which has none yet) running one call since t=1."""
    cid = starting(sched, f"{function}-0", function)
    assert sched.container_started(cid, now=1.0) == [run(f"{function}-0", cid, cold=True)]
    assert state(sched, cid) is BUSY
    return cid


# -- STARTING --------------------------------------------------------------------------------


def test_starting_then_container_started_goes_idle_or_takes_the_waiting_requests() -> None:
    sched = booted(F)
    assert sched.request("r1", "f", now=1.0) == [start("c-1")]
    assert state(sched, "c-1") is STARTING
    # container_started: STARTING -> IDLE, and run_on at once: IDLE -> BUSY.
    assert sched.container_started("c-1", now=2.0) == [run("r1", "c-1", cold=True)]
    assert state(sched, "c-1") is BUSY
    # With no one waiting it stays IDLE.
    assert sched.request("r2", "f", now=2.0) == [start("c-2")]
    assert sched.cancel("r2", now=2.5) == []
    assert sched.container_started("c-2", now=3.0) == []
    assert state(sched, "c-2") is IDLE


def test_starting_then_start_failed_or_exited_is_stopped_and_fails_one_request() -> None:
    sched = booted(F)
    cid = starting(sched, "r1")
    assert sched.container_start_failed(cid, now=2.0) == [FailRequest(request_id="r1", reason="start_failed", container_id=cid)]
    assert state(sched, cid) is STOPPED
    # A process that dies before it is ready counts as a failed start too.
    cid = starting(sched, "r2")
    assert sched.container_exited(cid, now=3.0) == [FailRequest(request_id="r2", reason="start_failed", container_id=cid)]
    assert state(sched, cid) is STOPPED
    assert sched.resources.nodes["n-1"].used_mb == 0


def test_starting_then_stopped_at_shutdown_then_exit() -> None:
    sched = booted(F)
    cid = starting(sched)
    assert sched.shutdown(now=2.0) == [
        FailRequest(request_id="r1", reason="closed"),
        StopContainer(container_id=cid, reason="shutdown"),
        ReleaseNode(node_id="n-1"),
    ]
    assert state(sched, cid) is STOPPING
    assert sched.container_exited(cid, now=3.0) == []
    assert state(sched, cid) is STOPPED


def test_starting_on_a_node_still_being_acquired_is_withdrawn_at_shutdown() -> None:
    sched = booted(F, min_nodes=0)
    assert sched.request("r1", "f", now=1.0) == [AcquireNode(node_id="n-1")]
    assert state(sched, "c-1") is STARTING
    # start_withdrawn: the shell never heard of c-1, so nothing is stopped.
    assert sched.shutdown(now=2.0) == [FailRequest(request_id="r1", reason="closed"), ReleaseNode(node_id="n-1")]
    assert state(sched, "c-1") is STOPPED


def test_starting_idle_and_busy_containers_are_stopped_with_their_node() -> None:
    sched = booted(F, G, TWO)
    s, i, b = starting(sched, "rs", "two"), idle(sched, "f"), busy(sched, "g")
    assert [state(sched, c) for c in (s, i, b)] == [STARTING, IDLE, BUSY]
    # node_failed: all three are STOPPED; rs gets the failed start, and no node is left to start on.
    assert sched.node_failed("n-1", now=5.0) == [FailRequest(request_id="rs", reason="start_failed", container_id=s)]
    assert [state(sched, c) for c in (s, i, b)] == [STOPPED] * 3


# -- IDLE ---------------------------------------------------------------------------------------


def test_idle_then_run_on_is_busy() -> None:
    sched = booted(F)
    cid = idle(sched)
    assert sched.request("r1", "f", now=3.0) == [run("r1", cid, cold=False)]
    assert state(sched, cid) is BUSY


def test_idle_then_stopped_when_its_keep_alive_runs_out_then_exit() -> None:
    sched = booted(F)
    cid = idle(sched)  # idle from 2, idle_timeout 10
    assert sched.tick(now=12.0) == [StopContainer(container_id=cid, reason="idle")]
    assert state(sched, cid) is STOPPING
    assert sched.container_exited(cid, now=12.5) == []
    assert state(sched, cid) is STOPPED


def test_idle_then_crash_is_stopped() -> None:
    sched = booted(F)
    cid = idle(sched)
    assert sched.container_exited(cid, now=3.0) == []
    assert state(sched, cid) is STOPPED


# -- BUSY ---------------------------------------------------------------------------------------


def test_busy_stays_busy_until_its_last_slot_frees() -> None:
    sched = booted(TWO)
    cid = starting(sched, "r1", "two")
    assert sched.container_started(cid, now=2.0) == [run("r1", cid, cold=True)]
    # run_on on BUSY: a second slot, still BUSY.
    assert sched.request("r2", "two", now=3.0) == [run("r2", cid, cold=False)]
    assert (state(sched, cid), sched.container(cid).busy) == (BUSY, 2)
    # call_finished frees one slot: still BUSY; the last one: IDLE.
    assert sched.call_finished(cid, now=4.0) == []
    assert (state(sched, cid), sched.container(cid).busy) == (BUSY, 1)
    assert sched.call_finished(cid, now=5.0) == []
    assert (state(sched, cid), sched.container(cid).busy) == (IDLE, 0)


def test_busy_call_finished_with_a_request_waiting_stays_busy() -> None:
    sched = booted(FunctionProfile(name="f", memory_mb=256, max_containers=1))
    cid = busy(sched)
    assert sched.request("r1", "f", now=2.0) == []
    assert sched.call_finished(cid, now=3.0) == [run("r1", cid, cold=False)]
    assert state(sched, cid) is BUSY


def test_busy_then_crash_is_stopped_and_shutdown_stops_busy_ones() -> None:
    sched = booted(F)
    cid = busy(sched)
    assert sched.container_exited(cid, now=3.0) == []
    assert state(sched, cid) is STOPPED
    cid = busy(sched)
    assert sched.shutdown(now=4.0) == [StopContainer(container_id=cid, reason="shutdown"), ReleaseNode(node_id="n-1")]
    assert state(sched, cid) is STOPPING


# -- stale facts the table allows ----------------------------------------------------------------


def test_a_call_that_beats_the_exit_at_shutdown_changes_nothing() -> None:
    sched = booted(F)
    cid = busy(sched)
    sched.shutdown(now=2.0)
    assert sched.call_finished(cid, now=2.5) == []
    assert state(sched, cid) is STOPPING
    assert sched.container_exited(cid, now=3.0) == []
    assert state(sched, cid) is STOPPED


def test_a_start_that_fails_after_shutdown_stopped_it_ends_it() -> None:
    sched = booted(F)
    cid = starting(sched)
    sched.shutdown(now=2.0)
    assert sched.container_start_failed(cid, now=3.0) == []
    assert state(sched, cid) is STOPPED
    assert sched.containers() == []


def test_a_call_reported_after_its_container_exited_changes_nothing() -> None:
    sched = booted(F)
    cid = busy(sched)
    assert sched.container_exited(cid, now=2.0) == []
    assert sched.call_finished(cid, now=2.0) == []
    assert state(sched, cid) is STOPPED


def test_a_stopping_container_lost_with_its_node_is_stopped() -> None:
    sched = booted(F)
    cid = idle(sched)
    sched.tick(now=12.0)
    assert state(sched, cid) is STOPPING
    assert sched.node_failed("n-1", now=12.5) == []
    assert state(sched, cid) is STOPPED
    assert sched.containers() == []


# -- illegal facts -------------------------------------------------------------------------------


def assert_refused(call, message: str) -> None:
    with pytest.raises(CoreMisuse) as caught:
        call()
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_second_start_report_is_refused_and_changes_nothing() -> None:
    sched = booted(F)
    cid = busy(sched)
    assert_refused(
        lambda: sched.container_started(cid, now=2.0),
        f"container {cid} is busy: container_started is not legal in state busy "
        "(legal there: call_finished, container_exited, node_failed, run_on, stop_container)",
    )
    rec = sched.container(cid)
    assert (rec.state, rec.busy, sched.resources.nodes["n-1"].used_mb) == (BUSY, 1, 256)
    with pytest.raises(CoreMisuse) as caught:
        sched.container_started(cid, now=2.0)
    assert (caught.value.container_id, caught.value.state, caught.value.fact) == (cid, BUSY, Fact.CONTAINER_STARTED)


def test_a_start_report_after_shutdown_stopped_it_is_refused() -> None:
    sched = booted(F)
    cid = starting(sched)
    sched.shutdown(now=2.0)
    assert_refused(lambda: sched.container_started(cid, now=3.0), f"container {cid} is stopping: container_started is not legal")
    assert state(sched, cid) is STOPPING


def test_a_call_finished_with_no_call_running_is_refused() -> None:
    sched = booted(F, G)
    cid = starting(sched, "r1", "g")
    assert_refused(lambda: sched.call_finished(cid, now=2.0), f"container {cid} is starting: call_finished is not legal")
    cid = idle(sched, "f")
    assert_refused(lambda: sched.call_finished(cid, now=3.0), f"container {cid} is idle: call_finished is not legal")
    assert sched.container(cid).state is IDLE
    assert sched.next_wake() == 12.0  # its keep-alive is untouched


def test_a_start_failure_of_a_container_that_is_up_is_refused() -> None:
    sched = booted(F, G)
    cid = idle(sched, "f")
    assert_refused(lambda: sched.container_start_failed(cid, now=3.0), f"container {cid} is idle: container_start_failed is not legal")
    cid2 = busy(sched, "g")
    assert_refused(lambda: sched.container_start_failed(cid2, now=3.0), f"container {cid2} is busy: container_start_failed is not legal")
    assert [state(sched, c) for c in (cid, cid2)] == [IDLE, BUSY]


def test_facts_about_a_stopped_container_are_refused_except_a_late_call_finished() -> None:
    sched = booted(F)
    cid = idle(sched)
    sched.container_exited(cid, now=3.0)
    stopped = f"container {cid} is stopped: "
    assert_refused(
        lambda: sched.container_exited(cid, now=4.0),
        stopped + "container_exited is not legal in state stopped (legal there: call_finished)",
    )
    assert_refused(lambda: sched.container_started(cid, now=4.0), stopped + "container_started is not legal")
    assert_refused(lambda: sched.container_start_failed(cid, now=4.0), stopped + "container_start_failed is not legal")
    assert sched.call_finished(cid, now=4.0) == []


def test_facts_about_a_container_awaiting_its_node_are_refused() -> None:
    sched = booted(F, min_nodes=0)
    assert sched.request("r1", "f", now=1.0) == [AcquireNode(node_id="n-1")]
    awaiting = "container c-1 is starting, awaiting node n-1, never handed to the shell: "
    assert_refused(lambda: sched.container_started("c-1", now=2.0), awaiting + "container_started is not legal")
    assert_refused(lambda: sched.container_start_failed("c-1", now=2.0), awaiting + "container_start_failed is not legal")
    assert_refused(lambda: sched.container_exited("c-1", now=2.0), awaiting + "container_exited is not legal")
    assert_refused(lambda: sched.call_finished("c-1", now=2.0), awaiting + "call_finished is not legal")
    assert sched.waiting("f") == 1
    assert sched.node_acquired("n-1", now=3.0) == [start("c-1")]


@pytest.mark.parametrize("container_id", ["c-2", "c-0", "c-01", "x-1", "c-", "c-²"])
@pytest.mark.parametrize("fact", ["container_started", "container_start_failed", "container_exited", "call_finished"])
def test_facts_about_a_container_the_core_never_created_are_refused(container_id: str, fact: str) -> None:
    sched = booted(F)
    starting(sched)  # c-1 exists; c-2 has not been issued yet
    assert_refused(
        lambda: getattr(sched, fact)(container_id, now=2.0),
        f"container {container_id} is unknown (this scheduler never created it): {fact} is not legal",
    )
    assert state(sched, "c-1") is STARTING


# -- the table itself -----------------------------------------------------------------------------


def test_every_state_has_a_row_and_only_stopped_is_final() -> None:
    assert set(TRANSITIONS) == set(ContainerState)
    # STOPPED takes one stale fact and stays STOPPED; every other state can reach STOPPED.
    assert TRANSITIONS[STOPPED] == {Fact.CALL_FINISHED: STOPPED}
    for row in (STARTING, IDLE, BUSY, STOPPING):
        assert STOPPED in TRANSITIONS[row].values() or STOPPING in TRANSITIONS[row].values()


@pytest.mark.parametrize("state_", list(ContainerState))
@pytest.mark.parametrize("fact", list(Fact))
def test_next_state_follows_the_table_or_names_container_state_and_fact(state_: ContainerState, fact: Fact) -> None:
    row = TRANSITIONS[state_]
    if fact in row:
        assert next_state("c-7", state_, fact) is row[fact]
        return
    with pytest.raises(CoreMisuse) as caught:
        next_state("c-7", state_, fact)
    assert (caught.value.container_id, caught.value.state, caught.value.fact) == ("c-7", state_, fact)
    assert str(caught.value).startswith(f"container c-7 is {state_}: {fact} is not legal in state {state_}")
