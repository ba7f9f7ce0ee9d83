"""Keep-alive policies on hand-made idle-time sequences, and the eviction hook."""

from __future__ import annotations

import math

import pytest

from microfaas.actions import ContainerRecord
from microfaas.keepalive import AdaptiveKeepAlive, GreedyDualKeepAlive, HistogramKeepAlive
from microfaas.resources import ResourceManager
from microfaas.scheduler import FunctionProfile, Scheduler, StopContainer


def test_histogram_percentiles_give_prewarm_and_keep_alive_windows() -> None:
    policy = HistogramKeepAlive()
    for _ in range(100):
        policy.record_idle_time("f", 30 * 60 + 10)  # every idle time in the 31st minute bin
    prewarm, keep = policy.windows("f")
    assert prewarm == pytest.approx(30 * 60 * 0.9)  # head bin's lower edge, minus 10%
    assert keep == pytest.approx(31 * 60 * 1.1 - prewarm)  # tail bin's upper edge, plus 10%
    # Unloaded at once after a call; a container is pre-warmed after the pre-warm window.
    assert policy.ttl_for("f", now=0.0) == 0.0
    assert policy.prewarm_delay("f", now=0.0) == pytest.approx(prewarm)
    # The pre-warmed container comes up: kept for the keep-alive window.
    assert policy.ttl_for("f", now=prewarm + 1.0) == pytest.approx(keep)
    assert policy.prewarm_delay("f", now=prewarm + 1.0) is None


def test_histogram_head_in_first_bin_keeps_alive_without_prewarm() -> None:
    policy = HistogramKeepAlive()
    for idle in [5.0] * 90 + [200.0] * 10:
        policy.record_idle_time("f", idle)
    prewarm, keep = policy.windows("f")
    assert prewarm == 0.0
    assert keep == pytest.approx(4 * 60 * 1.1)  # the 99th percentile is in the 4th bin
    assert policy.ttl_for("f", now=0.0) == pytest.approx(keep)
    assert policy.prewarm_delay("f", now=0.0) is None


def test_histogram_not_representative_falls_back_to_standard_keep_alive() -> None:
    policy = HistogramKeepAlive()
    assert policy.windows("new") == (0.0, 4 * 3600.0)  # no idle time yet
    for minute in range(240):  # flat histogram: CV = 0 < 2
        policy.record_idle_time("flat", minute * 60 + 1)
    assert policy.cv("flat") == pytest.approx(0.0)
    assert policy.windows("flat") == (0.0, 4 * 3600.0)


def test_histogram_too_many_out_of_range_idle_times_predicts_the_next() -> None:
    policy = HistogramKeepAlive()
    policy.record_idle_time("f", 60.0)
    for _ in range(3):
        policy.record_idle_time("f", 6 * 3600.0)  # beyond the 4 h range
    prewarm, keep = policy.windows("f")
    assert (prewarm, keep) == (pytest.approx(0.85 * 6 * 3600), pytest.approx(0.30 * 6 * 3600))


def test_histogram_learns_idle_times_from_call_ends_and_arrivals() -> None:
    policy = HistogramKeepAlive()
    policy.observe_arrival("f", now=0.0)
    policy.ttl_for("f", now=5.0)  # call ended at 5
    policy.observe_arrival("f", now=605.0)  # idle 600 s -> bin 10
    assert policy._state("f").bins[10] == 1
    policy.observe_arrival("f", now=606.0)  # arrived while a call runs: idle time 0
    assert policy._state("f").bins[0] == 1


def test_histogram_groups_functions_of_one_app() -> None:
    policy = HistogramKeepAlive(app_of={"a": "app", "b": "app"})
    policy.record_idle_time("a", 10.0)
    policy.record_idle_time("b", 10.0)
    assert policy._state("a") is policy._state("b")
    assert policy._state("a").in_range == 2


def test_histogram_validates() -> None:
    with pytest.raises(ValueError, match="head"):
        HistogramKeepAlive(head=0.99, tail=0.05)


def record(cid: str, function: str, memory_mb: int, last_used: float) -> ContainerRecord:
    return ContainerRecord(id=cid, function=function, node_id="n-1", memory_mb=memory_mb, concurrency=1, pinned=False, last_used=last_used)


def test_greedy_dual_priority_is_clock_plus_frequency_times_cost_over_size() -> None:
    policy = GreedyDualKeepAlive(cost={"big": 2.0, "small": 2.0})
    for _ in range(4):
        policy.observe_arrival("small", now=0.0)
    policy.observe_arrival("big", now=0.0)
    assert policy.ttl_for("big", now=1.0) == math.inf
    big, small = record("c-1", "big", 1000, 1.0), record("c-2", "small", 100, 0.0)
    assert policy.eviction_priority(big, now=2.0) == pytest.approx(1 * 2.0 / 1000)
    assert policy.eviction_priority(small, now=2.0) == pytest.approx(4 * 2.0 / 100)
    policy.evicted(big, remaining=0, now=2.0)
    assert policy.clock == pytest.approx(0.002)
    assert policy.frequency["big"] == 0  # reset with its last container
    policy.ttl_for("small", now=3.0)  # used again: stamped with the new clock
    assert policy.eviction_priority(small, now=3.0) == pytest.approx(0.002 + 0.08)


def test_scheduler_evicts_by_the_policy_priority_instead_of_lru() -> None:
    policy = GreedyDualKeepAlive()
    sched = Scheduler(ResourceManager(node_memory_mb=1000, max_nodes=1), keep_alive=policy)
    for name, memory in (("hot", 400), ("cold", 400), ("new", 400)):
        sched.add_function(FunctionProfile(name=name, memory_mb=memory, idle_timeout=None))
    sched.start(now=0.0)
    sched.node_acquired(sched.request("r1", "hot", now=0.0)[0].node_id, now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.call_finished("c-1", now=1.0)
    for i in range(5):  # hot is used often, but less recently than cold
        sched.request(f"h{i}", "hot", now=2.0 + i)
        sched.call_finished("c-1", now=2.5 + i)
    sched.request("r2", "cold", now=10.0)
    sched.container_started("c-2", now=10.0)
    sched.call_finished("c-2", now=11.0)
    actions = sched.request("r3", "new", now=12.0)
    assert actions[0] == StopContainer(container_id="c-2", reason="evicted")  # LRU would stop c-1


def test_adaptive_learns_a_short_keep_alive_for_a_hot_function() -> None:
    policy = AdaptiveKeepAlive()
    policy.function_added("f", memory_mb=1024)
    now = 0.0
    for _ in range(50):
        policy.observe_arrival("f", now=now)
        policy.ttl_for("f", now=now + 1.0)
        now += 5.0
    ttl = policy.ttl_for("f", now=now)
    assert 4.0 <= ttl <= 10.0  # just past the 4 s reuse time
    assert policy.prewarm_delay("f", now=now) is None


def test_adaptive_prewarms_a_periodic_function() -> None:
    policy = AdaptiveKeepAlive()
    policy.function_added("timer", memory_mb=1024)
    now = 0.0
    for _ in range(20):
        policy.observe_arrival("timer", now=now)
        policy.ttl_for("timer", now=now + 2.0)
        now += 1800.0
    policy.observe_arrival("timer", now=now)
    assert policy.ttl_for("timer", now=now + 2.0) == 0.0  # unloaded at once
    delay = policy.prewarm_delay("timer", now=now + 2.0)
    assert delay is not None and 1600 < delay < 1798
    keep = policy.ttl_for("timer", now=now + 2.0 + delay + 1.0)  # the pre-warmed container
    assert delay + 1.0 + keep >= 1798.0


def test_adaptive_lets_a_never_reused_container_go() -> None:
    policy = AdaptiveKeepAlive(horizon_s=100.0, min_samples=2)
    policy.function_added("f", memory_mb=1024)
    for k in range(4):
        policy.ttl_for("f", now=1000.0 * k)
        policy.observe_arrival("f", now=1000.0 * k + 500.0)  # idle 500 s > horizon: inf
    assert policy.ttl_for("f", now=5000.0) == 0.0
