"""mf.Executor against the process-pool executors, used the way blocking code uses them.

    python -m benchmarks.executor [--quick] [--json PATH]     # this figure alone

Contenders, each with 2 workers, all running ``peers.noop``:
``mf.Executor``, ``concurrent.futures.ProcessPoolExecutor``, loky's
``ProcessPoolExecutor`` and pebble's ``ProcessPool`` (pebble's ``schedule`` and
``map``; it has no ``Executor.submit``). Figures, contenders interleaved per round:

- submit -> result p50/p99 of one no-op from the calling thread, one call at a time;
- 10,000 no-op tasks through ``map`` with chunksize 1 and with chunksize 64, in
  tasks per second (the median round; five times the rounds for chunksize 64,
  whose rounds last a few milliseconds), every result read back in order.

ProcessPoolExecutor and pebble fork their workers: they are started first, while
this process has no other threads of its own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any, Protocol

from .common import log, pct
from .peers import WORKERS, noop

MAP_TASKS = 10_000
CHUNKSIZES = (1, 64)


class Pool(Protocol):
    name: str

    def call(self) -> object: ...
    def map(self, n: int, chunksize: int) -> Iterator[object]: ...
    def close(self) -> None: ...


class _StdExecutor:
    executor: concurrent.futures.Executor

    def call(self) -> object:
        return self.executor.submit(noop, None).result()

    def map(self, n: int, chunksize: int) -> Iterator[object]:
        return self.executor.map(noop, range(n), chunksize=chunksize)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class MicrofaasExecutor(_StdExecutor):
    name = "microfaas"

    def __init__(self) -> None:
        import microfaas as mf

        self.executor = mf.Executor(max_workers=WORKERS)


class ProcessPool(_StdExecutor):
    name = "process_pool_executor"

    def __init__(self) -> None:
        self.executor = concurrent.futures.ProcessPoolExecutor(max_workers=WORKERS)


class Loky(_StdExecutor):
    name = "loky"

    def __init__(self) -> None:
        import loky

        self.executor = loky.ProcessPoolExecutor(max_workers=WORKERS)


class Pebble:
    name = "pebble"

    def __init__(self) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=WORKERS)

    def call(self) -> object:
        return self.pool.schedule(noop, args=(None,)).result()

    def map(self, n: int, chunksize: int) -> Iterator[object]:
        return self.pool.map(noop, range(n), chunksize=chunksize).result()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def start_pools() -> list[Pool]:
    """Every contender, the forking ones first; warmed up (all workers started)."""
    pools: list[Pool] = []
    for kind in (ProcessPool, Pebble, Loky, MicrofaasExecutor):
        pool = kind()
        for _ in pool.map(WORKERS * 50, 1):  # each forks its workers before the next starts threads
            pass
        pools.append(pool)
    return pools


def measure(rounds: int, calls_per_round: int, map_rounds: int) -> dict[str, dict[str, Any]]:
    """The figures, as ``{"executor_submit_result": {name: ...}, "executor_map_1": ..., "executor_map_64": ...}``."""
    pools = start_pools()
    try:
        samples: dict[str, list[float]] = {p.name: [] for p in pools}
        for _ in range(rounds):
            for pool in pools:
                gc.collect()
                for _ in range(calls_per_round):
                    t0 = time.perf_counter()
                    pool.call()
                    samples[pool.name].append(time.perf_counter() - t0)
        out: dict[str, dict[str, Any]] = {
            "executor_submit_result": {
                name: {"p50_us": pct(s, 0.5) * 1e6, "p99_us": pct(s, 0.99) * 1e6, "n": len(s)} for name, s in samples.items()
            }
        }
        for chunksize in CHUNKSIZES:
            seconds: dict[str, list[float]] = {p.name: [] for p in pools}
            # A chunked map takes a few ms: more rounds, so that the median is not one noisy moment.
            for _ in range(map_rounds if chunksize == 1 else map_rounds * 5):
                for pool in pools:
                    gc.collect()
                    t0 = time.perf_counter()
                    count = sum(1 for _ in pool.map(MAP_TASKS, chunksize))
                    seconds[pool.name].append(time.perf_counter() - t0)
                    assert count == MAP_TASKS, f"{pool.name} returned {count} results"
            out[f"executor_map_{chunksize}"] = {
                name: {
                    "tasks_per_s": MAP_TASKS / statistics.median(s),
                    "best_tasks_per_s": MAP_TASKS / min(s),
                    "seconds": statistics.median(s),
                    "n": MAP_TASKS,
                    "chunksize": chunksize,
                    "rounds": len(s),
                }
                for name, s in seconds.items()
            }
        return out
    finally:
        for pool in pools:
            pool.close()


def config(quick: bool) -> dict[str, int]:
    return {"rounds": 3 if quick else 10, "calls_per_round": 300 if quick else 500, "map_rounds": 2 if quick else 5}


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """``executor_p50_vs_ppe`` (PPE's p50 / ours: higher is better) and ``executor_map_vs_ppe``
    (our tasks/s / PPE's, the lower of chunksize 1 and 64), with the per-chunksize ratios."""
    if "executor_submit_result" not in results:
        return {}
    p50 = results["executor_submit_result"]
    out = {"executor_p50_vs_ppe": p50["process_pool_executor"]["p50_us"] / p50["microfaas"]["p50_us"]}
    for chunksize in CHUNKSIZES:
        rates = results[f"executor_map_{chunksize}"]
        out[f"executor_map{chunksize}_vs_ppe"] = rates["microfaas"]["tasks_per_s"] / rates["process_pool_executor"]["tasks_per_s"]
    out["executor_map_vs_ppe"] = min(out[f"executor_map{c}_vs_ppe"] for c in CHUNKSIZES)
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.executor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", metavar="PATH", help="write the figures and ratios as JSON to PATH")
    args = parser.parse_args()
    cfg = config(args.quick)
    log(f"executors: submit->result x {cfg['rounds'] * cfg['calls_per_round']}, map of {MAP_TASKS} x {cfg['map_rounds']} rounds")
    results = measure(**cfg)
    for figure, data in results.items():
        print(figure)
        for name, row in data.items():
            print(f"  {name:24} {', '.join(f'{k}={v:.1f}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items())}")
    ratio = ratios(results)
    for key, value in ratio.items():
        print(f"{key} = {value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "results": results, "ratios": ratio}, f, indent=2)


if __name__ == "__main__":
    cli()
