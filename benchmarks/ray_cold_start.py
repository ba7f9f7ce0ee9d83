"""Where a cold Ray actor's time goes, and which actor options change it (docs/ray.md, "Cold starts").

    python -m benchmarks.ray_cold_start [--n N]

Two tables, on one local cluster (``ray.init(num_cpus=2)``):

* the suspects: create + first call of a plain actor and of variants with one option
  each (concurrency groups with a pending ``watch``, ``max_concurrency``, an async
  actor, ``num_cpus=1``, the constructor arguments a container once took);
* the breakdown, on one clock (``CLOCK_BOOTTIME``, the same in the driver and the
  actor): ``.remote()`` to the worker's fork, fork to the constructor (the worker
  starting: importing Ray, connecting), the imports a container adds (microfaas and
  the function's module), and the constructor to the reply.

Each actor is killed and the next created 0.7 s later, as a released container's next
cold start would be. The first two actors of a fresh cluster get Ray's prestarted
workers; they are left out of the medians. The actor classes are defined here, in
``__main__``, so Ray ships them by value and a worker imports nothing of microfaas
unless the probe asks it to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

_PRESTARTED = 2


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _process_start() -> float:
    """This process's start, in seconds on CLOCK_BOOTTIME (from /proc; 10 ms resolution)."""
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")


class Plain:
    def __init__(self, *args: object) -> None:
        pass

    def echo(self, x: object) -> object:
        return x


class Grouped:
    def __init__(self) -> None:
        self._forever = threading.Event()

    def echo(self, x: object) -> object:
        return x

    @ray.method(concurrency_group="control")
    def watch(self) -> None:
        self._forever.wait()


class Async:
    async def echo(self, x: object) -> object:
        return x


class Probe:
    """Marks when its process started, when its constructor ran, and when its imports were done."""

    def __init__(self, imports: bool) -> None:
        self.marks = [_process_start(), _boottime()]
        if imports:
            import microfaas.ray  # noqa: F401 - what the container actor's class needs
            from benchmarks.ray_latency import echo_cold  # noqa: F401 - the function's module

        self.marks.append(_boottime())

    def echo(self, x: object) -> list[float]:
        return self.marks


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:6.0f}"


async def _cold(make: Callable[[], Any], call: Callable[[Any], Any], n: int) -> list[tuple[float, float, Any]]:
    """(created at, seconds, reply) of create + first call, ``n`` times, each actor killed 0.7 s before the next."""
    out = []
    for _ in range(n):
        t = _boottime()
        actor = make()
        reply = await call(actor)
        out.append((t, _boottime() - t, reply))
        ray.kill(actor, no_restart=True)
        await asyncio.sleep(0.7)
    return out[_PRESTARTED:]


async def main(n: int) -> None:
    node = ray.get_runtime_context().get_node_id()
    base = {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False), "max_restarts": 0}
    plain, grouped = ray.remote(Plain), ray.remote(concurrency_groups={"control": 1})(Grouped)
    asynchronous, probe = ray.remote(Async), ray.remote(Probe)

    async def echo(actor: Any) -> object:
        return await actor.echo.remote(0)

    async def echo_while_watched(actor: Any) -> object:
        actor.watch.remote()
        return await actor.echo.remote(0)

    suspects: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = [
        ("plain actor", lambda: plain.options(**base).remote(), echo),
        ("+ concurrency group, watch pending", lambda: grouped.options(**base).remote(), echo_while_watched),
        ("+ max_concurrency=4", lambda: plain.options(**base, max_concurrency=4).remote(), echo),
        ("async actor", lambda: asynchronous.options(**base).remote(), echo),
        ("+ num_cpus=1", lambda: plain.options(**{**base, "num_cpus": 1}).remote(), echo),
        (
            "+ bundle, sys.path, cwd as arguments",
            lambda: plain.options(**base).remote("c-1", b"x" * 3000, list(sys.path), os.getcwd()),
            echo,
        ),
    ]
    print(f"create + first call, median of {n - _PRESTARTED} (ms)")
    for name, make, call in suspects:
        print(f"  {name:40s} {_median_ms([s for _, s, _ in await _cold(make, call, n)])}")

    print("where the time goes, medians (ms)")
    for imports in (False, True):
        rows = []
        for created, total, (started, constructed, imported) in await _cold(lambda i=imports: probe.options(**base).remote(i), echo, n):
            rows.append((started - created, constructed - started, imported - constructed, created + total - imported, total))
        fork, boot, imps, reply, total = (_median_ms([r[i] for r in rows]) for i in range(5))
        label = "+ microfaas and the function's module" if imports else "probe actor"
        print(f"  {label:38s} to fork {fork}  worker start {boot}  imports {imps}  reply {reply}  total {total}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="actors per row (the first two are left out)")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        asyncio.run(main(args.n))
    finally:
        ray.shutdown()
