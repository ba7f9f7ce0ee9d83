"""Measure microfaas against its peers in the same run.

    python -m benchmarks [--quick] [--json PATH]

Figures (all interleaved per round so that a noisy machine hits every contender alike):
- warm no-op round trip p50/p99: microfaas invoke, anyio.to_process.run_sync, and a raw
  asyncio socketpair echo to a forked process (the floor);
- cold start to first result p50 with start_method fork and spawn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import anyio
import anyio.to_process

import microfaas as mf
from benchmarks import core_decisions
from benchmarks.peers import noop

app = mf.App("bench")
mf_noop = app.function(noop, name="noop", idle_timeout=None)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def time_calls(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


ECHO = "import socket, sys\ns = socket.socket(fileno=int(sys.argv[1]))\nwhile data := s.recv(65536):\n    s.sendall(data)\n"


class SocketpairEcho:
    """The floor: another process echoing 1-byte messages over a socketpair, read by asyncio."""

    async def start(self) -> None:
        parent, child = socket.socketpair()
        self.process = await anyio.open_process([sys.executable, "-c", ECHO, str(child.fileno())], pass_fds=[child.fileno()])
        child.close()
        self.reader, self.writer = await asyncio.open_connection(sock=parent)

    async def call(self) -> None:
        self.writer.write(b"x")
        await self.reader.readexactly(1)

    async def close(self) -> None:
        self.writer.close()
        await self.process.wait()


async def warm_round_trip(rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {"microfaas": [], "anyio_to_process": [], "socketpair_floor": []}
    floor = SocketpairEcho()
    await floor.start()
    async with app.run(nodes=mf.LocalNodes()):
        contenders: dict[str, Callable[[], Awaitable[object]]] = {
            "microfaas": lambda: mf_noop.invoke(None),
            "anyio_to_process": lambda: anyio.to_process.run_sync(noop, None),
            "socketpair_floor": floor.call,
        }
        for call in contenders.values():  # warm up every contender
            await time_calls(call, 200)
        for _ in range(rounds):
            for name, call in contenders.items():
                samples[name] += await time_calls(call, per_round)
    await floor.close()
    return {name: {"p50_us": pct(s, 0.5) * 1e6, "p99_us": pct(s, 0.99) * 1e6, "n": len(s)} for name, s in samples.items()}


async def cold_start(start_method: str, n: int) -> dict[str, float]:
    cold_app = mf.App(f"cold_{start_method}")
    fn = cold_app.function(noop, name="noop", idle_timeout=0.0)
    samples = []
    async with cold_app.run(nodes=mf.LocalNodes(start_method=start_method)) as faas:
        for _ in range(n):
            with anyio.fail_after(30):
                while faas.containers("noop"):  # noqa: ASYNC110 - wait until the last container was released
                    await anyio.sleep(0.001)
            t0 = time.perf_counter()
            await fn.invoke(None)
            samples.append(time.perf_counter() - t0)
        assert faas.stats("noop").cold_starts == n
    return {"p50_ms": statistics.median(samples) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3, "n": n}


async def main(quick: bool) -> dict[str, object]:
    results: dict[str, object] = {}
    results["warm_round_trip"] = await warm_round_trip(rounds=5 if quick else 20, per_round=400 if quick else 500)
    results["cold_start_fork"] = await cold_start("fork", 30 if quick else 200)
    results["cold_start_spawn"] = await cold_start("spawn", 5 if quick else 20)
    results["core_decisions"] = core_decisions.measure(quick)
    warm = results["warm_round_trip"]
    assert isinstance(warm, dict)
    ratios = {
        "warm_p50_vs_anyio": warm["microfaas"]["p50_us"] / warm["anyio_to_process"]["p50_us"],
        "warm_p50_vs_floor": warm["microfaas"]["p50_us"] / warm["socketpair_floor"]["p50_us"],
        "cold_start_fork_ms": results["cold_start_fork"]["p50_ms"],  # type: ignore[index]
        "core_decisions_per_s": results["core_decisions"]["decisions_per_s"],  # type: ignore[index]
    }
    return {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "versions": {pkg: version(pkg) for pkg in ("microfaas", "anyio", "cloudpickle")},
        "results": results,
        "ratios": ratios,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args()
    report = anyio.run(main, args.quick)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    cli()
