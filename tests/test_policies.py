"""Keep-alive policies on hand-made idle-time sequences, and the eviction hook."""

from __future__ import annotations

import math

import pytest

from microfaas.actions import ContainerRecord
from microfaas.keepalive import (
    AdaptiveKeepAlive,
    GreedyDualKeepAlive,
    HistogramKeepAlive,
    KeepAliveDecision,
    KeepAlivePolicy,
    default_cold_start_s,
)
from microfaas.resources import ResourceManager
from microfaas.scheduler import FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer


def test_histogram_percentiles_give_prewarm_and_keep_alive_windows() -> None:
    policy = HistogramKeepAlive()
    for _ in range(100):
        policy.record_idle_time("f", 30 * 60 + 10)  # every idle time in the 31st minute bin
    prewarm, keep = policy.windows("f")
    assert prewarm == pytest.approx(30 * 60 * 0.9)  # head bin's lower edge, minus 10%
    assert keep == pytest.approx(31 * 60 * 1.1 - prewarm)  # tail bin's upper edge, plus 10%
    # Unloaded at once after a call; a container is pre-warmed after the pre-warm window.
    decision = policy.went_idle("f", now=0.0)
    assert (decision.ttl, decision.prewarm) == (0.0, pytest.approx(prewarm))
    # The pre-warmed container comes up: kept for the keep-alive window.
    decision = policy.went_idle("f", now=prewarm + 1.0)
    assert (decision.ttl, decision.prewarm) == (pytest.approx(keep), None)


def test_histogram_head_in_first_bin_keeps_alive_without_prewarm() -> None:
    policy = HistogramKeepAlive()
    for idle in [5.0] * 90 + [200.0] * 10:
        policy.record_idle_time("f", idle)
    prewarm, keep = policy.windows("f")
    assert prewarm == 0.0
    assert keep == pytest.approx(4 * 60 * 1.1)  # the 99th percentile is in the 4th bin
    decision = policy.went_idle("f", now=0.0)
    assert (decision.ttl, decision.prewarm) == (pytest.approx(keep), None)


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
    policy.went_idle("f", now=5.0)  # call ended at 5
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
    assert policy.went_idle("big", now=1.0) == KeepAliveDecision(ttl=math.inf)
    big, small = record("c-1", "big", 1000, 1.0), record("c-2", "small", 100, 0.0)
    assert policy.eviction_priority(big, now=2.0) == pytest.approx(1 * 2.0 / 1000)
    assert policy.eviction_priority(small, now=2.0) == pytest.approx(4 * 2.0 / 100)
    policy.evicted(big, remaining=0, now=2.0)
    assert policy.clock == pytest.approx(0.002)
    assert policy.frequency["big"] == 0  # reset with its last container
    policy.went_idle("small", now=3.0)  # used again: stamped with the new clock
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
        policy.went_idle("f", now=now + 1.0)
        now += 5.0
    decision = policy.went_idle("f", now=now)
    # Every reuse time is 4 s (idle from 1 s after a call to the next call): kept just past it, by the 5% margin.
    assert decision.ttl == pytest.approx(4.0 * (1 + policy.margin))
    assert decision.prewarm is None


def test_adaptive_prewarms_a_periodic_function() -> None:
    policy = AdaptiveKeepAlive()
    policy.function_added("timer", memory_mb=1024)
    now = 0.0
    for _ in range(20):
        policy.observe_arrival("timer", now=now)
        policy.went_idle("timer", now=now + 2.0)
        now += 1800.0
    policy.observe_arrival("timer", now=now)
    decision = policy.went_idle("timer", now=now + 2.0)
    assert decision.ttl == 0.0  # unloaded at once
    delay = decision.prewarm
    assert delay is not None
    # Every reuse time is 1798 s: pre-warmed the 5% margin and a cold start before it, ...
    cold = default_cold_start_s(1024)
    assert delay == pytest.approx(1798.0 * (1 - policy.margin) - cold)
    # ... and, once up, kept until the margin past it.
    keep = policy.went_idle("timer", now=now + 2.0 + delay + cold).ttl  # the pre-warmed container
    assert delay + cold + keep == pytest.approx(1798.0 * (1 + policy.margin))


def test_adaptive_lets_a_never_reused_container_go() -> None:
    policy = AdaptiveKeepAlive(horizon_s=100.0, min_samples=2)
    policy.function_added("f", memory_mb=1024)
    for k in range(4):
        policy.went_idle("f", now=1000.0 * k)
        policy.observe_arrival("f", now=1000.0 * k + 500.0)  # idle 500 s > horizon: inf
    assert policy.went_idle("f", now=5000.0).ttl == 0.0


# -- spares: containers standing by when a function's pool runs dry ---------------------------------


class StandBy(KeepAlivePolicy):
    """Keep 10 minutes; ask for ``n`` spares whenever the pool runs dry."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[tuple[str, bool]] = []

    def ttl_for(self, function: str, *, now: float) -> float:
        return 600.0

    def spares(self, function: str, *, cold: bool, now: float) -> int:
        self.asked.append((function, cold))
        return self.n

    def spare_ttl(self, function: str, *, now: float) -> float:
        return 30.0


def spare_scheduler(policy: KeepAlivePolicy, *, node_memory_mb: int = 10_000, idle_timeout: float | None = None) -> Scheduler:
    sched = Scheduler(ResourceManager(node_memory_mb=node_memory_mb, max_nodes=1, min_nodes=1), keep_alive=policy)
    sched.add_function(FunctionProfile(name="f", memory_mb=1000, idle_timeout=idle_timeout))
    [acquire] = sched.start(now=0.0)
    sched.node_acquired(acquire.node_id, now=0.0)
    return sched


def test_a_cold_request_starts_its_container_and_the_spares_the_policy_asks_for() -> None:
    policy = StandBy(2)
    sched = spare_scheduler(policy)
    starts = sched.request("r1", "f", now=0.0)
    assert [s.container_id for s in starts] == ["c-1", "c-2", "c-3"]  # r1's container, then two spares
    assert policy.asked == [("f", True)]
    assert sched.container_started("c-1", now=1.0) == [RunOn(request_id="r1", container_id="c-1", cold_start=True)]
    for cid in ("c-2", "c-3"):
        assert sched.container_started(cid, now=1.0) == []  # nothing waits: the spares go idle
    # The next call takes a spare warm; one idle container is left, so no new spare is asked for.
    assert sched.request("r2", "f", now=2.0) == [RunOn(request_id="r2", container_id="c-3", cold_start=False)]
    assert len(policy.asked) == 1
    # An unused spare is kept for spare_ttl, not ttl_for: c-2 stops at 1 + 30.
    assert sched.tick(now=30.9) == []
    assert sched.tick(now=31.0) == [StopContainer(container_id="c-2", reason="idle")]


def test_spares_count_containers_already_starting() -> None:
    sched = spare_scheduler(StandBy(1))
    sched.request("r1", "f", now=0.0)  # c-1 for r1, c-2 spare
    # r2 finds no free container; it waits for the starting spare c-2, and one more spare starts.
    actions = sched.request("r2", "f", now=0.1)
    assert [a.container_id for a in actions if isinstance(a, StartContainer)] == ["c-3"]


def test_spares_never_evict_and_are_not_asked_for_with_an_idle_timeout() -> None:
    policy = StandBy(3)
    sched = spare_scheduler(policy, node_memory_mb=2000)
    sched.add_function(FunctionProfile(name="g", memory_mb=1000, idle_timeout=600.0))
    sched.request("g1", "g", now=0.0)
    sched.container_started("c-1", now=0.0)
    sched.call_finished("c-1", now=0.5)  # g's container idles on the node, which has room for one more
    actions = sched.request("r1", "f", now=1.0)
    assert actions == [StartContainer(container_id="c-2", function="f", node_id="n-1", pinned=False)]  # no spare, no eviction
    fixed = StandBy(3)
    sched = spare_scheduler(fixed, idle_timeout=60.0)
    assert len(sched.request("r1", "f", now=0.0)) == 1  # r1's container only
    assert fixed.asked == []


def test_adaptive_keeps_a_container_the_break_even_time_before_it_has_reuse_times() -> None:
    policy = AdaptiveKeepAlive(value_s=100.0, app_value_s=1000.0, spares=False)
    policy.function_added("f", memory_mb=2048)
    policy.observe_arrival("f", now=0.0)
    # One call of its app so far: a warm start is worth (100 + 1000/1) s of 1 GB = 550 s of 2 GB.
    assert policy.value("f", 2048) == pytest.approx(550.0)
    decision = policy.went_idle("f", now=1.0)
    assert (decision.ttl, decision.prewarm) == (pytest.approx(550.0), None)
    for k in range(9):
        policy.observe_arrival("g", now=float(k))
    assert policy.value("g", 1024) == pytest.approx(100.0 + 1000.0 / 9)  # a busier app's call is worth less
    assert AdaptiveKeepAlive(horizon_s=300.0).went_idle("f", now=0.0).ttl == 300.0  # at most the horizon


def test_adaptive_counts_calls_per_app_over_the_last_day() -> None:
    policy = AdaptiveKeepAlive(value_s=0.0, app_value_s=1000.0, app_of={"a": "app", "b": "app"})
    policy.observe_arrival("a", now=0.0)
    policy.observe_arrival("b", now=10.0)
    assert policy.value("a", 1024) == pytest.approx(500.0)
    policy.observe_arrival("b", now=86_405.0)  # the call at 0 is more than a day old
    assert policy.value("a", 1024) == pytest.approx(500.0)


def test_adaptive_asks_for_spares_at_the_burst_rate() -> None:
    policy = AdaptiveKeepAlive()
    policy.function_added("f", memory_mb=1024)  # cold start 1 s
    policy.observe_arrival("f", now=0.0)
    assert policy.spares("f", cold=True, now=0.0) == 1  # no rate yet: one spare
    for k in range(1, 8):
        policy.observe_arrival("f", now=0.25 * k)
    # 4 calls a second, 1 s cold start: m = 4 calls expected per start, ceil(4 + 2) spares.
    assert policy.spares("f", cold=False, now=1.75) == 6
    assert policy.spares("f", cold=False, now=100.0) == 0  # no call waited for a start lately
    assert AdaptiveKeepAlive(spares=False).spares("f", cold=True, now=0.0) == 0
    assert policy.spare_ttl("f", now=0.0) == policy.burst_window_s


def test_adaptive_does_not_prewarm_seconds_after_unloading() -> None:
    # Reuse times: a few of 5 s, most of 10 minutes. Unloading and starting a new container
    # 3 s later would save 3 s of memory per call for a cold start's work; not done.
    def decide(policy: AdaptiveKeepAlive) -> tuple[float, float]:
        policy.function_added("f", memory_mb=1024)
        now = 0.0
        for gap in [5.0] * 8 + [600.0] * 24:
            policy.went_idle("f", now=now)
            now += gap
            policy.observe_arrival("f", now=now)
        return policy.decide("f", 1024)

    early = decide(AdaptiveKeepAlive(min_prewarm_s=0.0, app_value_s=0.0))
    assert 0 < early[0] < 60  # what min_prewarm_s prevents
    prewarm, _ = decide(AdaptiveKeepAlive(app_value_s=0.0))
    assert prewarm == 0.0 or prewarm >= 60.0
