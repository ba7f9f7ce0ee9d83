"""Decisions per second of the sans-I/O scheduler core, with no event loop and no processes.

    python -m benchmarks.core_decisions [--quick] [--profile]

A "decision" is one fact fed to the core: ``request``, ``container_started``,
``call_finished``, ``tick``, ``container_exited`` (and the rare ``node_acquired``).

How this works. A small discrete-event simulation in virtual time drives a
``Scheduler`` over one large node (``ResourceManager(node_memory_mb=1_000_000,
max_nodes=1, min_nodes=0)``) with 20 functions of Zipf-distributed popularity:
Poisson arrivals with a short burst every minute, exponential call durations, a
cold start that takes 0.25 s, a tick every virtual second, and every action
answered as a shell would (``StartContainer`` -> ``container_started`` later,
``RunOn`` -> ``call_finished`` later, ``StopContainer`` -> ``container_exited``,
``AcquireNode`` -> ``node_acquired``). Warm reuse, cold starts, bursts and idle
expiry all occur (the figures report how often).

That pass records the facts in order. The timed part replays them into a fresh
scheduler, so the figure is the core's cost alone, not the simulation's; the
core is deterministic, so a replay gets exactly the facts it would have got in
the closed loop (checked once by comparing the actions it returns). Best of 3.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import heapq
import json
import pstats
import random
import time
from collections.abc import Callable
from typing import Any

from microfaas.keepalive import FixedKeepAlive
from microfaas.resources import AcquireNode, ReleaseNode, ResourceManager
from microfaas.scheduler import FailRequest, FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer

N_FUNCTIONS = 20
BASE_RATE = 40.0  # requests per virtual second
BURST_RATE = 400.0  # during the first BURST_S of every BURST_EVERY_S
BURST_EVERY_S = 60.0
BURST_S = 2.0
COLD_START_S = 0.25
EXIT_S = 0.01
ACQUIRE_S = 0.5
TICK_S = 1.0

# Fact kinds: index into the list of bound methods made by _calls().
REQUEST, STARTED, FINISHED, TICK, EXITED, NODE_ACQUIRED = range(6)
KIND_NAMES = ("request", "container_started", "call_finished", "tick", "container_exited", "node_acquired")

Fact = tuple[int, tuple[str, ...], float]


def profiles() -> list[FunctionProfile]:
    """20 functions: a few with concurrency > 1, one pinned, half on the policy's keep-alive."""
    out = []
    for i in range(N_FUNCTIONS):
        out.append(
            FunctionProfile(
                name=f"f{i:02d}",
                memory_mb=128 * (1 + i % 4),
                concurrency=4 if i % 5 == 0 else 1,
                min_containers=1 if i == 0 else 0,
                # Odd functions set their own (short) idle timeout; even ones use FixedKeepAlive(600).
                idle_timeout=float(2 + i) if i % 2 else None,
            )
        )
    return out


def new_scheduler() -> Scheduler:
    sched = Scheduler(ResourceManager(node_memory_mb=1_000_000, max_nodes=1, min_nodes=0), keep_alive=FixedKeepAlive(600))
    for profile in profiles():
        sched.add_function(profile)
    return sched


def _calls(sched: Scheduler) -> list[Callable[..., list[Any]]]:
    return [sched.request, sched.container_started, sched.call_finished, sched.tick, sched.container_exited, sched.node_acquired]


def record(n_facts: int, seed: int = 1) -> tuple[list[Fact], dict[str, int]]:
    """Run the closed loop until ``n_facts`` facts were fed; return them and what happened."""
    rng = random.Random(seed)
    names = [p.name for p in profiles()]
    weights = [1.0 / (i + 1) for i in range(N_FUNCTIONS)]  # Zipf: f00 is the most popular
    mean_duration = {name: 0.02 * (1 + i % 5) for i, name in enumerate(names)}
    sched = new_scheduler()
    calls = _calls(sched)
    facts: list[Fact] = []
    stats: collections.Counter[str] = collections.Counter()
    container_function: dict[str, str] = {}
    events: list[tuple[float, int, int, tuple[str, ...]]] = []  # (time, seq, kind, args)
    seq = 0

    def later(at: float, kind: int, args: tuple[str, ...]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, args))

    def handle(actions: list[Any], now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is RunOn:
                stats["run_cold" if action.cold_start else "run_warm"] += 1
                duration = rng.expovariate(1.0 / mean_duration[container_function[action.container_id]])
                later(now + duration, FINISHED, (action.container_id,))
            elif kind is StartContainer:
                stats["start_container"] += 1
                container_function[action.container_id] = action.function
                later(now + COLD_START_S, STARTED, (action.container_id,))
            elif kind is StopContainer:
                stats[f"stop_{action.reason}"] += 1
                later(now + EXIT_S, EXITED, (action.container_id,))
            elif kind is AcquireNode:
                stats["acquire_node"] += 1
                later(now + ACQUIRE_S, NODE_ACQUIRED, (action.node_id,))
            elif kind is ReleaseNode:
                stats["release_node"] += 1
            elif kind is FailRequest:
                stats[f"fail_{action.reason}"] += 1

    handle(sched.start(now=0.0), 0.0)
    later(0.0, TICK, ())
    later(rng.expovariate(BASE_RATE), REQUEST, ())
    n_requests = 0
    while len(facts) < n_facts:
        now, _, kind, args = heapq.heappop(events)
        if kind == REQUEST:
            n_requests += 1
            args = (f"r-{n_requests}", rng.choices(names, weights)[0])
            rate = BURST_RATE if now % BURST_EVERY_S < BURST_S else BASE_RATE
            later(now + rng.expovariate(rate), REQUEST, ())
        elif kind == TICK:
            later(now + TICK_S, TICK, ())
        facts.append((kind, args, now))
        handle(calls[kind](*args, now=now), now)
    for kind, *_ in facts:
        stats[f"fact_{KIND_NAMES[kind]}"] += 1
    stats["virtual_seconds"] = int(facts[-1][2])
    return facts, dict(stats)


def replay(facts: list[Fact]) -> float:
    """Feed ``facts`` to a fresh scheduler; return the seconds it took."""
    sched = new_scheduler()
    sched.start(now=0.0)
    calls = _calls(sched)
    t0 = time.perf_counter()
    for kind, args, now in facts:
        calls[kind](*args, now=now)
    return time.perf_counter() - t0


def _replay_actions(facts: list[Fact]) -> list[Any]:
    sched = new_scheduler()
    actions = sched.start(now=0.0)
    calls = _calls(sched)
    for kind, args, now in facts:
        actions += calls[kind](*args, now=now)
    return actions


def _check_replay(facts: list[Fact], stats: dict[str, int]) -> None:
    """The replay must get the same answers the closed loop got."""
    got: collections.Counter[str] = collections.Counter()
    for action in _replay_actions(facts):
        kind = type(action)
        if kind is RunOn:
            got["run_cold" if action.cold_start else "run_warm"] += 1
        elif kind is StartContainer:
            got["start_container"] += 1
        elif kind is StopContainer:
            got[f"stop_{action.reason}"] += 1
    for key in ("run_cold", "run_warm", "start_container", "stop_idle", "stop_evicted"):
        assert got[key] == stats.get(key, 0), f"replay diverged on {key}: {got[key]} != {stats.get(key, 0)}"


def measure(quick: bool) -> dict[str, Any]:
    """Decisions per second of the scheduler core (best of 3 replays)."""
    facts, stats = record(200_000 if quick else 1_000_000)
    _check_replay(facts, stats)
    assert stats.get("run_warm") and stats.get("run_cold") and stats.get("stop_idle"), stats
    seconds = min(replay(facts) for _ in range(3))
    return {"decisions": len(facts), "seconds": seconds, "decisions_per_s": len(facts) / seconds, "mix": stats}


def profile(quick: bool, top: int = 20) -> None:
    facts, _ = record(200_000 if quick else 1_000_000)
    profiler = cProfile.Profile()
    profiler.runcall(replay, facts)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_decisions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~200k facts instead of ~1M")
    parser.add_argument("--profile", action="store_true", help="profile one replay with cProfile instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.quick)
    else:
        print(json.dumps(measure(args.quick), indent=2))


if __name__ == "__main__":
    cli()
