"""Invoke latency on RayNodes against plain Ray actor calls, in one run on one local cluster.

    python -m benchmarks.ray_latency [--warm N] [--cold N] [--address ADDRESS]

Four numbers (median and p95, milliseconds):

* warm, plain Ray: ``await actor.f.remote(x)`` on a live actor;
* warm, RayNodes: ``await f.invoke(x)`` served by an idle container actor;
* cold, plain Ray: create an actor on a node (node affinity, as RayNodes does), first call, kill it;
* cold, RayNodes: ``await f.invoke(x)`` when no container is idle (the previous one was
  released: ``idle_timeout=0`` and a keep-alive tick between calls).

Without ``--address`` a local cluster of one node (``ray.init(num_cpus=2)``) is started.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import anyio
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import microfaas as mf

app = mf.App("ray-latency")


@app.function
def echo(x: int) -> int:
    return x


@app.function(idle_timeout=0.0)
def echo_cold(x: int) -> int:
    return x


@ray.remote
class Plain:
    def echo(self, x: int) -> int:
        return x


def _summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   (n={len(ms)})"


async def _plain_warm(n: int) -> list[float]:
    actor = Plain.options(num_cpus=0).remote()
    await actor.echo.remote(0)
    out = []
    for i in range(n):
        t = time.perf_counter()
        await actor.echo.remote(i)
        out.append(time.perf_counter() - t)
    ray.kill(actor, no_restart=True)
    return out


async def _plain_cold(n: int) -> list[float]:
    node_id = ray.get_runtime_context().get_node_id()
    out = []
    for i in range(n):
        t = time.perf_counter()
        actor = Plain.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        await actor.echo.remote(i)
        out.append(time.perf_counter() - t)
        ray.kill(actor, no_restart=True)
        await anyio.sleep(0.2)  # let the worker go, as RayNodes' released container does
    return out


async def _microfaas(warm: int, cold: int) -> tuple[list[float], list[float]]:
    warm_s, cold_s = [], []
    async with app.run(nodes=mf.RayNodes()) as faas:
        await echo.invoke(0)
        for i in range(warm):
            t = time.perf_counter()
            await echo.invoke(i)
            warm_s.append(time.perf_counter() - t)
        for i in range(cold):
            while faas.containers("echo_cold"):  # noqa: ASYNC110 - polling the platform's state
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            t = time.perf_counter()
            await echo_cold.invoke(i)
            cold_s.append(time.perf_counter() - t)
        assert faas.stats("echo_cold").cold_starts == cold
    return warm_s, cold_s


async def main(warm: int, cold: int) -> None:
    plain_warm = await _plain_warm(warm)
    mf_warm, mf_cold = await _microfaas(warm, cold)
    plain_cold = await _plain_cold(cold)
    rows = [
        ("warm  plain Ray actor call", plain_warm),
        ("warm  RayNodes invoke", mf_warm),
        ("cold  plain Ray actor create + call", plain_cold),
        ("cold  RayNodes invoke", mf_cold),
    ]
    print(f"# {platform.platform()}, Python {platform.python_version()}, Ray {ray.__version__}, {os.cpu_count()} CPUs")
    for name, samples in rows:
        print(f"{name:38s} {_summary(samples)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--address", default=None, help='an existing cluster: "auto" or "ray://host:10001"')
    args = parser.parse_args()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        anyio.run(main, args.warm, args.cold)
    finally:
        ray.shutdown()
