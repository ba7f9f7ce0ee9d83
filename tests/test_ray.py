"""RayNodes against a real local Ray cluster of two (simulated) nodes, and parity with LocalNodes.

The cluster (``ray.cluster_utils.Cluster``: a head and a second node, each with
``NODE_MB`` of memory resource) is started once for this module. The parity tests
run the same body on ``LocalNodes`` and on ``RayNodes`` through the ``nodes``
fixture. Selected with ``-m ray`` (the default run excludes it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest

import microfaas as mf
from conftest import _children, pid_alive
from microfaas.nodes import Container, Node, NodeProvider

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.anyio]

NODE_MB = 1024
NODE_ARGS = {"num_cpus": 1, "memory": NODE_MB * 2**20, "object_store_memory": 80 * 2**20}

app = mf.App("ray")


# -- the cluster, and the stray-process check that knows about it ------------------------------


class RayCluster:
    """The module's cluster (``ray.cluster_utils.Cluster``) and the pids of the processes Ray started."""

    def __init__(self, cluster: Any, roots: set[int]) -> None:
        self.cluster = cluster
        self.roots = roots

    def add_node(self) -> Any:
        """One more node like the others; its processes are Ray's, not strays."""
        before = {p.pid for p in psutil.Process().children()}
        node = self.cluster.add_node(**NODE_ARGS)
        self.cluster.wait_for_nodes()
        self.roots |= {p.pid for p in psutil.Process().children() if p.pid not in before}
        return node

    def remove_node(self, node: Any) -> None:
        """Remove a node that ``add_node`` added, and wait until Ray no longer counts it alive."""
        from microfaas.ray import alive_nodes

        self.cluster.remove_node(node)
        deadline = time.monotonic() + 30
        while any(n["NodeID"] == node.node_id for n in alive_nodes()) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one more node on this machine."""
    from ray.cluster_utils import Cluster

    before = {p.pid for p in _children()}
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    cluster.add_node(**NODE_ARGS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    roots = {p.pid for p in psutil.Process().children() if p.pid not in before}
    try:
        yield RayCluster(cluster, roots)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _under(process: psutil.Process, cluster: RayCluster) -> bool:
    try:
        return any(p.pid in cluster.roots for p in [process, *process.parents()])
    except psutil.NoSuchProcess:
        return True


def _actors(cluster: RayCluster) -> list[psutil.Process]:
    """Live container actors: Ray workers whose title names the microfaas actor class."""
    found = []
    for p in _children():
        try:
            if _under(p, cluster) and (p.cmdline() or [""])[0].startswith("ray::_ContainerActor"):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def no_stray_processes(ray_cluster):
    """As conftest's check, with Ray's own processes exempt -- but no container actor may outlive its test."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 10.0
    while True:
        stray = [p for p in _children() if p.pid not in before and not _under(p, ray_cluster)]
        actors = _actors(ray_cluster)
        if not (stray or actors) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not stray, f"processes left behind: {[(p.pid, p.cmdline()) for p in stray]}"
    assert not actors, f"container actors left behind: {[(p.pid, p.cmdline()) for p in actors]}"


@pytest.fixture(params=["local", "ray"])
def nodes(request, ray_cluster):
    """The same test on both providers."""
    return mf.LocalNodes() if request.param == "local" else mf.RayNodes()


# -- functions --------------------------------------------------------------------------------


class Boom(Exception):
    pass


@app.function
def whoami() -> dict[str, object]:
    ctx = mf.context()
    return {
        "pid": os.getpid(),
        "invocation_id": ctx.invocation_id,
        "function_name": ctx.function_name,
        "attempt": ctx.attempt,
        "cold_start": ctx.cold_start,
        "memory_mb": ctx.memory_mb,
        "remaining_positive": 0 < ctx.remaining_time() <= 30,
        "container_id": ctx.container_id,
    }


@app.function
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function
async def async_add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


_INITIALISED: list[int] = []


def _init() -> None:
    _INITIALISED.append(os.getpid())


@app.function(init=_init)
def init_count() -> list[int]:
    return list(_INITIALISED)


@app.function(concurrency=4, max_containers=1)
async def overlap_async(delay: float) -> tuple[int, float, float]:
    start = time.time()
    await anyio.sleep(delay)
    assert mf.context().function_name == "overlap_async"
    return os.getpid(), start, time.time()


@app.function(concurrency=3, max_containers=1)
def overlap_threads(delay: float) -> tuple[int, int, float, float]:
    start = time.time()
    time.sleep(delay)
    return os.getpid(), threading.get_ident(), start, time.time()


@app.function(max_containers=2)
def capped(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


pinned_app = mf.App("ray-pinned")  # its own app: every platform of `app` would start its pinned containers


@pinned_app.function(min_containers=2)
def pinned() -> int:
    return os.getpid()


@app.function(idle_timeout=0.2)
def short_lived() -> int:
    return os.getpid()


@app.function
def raises(message: str) -> None:
    raise Boom(message)


@app.function(timeout=0.5)
def sleeps(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.function(memory_mb=64, timeout=20)
def hog(mb: int) -> int:
    block = b"\x01" * (mb * 2**20)
    time.sleep(10)
    return len(block)


@app.function
def exits(code: int) -> None:
    os._exit(code)


def _bad_init() -> None:
    raise RuntimeError("no database")


@app.function(init=_bad_init)
def never_ready() -> None:
    pass


@app.function
def returns_unpicklable() -> object:
    return threading.Lock()


@app.function(concurrency=2, max_containers=1, timeout=0.5)
async def shared(seconds: float) -> int:
    await anyio.sleep(seconds)
    return os.getpid()


@app.function(memory_mb=600)
def big(seconds: float) -> tuple[int, str | None]:
    time.sleep(seconds)
    try:
        import ray as ray_in_container

        node = ray_in_container.get_runtime_context().get_node_id() if ray_in_container.is_initialized() else None
    except ImportError:
        node = None
    return os.getpid(), node


# -- parity: the core runtime on LocalNodes and RayNodes --------------------------------------


async def test_invoke_and_context(nodes):
    async with app.run(nodes=nodes):
        assert await add.invoke(1, b=5) == 6
        assert await async_add.invoke(2, 3) == 5
        info = await whoami.invoke()
        assert info["pid"] != os.getpid()
        assert info["function_name"] == "whoami"
        assert info["memory_mb"] == 128
        assert info["attempt"] == 1
        assert info["remaining_positive"]


async def test_cold_then_warm_on_the_same_container_with_stats_and_info(nodes):
    async with app.run(nodes=nodes) as faas:
        first = await whoami.invoke()
        second = await whoami.invoke()
        assert (first["cold_start"], second["cold_start"]) == (True, False)
        assert first["pid"] == second["pid"]
        assert first["container_id"] == second["container_id"]
        stats = faas.stats("whoami")
        assert (stats.invocations, stats.cold_starts, stats.warm_starts, stats.errors, stats.containers_started) == (2, 1, 1, 0, 1)
        [info] = faas.containers("whoami")
        assert info.state == mf.ContainerState.IDLE
        assert info.pid == first["pid"]
        assert info.node == "n-1"
        assert info.calls == 2
        assert info.start_s is not None and info.load_s is not None and info.init_s is not None
        assert 0 <= info.load_s + info.init_s <= info.start_s


async def test_init_runs_once_per_container(nodes):
    async with app.run(nodes=nodes):
        first = await init_count.invoke()
        assert len(first) == 1
        assert await init_count.invoke() == first


async def test_spawn_and_map(nodes):
    async with app.run(nodes=nodes):
        call = await add.spawn(2, 2)
        assert await call.result(timeout=30) == 4
        assert [r async for r in add.map(range(10), range(100, 110))] == [a + b for a, b in zip(range(10), range(100, 110), strict=True)]


async def test_async_handlers_share_a_container_up_to_concurrency(nodes):
    results: list[tuple[int, float, float]] = []
    async with app.run(nodes=nodes):

        async def one() -> None:
            results.append(await overlap_async.invoke(0.5))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
    assert len({pid for pid, _, _ in results}) == 1
    assert max(r[1] for r in results) < min(r[2] for r in results)


async def test_sync_handlers_run_in_threads_up_to_concurrency(nodes):
    results: list[tuple[int, int, float, float]] = []
    async with app.run(nodes=nodes):

        async def one() -> None:
            results.append(await overlap_threads.invoke(0.5))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
    assert len({r[0] for r in results}) == 1
    assert len({r[1] for r in results}) == 3
    assert max(r[2] for r in results) < min(r[3] for r in results)


async def test_max_containers_caps_a_function_and_calls_wait(nodes):
    pids: list[int] = []
    async with app.run(nodes=nodes) as faas:

        async def one() -> None:
            pids.append(await capped.invoke(0.1))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        assert len(pids) == 6
        assert len(set(pids)) <= 2
        assert faas.stats("capped").containers_started <= 2


async def test_pinned_containers_start_with_the_platform_and_are_replaced(nodes):
    async with pinned_app.run(nodes=nodes) as faas:
        infos = faas.containers("pinned")
        assert len(infos) == 2 and all(i.pinned and i.state == mf.ContainerState.IDLE for i in infos)
        assert await pinned.invoke() in {i.pid for i in infos}
        assert faas.stats("pinned").cold_starts == 0
        victim = infos[0]
        await faas.kill(victim)
        with anyio.fail_after(20):
            while True:
                live = [i for i in faas.containers("pinned") if i.state == mf.ContainerState.IDLE]
                if len(live) == 2 and victim.id not in {i.id for i in live}:
                    break
                await anyio.sleep(0.02)
        with anyio.fail_after(10):
            while victim.pid is not None and pid_alive(victim.pid):
                await anyio.sleep(0.02)


async def test_idle_containers_are_released_after_idle_timeout(nodes):
    async with app.run(nodes=nodes) as faas:
        pid = await short_lived.invoke()
        with anyio.fail_after(10):
            while faas.containers("short_lived"):
                await anyio.sleep(0.02)
        with anyio.fail_after(10):
            while pid_alive(pid):
                await anyio.sleep(0.02)
        assert await short_lived.invoke() != pid
        assert faas.stats("short_lived").cold_starts == 2


async def test_handler_error_carries_the_remote_details(nodes):
    async with app.run(nodes=nodes) as faas:
        with pytest.raises(mf.FunctionError) as info:
            await raises.invoke("out of stock")
        err = info.value
        assert err.remote_type.endswith("Boom")
        assert err.remote_message == "out of stock"
        assert "raise Boom(message)" in err.remote_traceback
        assert err.function_name == "raises" and err.node_id == "n-1" and err.container_id
        with pytest.raises(mf.FunctionError):
            await raises.invoke("again")
        assert faas.stats("raises").containers_started == 1


async def test_timeout_kills_the_container_and_the_next_call_is_healthy(nodes):
    async with app.run(nodes=nodes) as faas:
        first_pid = await sleeps.invoke(0)
        with pytest.raises(mf.FunctionTimeout, match=r"ran past timeout=0.5s .* the container was killed"):
            await sleeps.invoke(30)
        with anyio.fail_after(10):
            while pid_alive(first_pid):
                await anyio.sleep(0.02)
        assert await sleeps.invoke(0) != first_pid
        stats = faas.stats("sleeps")
        assert (stats.timeouts, stats.errors, stats.containers_started) == (1, 1, 2)


async def test_a_timeout_kills_the_other_calls_sharing_its_container(nodes):
    async with app.run(nodes=nodes):
        results: list[BaseException | int] = []

        async def one(seconds: float) -> None:
            try:
                results.append(await shared.invoke(seconds))
            except mf.FaaSError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 30)
            await anyio.sleep(0.1)
            tg.start_soon(one, 0.45)
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds in (["ContainerCrashed", "FunctionTimeout"], ["FunctionTimeout", "int"])


async def test_memory_over_the_limit_kills_the_container(nodes):
    async with app.run(nodes=nodes) as faas:
        with pytest.raises(mf.OutOfMemory, match=r"used \d+ MB, over memory_mb=64"):
            await hog.invoke(200)
        assert faas.stats("hog").out_of_memory == 1
        assert await add.invoke(1, 1) == 2


async def test_a_dying_container_is_a_crash_and_is_replaced(nodes):
    async with app.run(nodes=nodes) as faas:
        with pytest.raises(mf.ContainerCrashed):
            await exits.invoke(3)
        assert faas.stats("exits").crashes == 1
        assert faas.containers("exits") == []
        assert await add.invoke(1, 1) == 2
        with pytest.raises(mf.ContainerCrashed):
            await exits.invoke(3)
        assert faas.stats("exits").containers_started == 2


async def test_init_error_is_a_cold_start_failure_carrying_the_remote_error(nodes):
    async with app.run(nodes=nodes) as faas:
        with pytest.raises(mf.ColdStartFailed) as info:
            await never_ready.invoke()
        assert info.value.remote_type == "builtins.RuntimeError"
        assert info.value.remote_message == "no database"
        assert "_bad_init" in info.value.remote_traceback
        assert faas.containers("never_ready") == []


async def test_unpicklable_result_is_a_serialization_error(nodes):
    async with app.run(nodes=nodes):
        with pytest.raises(mf.SerializationError, match="could not be pickled"):
            await returns_unpicklable.invoke()
        assert await add.invoke(2, 2) == 4


async def test_the_surface_satisfies_the_protocols(nodes):
    assert isinstance(nodes, NodeProvider)
    async with app.run(nodes=nodes) as faas:
        await add.invoke(1, 1)
        [node] = faas._runtime.cluster.nodes.values()
        [container] = faas._runtime.cluster.containers.values()
        assert isinstance(node, Node)
        assert isinstance(container, Container)


# -- Ray only ---------------------------------------------------------------------------------


async def test_ray_nodes_are_sized_from_the_cluster(ray_cluster):
    manager = mf.RayNodes().resource_manager()
    assert (manager.node_memory_mb, manager.max_nodes, manager.min_nodes) == (NODE_MB, 2, 1)
    manager = mf.RayNodes(max_nodes=1, node_memory_mb=512, min_nodes=0).resource_manager()
    assert (manager.node_memory_mb, manager.max_nodes, manager.min_nodes) == (512, 1, 0)
    with pytest.raises(ValueError, match="min_nodes"):
        mf.RayNodes(max_nodes=1, min_nodes=2)
    with pytest.raises(ValueError, match="max_nodes"):
        mf.RayNodes(max_nodes=0)
    with pytest.raises(ValueError, match="autoscale=True needs max_nodes"):
        mf.RayNodes(autoscale=True)


async def test_containers_pack_onto_two_ray_nodes(ray_cluster):
    """600 MB containers on 1024 MB nodes: one per node; a third call waits for a free one."""
    async with app.run(nodes=mf.RayNodes()) as faas:
        results: list[tuple[int, str | None]] = []

        async def one() -> None:
            results.append(await big.invoke(0.5))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert len(results) == 3
        assert faas.stats("big").containers_started == 2
        infos = faas.containers("big")
        assert sorted(i.node for i in infos) == ["n-1", "n-2"]
        assert len({node for _, node in results}) == 2  # two different Ray nodes
        ray_nodes = {node.id: node.ray_node_id for node in faas._runtime.cluster.nodes.values()}
        assert len(set(ray_nodes.values())) == 2
        assert faas.usage().nodes == 2


async def _three_big_calls() -> list[object]:
    """Three ``big`` calls at once (each wants a node of its own): their results or errors."""
    outcomes: list[object] = []

    async def one() -> None:
        try:
            outcomes.append(await big.invoke(1.0))
        except mf.FaaSError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    return outcomes


async def test_no_free_ray_node_is_a_cold_start_failure(ray_cluster):
    """max_nodes above the cluster's size: the node past the last Ray node cannot be had."""
    async with app.run(nodes=mf.RayNodes(max_nodes=3)):
        failures = [o for o in await _three_big_calls() if isinstance(o, mf.FaaSError)]
        assert len(failures) == 1
        assert isinstance(failures[0], mf.ColdStartFailed)
        assert "no free Ray node" in str(failures[0])


async def test_a_cold_start_takes_the_nodes_spare_actor_and_a_new_spare_follows(ray_cluster):
    async with app.run(nodes=mf.RayNodes()) as faas:
        [node] = faas._runtime.cluster.nodes.values()
        spare, concurrency = node._spare
        assert concurrency == 1
        first = await whoami.invoke()
        [container] = faas._runtime.cluster.containers.values()
        assert container.actor is spare and first["cold_start"] and container.pid == first["pid"]
        assert node._spare is not None and node._spare[0] is not spare
        # A function of another concurrency cannot use a max_concurrency=1 actor: it gets a new
        # one, and the spare is replaced by one of its concurrency for the next such start.
        spare = node._spare[0]
        await overlap_threads.invoke(0)
        threaded = next(c for c in faas._runtime.cluster.containers.values() if c is not container)
        assert threaded.actor is not spare and node._spare[1] == 3
        assert faas.stats("overlap_threads").cold_starts == 1


async def test_a_dead_spare_is_not_the_callers_problem(ray_cluster):
    async with app.run(nodes=mf.RayNodes()) as faas:
        [node] = faas._runtime.cluster.nodes.values()
        ray.kill(node._spare[0], no_restart=True)  # as if its worker died while it waited
        assert await add.invoke(2, 3) == 5
        assert faas.stats("add").errors == 0


async def test_without_a_spare_actor_each_cold_start_creates_its_actor(ray_cluster):
    async with app.run(nodes=mf.RayNodes(spare_actor=False)) as faas:
        [node] = faas._runtime.cluster.nodes.values()
        assert node._spare is None
        assert await add.invoke(2, 3) == 5
        assert node._spare is None


@pytest.fixture
def autoscaler_requests(monkeypatch):
    """What RayNodes asks of the Ray autoscaler, one list of bundles per request (a local cluster has none)."""
    from ray.autoscaler import sdk

    import microfaas.ray as mf_ray

    requests: list[list[dict[str, float]]] = []
    monkeypatch.setattr(sdk, "request_resources", lambda *, bundles: requests.append(bundles))
    monkeypatch.setattr(mf_ray, "_AUTOSCALE_POLL", 0.05)
    return requests


WHOLE_NODE = {"memory": NODE_MB * 2**20}


async def test_autoscale_asks_for_a_node_and_uses_the_one_that_joins(ray_cluster, autoscaler_requests):
    """min_nodes=3 on a two-node cluster: the third acquire asks for a node and waits; a node joins meanwhile."""
    added: list[Any] = []

    async def add_a_node_when_asked() -> None:
        with anyio.fail_after(30):
            while not autoscaler_requests:
                await anyio.sleep(0.02)
        added.append(ray_cluster.add_node())  # blocks the loop a few seconds: Ray starts a node from the main thread only

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(add_a_node_when_asked)
            async with app.run(nodes=mf.RayNodes(autoscale=True, max_nodes=3, min_nodes=3, acquire_timeout=60)) as faas:
                assert autoscaler_requests[0] == [WHOLE_NODE] * 3  # the two held and one more, each a whole node
                held = {node.id: node.ray_node_id for node in faas._runtime.cluster.nodes.values()}
                assert len(set(held.values())) == 3 and added[0].node_id in held.values()
                # Three 600 MB containers at once: one on each node, the added one included. (Which
                # call runs where is the scheduler's: a call may wait for a container that frees up.)
                async with anyio.create_task_group() as calls:
                    for _ in range(3):
                        calls.start_soon(big.invoke, 0.3)
                with anyio.fail_after(20):
                    while len([i for i in faas.containers("big") if i.state == mf.ContainerState.IDLE]) < 3:
                        await anyio.sleep(0.02)
                assert {held[i.node] for i in faas.containers("big")} == set(held.values())
        assert autoscaler_requests[-1] == []  # every node released: nothing is asked for any more
    finally:
        for node in added:
            ray_cluster.remove_node(node)


async def test_autoscale_timeout_is_a_cold_start_failure(ray_cluster, autoscaler_requests):
    """No node joins: after acquire_timeout the call that needed it fails, and the request is withdrawn."""
    async with app.run(nodes=mf.RayNodes(autoscale=True, max_nodes=3, acquire_timeout=0.3)) as faas:
        failures = [o for o in await _three_big_calls() if isinstance(o, mf.FaaSError)]
        assert len(failures) == 1 and isinstance(failures[0], mf.ColdStartFailed)
        assert "the Ray autoscaler did not add one within acquire_timeout=0.3s" in str(failures[0])
        assert autoscaler_requests[:2] == [[WHOLE_NODE] * 3, [WHOLE_NODE] * 2]
        assert [e.kind for e in faas.events("node_failed")] == ["node_failed"]
    assert autoscaler_requests[-1] == []


async def test_a_killed_idle_actor_is_noticed_and_replaced(ray_cluster):
    async with app.run(nodes=mf.RayNodes()) as faas:
        first = await whoami.invoke()
        [container] = faas._runtime.cluster.containers.values()
        ray.kill(container.actor, no_restart=True)  # from outside, as a node failure would
        with anyio.fail_after(10):
            while faas.containers("whoami"):
                await anyio.sleep(0.02)
        again = await whoami.invoke()
        assert again["cold_start"] and again["pid"] != first["pid"]
        assert [e.kind for e in faas.events("container_exited", function="whoami")] == ["container_exited"]


async def test_calls_after_close_raise_platform_closed(ray_cluster):
    async with app.run(nodes=mf.RayNodes()) as faas:
        await add.invoke(1, 1)
    with pytest.raises(mf.PlatformClosed):
        await add.invoke(1, 1)
    assert faas.closed


def test_import_microfaas_does_not_import_ray():
    code = "import sys, microfaas as mf; assert 'ray' not in sys.modules; assert 'RayNodes' in dir(mf); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
