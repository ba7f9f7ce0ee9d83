"""Measure microfaas against its peers in the same run.

    python -m benchmarks [--quick] [--json PATH] [--chart PATH] [--no-ray]

Figures (contenders interleaved per round, so a noisy machine hits all alike):
- warm no-op round trip p50/p99: microfaas, anyio.to_process, ProcessPoolExecutor,
  loky, multiprocessing.Pool, and a raw asyncio socketpair echo (the floor);
- throughput of 10,000 concurrent no-op calls on 2 workers (calls/s);
- cold start to first result p50, start_method fork and spawn, and a raw
  fork-and-pipe floor;
- cold starts of a function that imports numpy, jinja2, networkx and Pillow: nothing
  preloaded, declared, learned; the preloaded zygote's PSS (benchmarks/cold_real.py);
- a 10 MiB bytes argument echoed back (p50);
- idle worker USS/PSS;
- mf.Executor against ProcessPoolExecutor, loky and pebble, used from blocking
  code: submit -> result p50, and 10,000 no-ops through map with chunksize 1 and
  64 (benchmarks/executor.py);
- scheduler core decisions per second (benchmarks/core_decisions.py);
- durable spawns: spawn -> done and accept latency on a SQLite store, against the memory
  store and SqliteHuey (benchmarks/durable.py; Huey needs the bench extra). This phase
  runs in a fresh interpreter (``python -m benchmarks.durable``), as pyperf runs each
  benchmark in a worker process of its own: in this one, what the phases before leave
  (mostly a bigger heap for the cyclic collector to walk) took its SQLite figure from
  about 22,000 calls/s to 13,000-16,000, while Huey's, in its own consumer, did not move;
- messages/s from RabbitMQ and mosquitto through mf.RabbitMQ and mf.MQTT against a bare
  consumer loop of the same client (benchmarks/brokers.py; the connectors extra and the
  Debian packages, else skipped with a note).
- Redis Streams: entries/s through mf.RedisStream and a no-op handler against a bare
  redis-py consumer loop (benchmarks/redis_streams.py; skipped with a note without
  redis-server or the connectors extra).
Ray actors join in a phase of their own (with microfaas measured again beside
them) when ray is installed, so Ray's daemons do not load the machine while the
other peers are measured; without ray the phase is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
import anyio.to_thread

import microfaas as mf
from benchmarks import (
    brokers,
    cold,
    cold_real,
    core_decisions,
    executor,
    memory,
    payload,
    peers,
    redis_streams,
    report,
    throughput,
    warm,
)
from benchmarks.common import log, measure_alone, settle_allocator

PACKAGES = (
    "microfaas",
    "anyio",
    "cloudpickle",
    "attrs",
    "loky",
    "pebble",
    "psutil",
    "matplotlib",
    "ray",
    "huey",
    "numpy",
    "jinja2",
    "networkx",
    "pillow",
)


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "uname": " ".join(platform.uname()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def config(quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "warm_rounds": 5 if quick else 20,
        "warm_per_round": 400 if quick else 500,
        "throughput_calls": 10_000,
        "throughput_rounds": 3 if quick else 7,
        "payload_calls": 10 if quick else 30,
        "cold_fork": 30 if quick else 200,
        "cold_spawn": 5 if quick else 20,
        "cold_rounds": 3 if quick else 10,
        "executor": executor.config(quick),
        # The Ray phase (Ray is slow to call on 2 cores; --quick keeps it short).
        "ray": {
            "warm_rounds": 1 if quick else 5,
            "warm_per_round": 300 if quick else 400,
            "payload_calls": 5 if quick else 20,
            "throughput_calls": 2_000 if quick else 10_000,
        },
    }


async def run_phase(cfg: dict[str, Any], contenders: list[Any], floor: Any | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    names = ", ".join(c.name for c in contenders)
    log(f"warm round trip: {names}")
    results["warm_round_trip"] = await warm.measure(
        [*contenders, *([floor] if floor else [])], cfg["warm_rounds"], cfg["warm_per_round"], warmup=100 if cfg["quick"] else 200
    )
    log("idle worker memory")
    results["idle_memory"] = memory.measure(contenders)
    log(f"throughput: {cfg['throughput_calls']} calls x {cfg['throughput_rounds']} rounds")
    results["throughput"] = await throughput.measure(contenders, cfg["throughput_calls"], cfg["throughput_rounds"])
    log(f"10 MiB payload x {cfg['payload_calls']}")
    results["payload_10mib"] = await payload.measure([*contenders, *([floor] if floor else [])], cfg["payload_calls"])
    return results


async def main(quick: bool, with_ray: bool) -> dict[str, Any]:
    cfg = config(quick)
    started = time.perf_counter()
    settle_allocator()
    notes: list[str] = []
    results: dict[str, Any] = {}
    app = mf.App("bench")
    handle = app.function(peers.noop, name="noop", max_containers=peers.WORKERS, idle_timeout=None)
    # Executors that fork start before anything else owns threads.
    others = [peers.MpPool(), peers.ProcessPool(), peers.Loky(), peers.AnyioToProcess()]
    floor = peers.SocketpairFloor()
    async with app.run(nodes=mf.LocalNodes()) as faas:
        mfaas = peers.Microfaas(faas, handle)
        contenders = [mfaas, *others]
        for c in [*contenders, floor]:
            await c.start()
        try:
            results.update(await run_phase(cfg, contenders, floor))
        finally:
            for c in [*others, floor]:
                await c.close()
        why_not = peers.ray_available() if with_ray else "disabled with --no-ray"
        if why_not is None:
            log("ray phase: ray actors vs microfaas")
            ray = peers.RayActors()
            await ray.start()
            try:
                results["ray_phase"] = await run_phase({**cfg, **cfg["ray"]}, [mfaas, ray], None)
            finally:
                await ray.close()
            notes.append(
                "Ray ran in a phase of its own, interleaved with microfaas (results.ray_phase), "
                "so its daemons were off during the other figures."
            )
        else:
            results["ray_phase"] = None
            notes.append(f"ray skipped: {why_not}")
            log(f"note: ray skipped ({why_not})")
    log(f"cold start: fork x {cfg['cold_fork']} with the raw fork floor interleaved; spawn x {cfg['cold_spawn']}")
    results["cold_start"] = await cold.measure("fork", cfg["cold_fork"], rounds=cfg["cold_rounds"], with_floor=True)
    results["cold_start"].update(await cold.measure("spawn", cfg["cold_spawn"]))
    why_not_real = cold_real.missing()
    if why_not_real is None:
        results["cold_real"] = await cold_real.measure(quick)
    else:
        results["cold_real"] = None
        notes.append(f"real-import cold starts skipped: {why_not_real} (pip install -e '.[bench]')")
    ex_cfg = cfg["executor"]
    log(
        f"executors: submit->result x {ex_cfg['rounds'] * ex_cfg['calls_per_round']}, "
        f"map of {executor.MAP_TASKS} x {ex_cfg['map_rounds']} rounds, chunksize {executor.CHUNKSIZES}"
    )
    # In a thread: the executors block, and mf.Executor runs a platform of its own.
    results.update(await anyio.to_thread.run_sync(lambda: executor.measure(**ex_cfg)))
    log("scheduler core decisions")
    results["core_decisions"] = core_decisions.measure(quick)
    log("durable spawns: SQLite store vs memory store vs SqliteHuey, in a process of their own")
    results["durable"] = await measure_alone("benchmarks.durable", quick)
    notes += results["durable"]["notes"]
    log("brokers: mf.RabbitMQ and mf.MQTT vs bare aio-pika and aiomqtt consumers")
    results["brokers"] = await brokers.measure(quick)
    notes += results["brokers"]["notes"]
    log("redis streams: mf.RedisStream vs a bare consumer loop")
    results["redis_streams"] = await redis_streams.measure(quick)
    notes += results["redis_streams"]["notes"]
    ratios = report.ratios(results)
    return {
        "machine": machine_facts(),
        "versions": package_versions(),
        "config": cfg,
        "results": results,
        "ratios": ratios,
        "targets": report.target_status(ratios),
        "notes": notes,
        "wall_s": time.perf_counter() - started,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    parser.add_argument("--chart", metavar="PATH", help="PNG chart path (default: docs/benchmarks.png with --json or in a full run)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray phase even when ray is installed")
    args = parser.parse_args()
    result = anyio.run(main, args.quick, not args.no_ray)
    table = report.rows(result["results"], result["ratios"])
    print()
    print(report.text_table(table))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wall time: {result['wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    chart = args.chart or ("docs/benchmarks.png" if args.json or not args.quick else None)
    if chart:
        from benchmarks import chart as chart_module

        chart_module.draw(result, chart)
        print(f"wrote {chart}")


if __name__ == "__main__":
    cli()
