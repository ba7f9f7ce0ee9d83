"""LocalNodes with capacity: placement across nodes, eviction, release and usage, for real."""

from __future__ import annotations

import os
import time

import anyio
import pytest

import microfaas as mf
from conftest import pid_alive

pytestmark = pytest.mark.anyio

app = mf.App("nodes")


@app.function(memory_mb=200, max_containers=2)
def big(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.function(memory_mb=200)
def other() -> int:
    return os.getpid()


async def test_a_second_node_is_acquired_when_the_first_is_full():
    nodes = mf.LocalNodes(max_nodes=2, node_memory_mb=300, acquire_delay=0.05)
    async with app.run(nodes=nodes) as faas:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(big.invoke, 0.3)
        infos = faas.containers("big")
        assert sorted(i.node for i in infos) == ["n-1", "n-2"]
        usage = faas.usage()
        assert usage.nodes == 2
        assert usage.node_seconds > 0
        stats = faas.stats("big")
        assert stats.container_seconds["busy"] > 0
        assert stats.container_seconds["starting"] > 0


async def test_idle_containers_are_evicted_lru_when_no_node_has_room():
    async with app.run(nodes=mf.LocalNodes(max_nodes=1, node_memory_mb=300)) as faas:
        first = await big.invoke(0)
        assert faas.containers("big")[0].state == mf.ContainerState.IDLE
        served_by = await other.invoke()
        assert served_by != first
        # The evicted container is listed (stopping) until it has exited.
        with anyio.fail_after(30):
            while pid_alive(first) or [i.function for i in faas.containers()] != ["other"]:
                await anyio.sleep(0.02)


async def test_an_empty_node_beyond_min_nodes_is_released():
    nodes = mf.LocalNodes(max_nodes=2, node_memory_mb=300, release_after=0.2, min_nodes=0)
    fast = mf.App("release")
    fn = fast.function(lambda: os.getpid(), name="fn", memory_mb=200, idle_timeout=0.1)
    async with fast.run(nodes=nodes) as faas:
        await fn.invoke()
        assert faas.usage().nodes == 1
        with anyio.fail_after(10):
            while faas.usage().nodes:
                await anyio.sleep(0.02)
        assert await fn.invoke() > 0  # a new node is acquired on demand
        assert faas.stats("fn").idle_memory_mb_s > 0
