"""Cold start to first result, and a raw fork-and-pipe floor.

microfaas: a function with ``idle_timeout=0`` so that every call is a cold start;
the clock runs from ``invoke`` to its result, after the previous container exited.
``fork`` forks the node's zygote; ``spawn`` starts a fresh interpreter.

The floor: ``os.fork`` a child that writes one byte to a pipe, timed from just
before the fork to the byte read in the parent. It runs in a helper interpreter
(not this asyncio process with its threads and large heap) that first imports
what a microfaas zygote imports (microfaas, cloudpickle, the benchmark module),
so the forked address space is comparable to a zygote's.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import anyio

import microfaas as mf

from .common import pct
from .peers import noop

RAW_FORK = r"""
import gc, json, os, sys, time
import cloudpickle, microfaas, microfaas.worker, benchmarks.peers
gc.collect(); gc.freeze()
n = int(sys.argv[1])
samples = []
for _ in range(n + 5):
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"x")
        os._exit(0)
    os.read(r, 1)
    samples.append(time.perf_counter() - t0)
    os.close(r); os.close(w)
    os.waitpid(pid, 0)
print(json.dumps(samples[5:]))
"""


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"p50_ms": statistics.median(samples) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3, "min_ms": min(samples) * 1e3, "n": len(samples)}


async def _raw_fork_samples(n: int) -> list[float]:
    done = await anyio.run_process([sys.executable, "-c", RAW_FORK, str(n)], check=True)
    return list(json.loads(done.stdout))


async def measure(start_method: str, n: int, rounds: int = 1, with_floor: bool = False) -> dict[str, dict[str, Any]]:
    """p50 cold start of microfaas with ``start_method``; with ``with_floor``, the raw fork floor interleaved per round."""
    cold_app = mf.App(f"cold_{start_method}")
    fn = cold_app.function(noop, name="noop", idle_timeout=0.0)
    samples: list[float] = []
    floor: list[float] = []
    per_round = max(1, n // rounds)
    async with cold_app.run(nodes=mf.LocalNodes(start_method=start_method)) as faas:
        for _ in range(rounds):
            for _ in range(per_round):
                with anyio.fail_after(30):
                    while faas.containers("noop"):  # noqa: ASYNC110 - wait until the last container was released
                        await anyio.sleep(0.001)
                t0 = time.perf_counter()
                await fn.invoke(None)
                samples.append(time.perf_counter() - t0)
            if with_floor:
                floor += await _raw_fork_samples(per_round)
        assert faas.stats("noop").cold_starts == len(samples)
    out = {f"microfaas_{start_method}": _summary(samples)}
    if with_floor:
        out["raw_fork_pipe"] = _summary(floor)
    return out
