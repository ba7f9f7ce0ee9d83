"""Invoke latency on RayNodes against plain Ray actor calls, in one run on one local cluster.

    python -m benchmarks.ray_latency [--warm N] [--cold N] [--address ADDRESS]

Median and p95, milliseconds, of:

* warm, plain Ray: ``await actor.f.remote(x)`` on a live actor;
* warm, RayNodes: ``await f.invoke(x)`` served by an idle container actor;
* cold, plain Ray: create an actor on a node (node affinity, as RayNodes does), first call, kill it;
* cold, RayNodes: ``await f.invoke(x)`` when no container is idle (the previous one was
  released: ``idle_timeout=0``), three ways: without the node's spare actor
  (``spare_actor=False``: every cold start waits for Ray to start a worker); with it, the
  cold starts 0.2 s apart (the spare that the previous cold start set going is still
  starting); and with it, 2 s apart (the spare is ready).

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


async def _microfaas_warm(n: int) -> list[float]:
    out = []
    async with app.run(nodes=mf.RayNodes()):
        await echo.invoke(0)
        await anyio.sleep(2.0)  # the node's next spare actor starts meanwhile, not during the measurement
        for i in range(n):
            t = time.perf_counter()
            await echo.invoke(i)
            out.append(time.perf_counter() - t)
    return out


async def _microfaas_cold(n: int, *, spare_actor: bool, gap: float) -> list[float]:
    out = []
    async with app.run(nodes=mf.RayNodes(spare_actor=spare_actor)) as faas:
        for i in range(n):
            while faas.containers("echo_cold"):  # noqa: ASYNC110 - polling the platform's state
                await anyio.sleep(0.01)
            await anyio.sleep(gap)
            t = time.perf_counter()
            await echo_cold.invoke(i)
            out.append(time.perf_counter() - t)
        assert faas.stats("echo_cold").cold_starts == n
    return out


async def main(warm: int, cold: int) -> None:
    rows = [
        ("warm  plain Ray actor call", await _plain_warm(warm)),
        ("warm  RayNodes invoke", await _microfaas_warm(warm)),
        ("cold  plain Ray actor create + call", await _plain_cold(cold)),
        ("cold  RayNodes, spare_actor=False", await _microfaas_cold(cold, spare_actor=False, gap=0.2)),
        ("cold  RayNodes, 0.2 s apart (spare starting)", await _microfaas_cold(cold, spare_actor=True, gap=0.2)),
        ("cold  RayNodes, 2 s apart (spare ready)", await _microfaas_cold(cold, spare_actor=True, gap=2.0)),
    ]
    print(f"# {platform.platform()}, Python {platform.python_version()}, Ray {ray.__version__}, {os.cpu_count()} CPUs")
    for name, samples in rows:
        print(f"{name:46s} {_summary(samples)}")


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
