"""Throughput: N concurrent no-op calls on 2 workers/containers, in calls per second.

Every contender gets the calls at once, all awaited with one ``asyncio.gather``
(N ``invoke`` coroutines for microfaas, N ``run_in_executor`` futures for the
executors, N ``apply_async`` futures for ``multiprocessing.Pool``, N ``run_sync``
coroutines behind a ``CapacityLimiter(2)`` for anyio, N actor calls round-robin over
2 Ray actors) and the clock stops when all are back. (An anyio task group costs
~25 us per task on this machine, more than a whole call, so it is not used for
anyone.)
Rounds are interleaved across contenders; the figure is the median round.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .common import Contender


async def measure(contenders: Sequence[Contender], n: int, rounds: int) -> dict[str, dict[str, Any]]:
    seconds: dict[str, list[float]] = {c.name: [] for c in contenders}
    for c in contenders:
        await c.many(min(n, 200))  # warm-up
    for _ in range(rounds):
        for c in contenders:
            gc.collect()
            t0 = time.perf_counter()
            await c.many(n)
            seconds[c.name].append(time.perf_counter() - t0)
    out = {}
    for name, s in seconds.items():
        med = statistics.median(s)
        out[name] = {"calls_per_s": n / med, "seconds": med, "n": n, "rounds": len(s), "best_calls_per_s": n / min(s)}
    return out
