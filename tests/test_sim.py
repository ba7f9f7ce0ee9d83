"""The virtual-time driver: the real scheduler core against simulated containers and nodes.

No event loop and no clock. Container ids are ``c-1, c-2, ...`` and node ids
``n-1, n-2, ...`` in the order the core creates them; the times below are worked
out by hand from each function's ``cold_start_s`` (0.5 s unless set) and each
call's ``duration_s``.
"""

from __future__ import annotations

import random

import pytest

from microfaas.keepalive import NeverUnload
from microfaas.scheduler import FunctionProfile, StartContainer, StopContainer
from microfaas.sim import Invocation, SimFunction, SimulatedNodes, simulate


def calls(function: str, *times: float, duration: float = 1.0) -> list[Invocation]:
    return [Invocation(t, function, duration) for t in times]


def starts(report) -> list[tuple[float, str, str]]:
    return [(t, a.function, a.node_id) for t, a in report.actions if isinstance(a, StartContainer)]


def test_a_burst_on_a_cold_function_starts_one_container_per_call() -> None:
    report = simulate([SimFunction("f")], calls("f", 0, 0, 0, 0, 0))
    assert report.containers_started == 5
    assert (report.cold_starts, report.warm_starts) == (5, 0)
    assert report.waits_s == (0.5,) * 5
    assert report.failed == {}


def test_sequential_calls_reuse_one_warm_container() -> None:
    report = simulate([SimFunction("f")], calls("f", 0, 2, 4, 6, 8))
    assert report.containers_started == 1
    assert (report.cold_starts, report.warm_starts) == (1, 4)
    assert report.wait_s == pytest.approx(0.5)
    assert report.cold_starts_by_function == {"f": 1}


def test_a_call_arriving_as_another_finishes_gets_its_container() -> None:
    # Outcomes come before arrivals at the same instant: the call ending at 1.5 frees c-1.
    report = simulate([SimFunction("f")], calls("f", 0, 1.5))
    assert (report.cold_starts, report.warm_starts) == (1, 1)


def test_a_gap_longer_than_idle_timeout_means_a_second_cold_start() -> None:
    fn = SimFunction("f", idle_timeout=10.0)
    # c-1 is idle from 1.5 and stopped at 11.5.
    report = simulate([fn], calls("f", 0, 30))
    assert (report.cold_starts, report.warm_starts) == (2, 0)
    assert report.containers_stopped == {"idle": 1}
    within = simulate([fn], calls("f", 0, 6))
    assert (within.cold_starts, within.warm_starts) == (1, 1)
    assert within.containers_stopped == {}


def test_idle_timeout_none_uses_the_keep_alive_policy() -> None:
    fn = SimFunction("f", idle_timeout=None)
    report = simulate([fn], calls("f", 0, 10_000), keep_alive=NeverUnload())
    assert (report.cold_starts, report.warm_starts) == (1, 1)


def test_a_600_mb_and_a_300_mb_container_share_a_1000_mb_node() -> None:
    nodes = SimulatedNodes(max_nodes=2, node_memory_mb=1000)
    fns = [SimFunction("big", memory_mb=600), SimFunction("small", memory_mb=300)]
    report = simulate(fns, calls("big", 0) + calls("small", 0), nodes, record=True)
    assert report.peak_nodes == 1
    assert starts(report) == [(0.0, "big", "n-1"), (0.0, "small", "n-1")]


def test_placement_is_best_fit_across_two_nodes() -> None:
    nodes = SimulatedNodes(max_nodes=2, node_memory_mb=1000)
    fns = [SimFunction("big", memory_mb=600, idle_timeout=5.0), SimFunction("small", memory_mb=300)]
    trace = [
        Invocation(0, "big", 1),  # c-1 on n-1; idle at 1.5, stopped at 6.5
        Invocation(0, "big", 100),  # c-2: no room on n-1, so n-2
        Invocation(0, "small", 100),  # c-3: a tie (400 MB free each), the first node: n-1
        Invocation(20, "small", 1),  # n-1 has 700 MB free, n-2 400 MB: best fit is n-2
    ]
    report = simulate(fns, trace, nodes, record=True)
    assert starts(report) == [(0.0, "big", "n-1"), (0.0, "big", "n-2"), (0.0, "small", "n-1"), (20.0, "small", "n-2")]
    assert report.peak_nodes == 2


def test_acquire_delay_is_waited_only_by_calls_that_need_a_new_node() -> None:
    nodes = SimulatedNodes(max_nodes=2, node_memory_mb=1000, acquire_delay=10.0)
    fns = [SimFunction("big", memory_mb=600), SimFunction("small", memory_mb=300)]
    trace = [
        Invocation(0, "big", 100),  # acquires n-1: 10 s + 0.5 s cold start
        Invocation(20, "small", 1),  # fits on n-1, which is up: 0.5 s
        Invocation(20, "big", 1),  # no room on n-1: acquires n-2
    ]
    report = simulate(fns, trace, nodes)
    assert report.waits_s == pytest.approx((10.5, 0.5, 10.5))
    assert report.wait_s == pytest.approx(21.5)
    assert report.max_wait_s == pytest.approx(10.5)
    assert report.peak_nodes == 2


def test_an_empty_node_is_released_after_release_after() -> None:
    fn = SimFunction("f", idle_timeout=10.0)
    nodes = SimulatedNodes(release_after=30.0)
    # Acquired at 0; the call ends at 1.5; c-1 stopped at 11.5; n-1 released at 41.5.
    report = simulate([fn], calls("f", 0), nodes, drain=True, record=True)
    assert report.end_s == pytest.approx(41.5)
    assert report.node_seconds == pytest.approx(41.5)
    assert [(t, type(a).__name__) for t, a in report.actions][-2:] == [(11.5, "StopContainer"), (41.5, "ReleaseNode")]
    # Without draining the run stops with the last call, holding the node until then.
    undrained = simulate([fn], calls("f", 0), nodes)
    assert undrained.end_s == pytest.approx(1.5)
    assert undrained.node_seconds == pytest.approx(1.5)


def test_min_nodes_are_held_to_the_end() -> None:
    nodes = SimulatedNodes(max_nodes=2, min_nodes=1, release_after=5.0)
    report = simulate([SimFunction("f", idle_timeout=1.0)], calls("f", 0), nodes, drain=True)
    assert report.end_s == pytest.approx(2.5)  # c-1 stopped; n-1 is kept
    assert report.node_seconds == pytest.approx(2.5)


def test_idle_memory_is_memory_times_idle_time() -> None:
    fn = SimFunction("f", memory_mb=256, idle_timeout=10.0)
    # c-1 up at 0.5 and busy at once; busy to 1.5; idle 1.5-5; busy 5-7; idle 7-17, then stopped.
    trace = [Invocation(0, "f", 1), Invocation(5, "f", 2)]
    assert simulate([fn], trace, drain=True).idle_memory_mb_s == pytest.approx(256 * (3.5 + 10))
    assert simulate([fn], trace).idle_memory_mb_s == pytest.approx(256 * 3.5)  # ends at 7


def test_lru_idle_container_is_evicted_under_memory_pressure() -> None:
    nodes = SimulatedNodes(max_nodes=1, node_memory_mb=1000)
    fns = [SimFunction(name, memory_mb=400, idle_timeout=1000.0) for name in "abc"]
    # c-1 (a) last used at 21, c-2 (b) at 11.5: c arriving at 30 needs 400 MB of 200 free.
    trace = calls("a", 0) + calls("b", 10) + calls("a", 20) + calls("c", 30) + calls("b", 40)
    report = simulate(fns, trace, nodes, record=True)
    stops = [(t, a) for t, a in report.actions if isinstance(a, StopContainer)]
    assert stops == [
        (30.0, StopContainer(container_id="c-2", reason="evicted")),
        (40.0, StopContainer(container_id="c-1", reason="evicted")),
    ]
    assert report.cold_starts_by_function == {"a": 1, "b": 2, "c": 1}
    assert report.warm_starts == 1
    assert report.peak_nodes == 1


def test_a_full_queue_throttles() -> None:
    report = simulate([SimFunction("f")], calls("f", 0, 0, 0), queue_limit=1)
    assert report.failed == {"throttled": 2}
    assert report.waits_s == (0.5, None, None)


def test_pinned_containers_start_with_the_run() -> None:
    report = simulate([SimFunction("f", min_containers=1, idle_timeout=1.0)], calls("f", 5), drain=True)
    assert (report.cold_starts, report.warm_starts, report.containers_started) == (0, 1, 1)
    assert report.waits_s == (0.0,)
    assert report.containers_stopped == {}


def test_same_inputs_same_report() -> None:
    rng = random.Random(7)
    fns = [SimFunction(f"f{i}", memory_mb=rng.choice([128, 256, 512]), concurrency=rng.choice([1, 2]), idle_timeout=20.0) for i in range(4)]
    trace = [Invocation(rng.uniform(0, 300), f"f{rng.randrange(4)}", rng.uniform(0.01, 5)) for _ in range(300)]
    nodes = SimulatedNodes(max_nodes=3, node_memory_mb=1024, acquire_delay=2.0, release_after=15.0)
    first = simulate(fns, trace, nodes, drain=True, record=True)
    assert first == simulate(fns, trace, nodes, drain=True, record=True)
    assert first.cold_starts + first.warm_starts + sum(first.failed.values()) == 300
    assert first.node_seconds > 0 and first.idle_memory_mb_s > 0


def test_drain_ends_when_next_wake_and_tick_round_differently() -> None:
    # ResourceManager.next_wake() says empty_since + release_after, expire() tests
    # now - empty_since >= release_after: for these floats the first is not enough.
    empty_since, release_after = 847.0735982490797, 71.76737549068199
    assert (empty_since + release_after) - empty_since < release_after
    fn = SimFunction("f", idle_timeout=0.0, cold_start_s=0.0)
    nodes = SimulatedNodes(release_after=release_after)
    report = simulate([fn], [Invocation(empty_since, "f", 0.0)], nodes, drain=True)
    assert report.node_seconds == pytest.approx(release_after)
    assert report.end_s == pytest.approx(empty_since + release_after)


def test_profile_and_validation() -> None:
    fn = SimFunction("f", memory_mb=300, concurrency=2, max_containers=3, idle_timeout=5.0)
    assert fn.profile() == FunctionProfile(name="f", memory_mb=300, concurrency=2, max_containers=3, idle_timeout=5.0)
    assert SimulatedNodes(max_nodes=2).resource_manager().max_nodes == 2
    for bad, field in [
        (lambda: SimulatedNodes(max_nodes=0), "max_nodes"),
        (lambda: SimulatedNodes(min_nodes=2), "min_nodes"),
        (lambda: SimulatedNodes(acquire_delay=-1), "acquire_delay"),
        (lambda: SimFunction("f", memory_mb=0), "memory_mb"),
        (lambda: SimFunction("f", cold_start_s=-0.1), "cold_start_s"),
        (lambda: Invocation(-1, "f", 1), "time_s"),
        (lambda: simulate([SimFunction("f")], calls("g", 0)), "function"),
        (lambda: simulate([SimFunction("f", memory_mb=5000)], []), "memory_mb"),
    ]:
        with pytest.raises(ValueError, match=field):
            bad()
