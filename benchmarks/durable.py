"""Durable spawns: spawn -> done throughput and the accept latency, on a SQLite store, against the
memory store and against Huey on SQLite (SqliteHuey).

    python -m benchmarks.durable [--quick] [--json PATH]     (this figure alone; also part of python -m benchmarks)

- throughput: N no-op calls spawned at once (``asyncio.gather`` of N ``spawn``s, so the accepts
  of one loop iteration share a commit, as concurrent producers would), then every result
  awaited; calls per second from the first spawn to the last result. microfaas runs 2
  containers (``max_containers=2``). Huey gets the same N tasks enqueued one after the other
  from this process (its enqueue is a blocking call) and runs them in its consumer, started
  as Huey documents (``huey_consumer benchmarks.huey_tasks.huey -w 2 -k process``, polling
  every 1-10 ms so that its polling does not decide the figure); the clock stops when the last
  result is in its store.
- the ceiling: the same N no-ops invoked at once (``asyncio.gather`` of N ``invoke``s, on
  the memory store's app), nothing stored and no ``Call``: how fast the platform runs the
  calls at all. Spawn -> done cannot beat it; ``durable_invoke_vs_huey`` says how far the
  ``durable_spawn_vs_huey`` target could go on this machine if spawning cost nothing.
- accept latency: how long one ``await spawn(...)`` takes to return (the call is stored by
  then), one at a time with the platform otherwise idle; p50 and p99. For Huey, one enqueue.

Rounds are interleaved across the three contenders; each figure is the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import microfaas as mf
from benchmarks.common import log, pct, print_ratios_and_notes

WORKERS = 2


def noop(x: object = None) -> object:
    return x


def _app(name: str) -> tuple[mf.App, Any]:
    app = mf.App(name)
    return app, app.function(noop, name="noop", max_containers=WORKERS, idle_timeout=None)


async def _spawn_to_done(handle: Any, n: int) -> float:
    t0 = time.perf_counter()
    calls = await asyncio.gather(*[handle.spawn(i) for i in range(n)])
    for call in calls:
        await call.result()
    return time.perf_counter() - t0


async def _invoke_all(handle: Any, n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*[handle.invoke(i) for i in range(n)])
    return time.perf_counter() - t0


async def _accept_latency(handle: Any, n: int) -> list[float]:
    samples, calls = [], []
    for i in range(n):
        t0 = time.perf_counter()
        calls.append(await handle.spawn(i))
        samples.append(time.perf_counter() - t0)
        await calls[-1].result()  # one at a time: the platform is otherwise idle at the next accept
    return samples


class Huey:
    """SqliteHuey with its consumer in a process of its own (None when huey is not installed)."""

    def __init__(self, folder: Path) -> None:
        self.db = folder / "huey.db"
        self.consumer: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        os.environ["MF_BENCH_HUEY_DB"] = str(self.db)
        from benchmarks import huey_tasks

        self.tasks = huey_tasks
        consumer = shutil.which("huey_consumer", path=os.path.dirname(sys.executable)) or shutil.which("huey_consumer")
        if consumer is None:
            raise RuntimeError("huey is installed but its huey_consumer script was not found")
        command = [consumer, "benchmarks.huey_tasks.huey", "-w", str(WORKERS), "-k", "process", "-d", "0.001", "-m", "0.01", "-q"]
        self.consumer = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL)
        self.tasks.noop(0).get(blocking=True, timeout=60, backoff=1.0, max_delay=0.01)  # the consumer is up (None would store no result)

    def spawn_to_done(self, n: int) -> float:
        t0 = time.perf_counter()
        results = [self.tasks.noop(i) for i in range(n)]
        for result in results:
            result.get(blocking=True, timeout=300, backoff=1.0, max_delay=0.001)
        return time.perf_counter() - t0

    def accept_latency(self, n: int) -> list[float]:
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            result = self.tasks.noop(i)
            samples.append(time.perf_counter() - t0)
            result.get(blocking=True, timeout=60, backoff=1.0, max_delay=0.001)
        return samples

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.send_signal(signal.SIGINT)  # Huey's graceful stop
            try:
                self.consumer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.consumer.kill()
                self.consumer.wait()


def huey_available() -> str | None:
    """None when Huey can be measured, else why not."""
    try:
        import huey  # noqa: F401
    except ImportError:
        return "huey is not installed (pip install 'microfaas[bench]')"
    return None


async def measure(quick: bool) -> dict[str, Any]:
    n, rounds, accepts = (2_000, 3, 200) if quick else (5_000, 5, 500)
    folder = Path(tempfile.mkdtemp(prefix="mf-bench-durable-"))
    seconds: dict[str, list[float]] = {"invoke": [], "memory": [], "sqlite": [], "huey": []}
    latency: dict[str, list[float]] = {"memory": [], "sqlite": [], "huey": []}
    why_not = huey_available()
    huey = Huey(folder) if why_not is None else None
    notes = [] if why_not is None else [f"huey skipped: {why_not}"]
    memory_app, memory_fn = _app("bench-durable-memory")
    sqlite_app, sqlite_fn = _app("bench-durable-sqlite")
    try:
        if huey is not None:
            huey.start()
        async with memory_app.run(store=mf.MemoryStore()), sqlite_app.run(store=mf.SqliteStore(folder / "faas.db")):
            for fn in (memory_fn, sqlite_fn):
                await _spawn_to_done(fn, 200)  # warm: containers up, code loaded
            for r in range(rounds):
                log(f"durable spawn -> done: {n} calls, round {r + 1}/{rounds}")
                seconds["invoke"].append(await _invoke_all(memory_fn, n))
                seconds["memory"].append(await _spawn_to_done(memory_fn, n))
                seconds["sqlite"].append(await _spawn_to_done(sqlite_fn, n))
                if huey is not None:
                    seconds["huey"].append(await asyncio.to_thread(huey.spawn_to_done, n))
            log(f"durable accept latency: {accepts} spawns one at a time")
            latency["memory"] = await _accept_latency(memory_fn, accepts)
            latency["sqlite"] = await _accept_latency(sqlite_fn, accepts)
            if huey is not None:
                latency["huey"] = await asyncio.to_thread(huey.accept_latency, accepts)
    finally:
        if huey is not None:
            huey.close()
        shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {"n": n, "rounds": rounds, "load_average_1m": os.getloadavg()[0], "notes": notes}
    for name in seconds:
        if not seconds[name]:
            out[name] = None
            continue
        med = statistics.median(seconds[name])
        out[name] = {"calls_per_s": n / med, "best_calls_per_s": n / min(seconds[name])}
        if latency.get(name):
            out[name].update(accept_p50_ms=pct(latency[name], 0.5) * 1e3, accept_p99_ms=pct(latency[name], 0.99) * 1e3)
    return out


def ratios(durable: dict[str, Any]) -> dict[str, float]:
    memory, sqlite, huey = durable["memory"], durable["sqlite"], durable.get("huey")
    out = {
        "durable_spawn_vs_memory": sqlite["calls_per_s"] / memory["calls_per_s"],
        "durable_accept_p50_ms": sqlite["accept_p50_ms"],
    }
    if huey is not None:
        out["durable_spawn_vs_huey"] = sqlite["calls_per_s"] / huey["calls_per_s"]
        if durable.get("invoke"):
            out["durable_invoke_vs_huey"] = durable["invoke"]["calls_per_s"] / huey["calls_per_s"]
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.durable", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args()
    result = asyncio.run(measure(args.quick))
    result["ratios"] = ratios(result)
    invoke = result["invoke"]
    print(f" invoke: {invoke['calls_per_s']:8.0f} calls/s (the ceiling: the same calls invoked, nothing stored)")
    for name in ("memory", "sqlite", "huey"):
        figures = result[name]
        if figures is None:
            continue
        print(
            f"{name:>7}: {figures['calls_per_s']:8.0f} calls/s spawn->done (best {figures['best_calls_per_s']:.0f}), "
            f"accept p50 {figures['accept_p50_ms']:.3f} ms, p99 {figures['accept_p99_ms']:.3f} ms"
        )
    print_ratios_and_notes(result, args.json)


if __name__ == "__main__":
    cli()
