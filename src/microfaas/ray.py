"""RayNodes: a node is a Ray node, a container is a Ray actor on it (extra ``ray``).

How this works. ``RayNodes`` is a node provider (``nodes.NodeProvider``): the
platform's ``ResourceManager`` sizes nodes from the cluster (the smallest alive
node's ``memory`` resource; as many nodes as are alive), and acquiring microfaas
node ``n-k`` maps it to one alive Ray node that no other microfaas node holds
(with ``autoscale=True`` it asks the Ray autoscaler for one when none is free).
Releasing the node frees the Ray node again.

A ``RayNode`` starts its containers as Ray actors pinned to its Ray node (the actor
and the platform's handle on it, ``RayContainer``, are in ``ray_container.py``). Most
of a cold actor's time is Ray starting a worker process for it (and that process
importing Ray and microfaas), so each node keeps one spare actor started ahead, as
``LocalNodes`` keeps a zygote; a cold start takes the spare when its
``max_concurrency`` fits.

Actors ask Ray for no CPUs and no memory: microfaas does the packing itself (the
``ResourceManager`` never puts more ``memory_mb`` on a node than its capacity).
"""

from __future__ import annotations

from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import cloudpickle
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .nodes import NodeSetup
from .nodes.container import EXIT_STATUS_WAIT
from .nodes.contract import StartFailed
from .ray_container import RayContainer, actor_class, first_line, kill_actor
from .resources import ResourceManager
from .validation import int_at_least, number_at_least, positive_int

__all__ = ["RayContainer", "RayNode", "RayNodes"]

# How often an autoscaling acquire looks for the node it asked for.
_AUTOSCALE_POLL: Final = 1.0


# -- nodes ------------------------------------------------------------------------------------


class RayNode:
    """One microfaas node: one Ray node, and the container actors on it (``nodes.Node``).

    With ``RayNodes(spare_actor=True)`` the node keeps one started, empty actor (the Ray
    counterpart of ``LocalNodes``' zygote): a cold start takes it when its concurrency fits,
    and a new spare is started once that container is up.
    """

    def __init__(self, node_id: str, ray_node: dict[str, Any], provider: RayNodes, setup: NodeSetup) -> None:
        self.id = node_id
        self.ray_node_id: str = ray_node["NodeID"]
        self.address: str = ray_node.get("NodeManagerAddress", "")
        self.resources: dict[str, float] = dict(ray_node.get("Resources", {}))
        self.preload_failures: dict[str, str] = {}
        self.setup = setup
        self._provider = provider
        self._containers: dict[str, RayContainer] = {}
        self._local = self.address == ray.util.get_node_ip_address()
        self._stopped = False
        self._spare: tuple[Any, int] | None = None  # the spare actor and its max_concurrency
        self._make_spare(1)

    def __repr__(self) -> str:
        return f"<RayNode {self.id} on Ray node {self.ray_node_id[:12]} ({self.address})>"

    @property
    def containers(self) -> dict[str, RayContainer]:
        return self._containers

    async def start_container(self, container_id: str, bundle_blob: bytes) -> RayContainer:
        """Start the container on the spare actor (or on a new one) and wait until its init has run.

        :raises StartFailed: Ray could not create the actor, it died, or loading or init raised.
        """
        if self._stopped:
            raise StartFailed(f"node {self.id} was released", stage="node")
        concurrency = self._provider._concurrency(bundle_blob)
        spare = self._take_spare(concurrency)
        try:
            try:
                return await self._start_on(container_id, spare if spare is not None else self._new_actor(concurrency), bundle_blob)
            except StartFailed as exc:
                if spare is None or exc.stage != "process":
                    raise
            # The spare died while it waited (its worker was killed): one more try on a new actor. (If
            # it died of the function's own load or init instead, the new actor dies of it as well.)
            return await self._start_on(container_id, self._new_actor(concurrency), bundle_blob)
        finally:
            if self._spare is None:
                self._make_spare(concurrency)

    async def _start_on(self, container_id: str, actor: Any, bundle_blob: bytes) -> RayContainer:
        container = RayContainer(container_id, self.id, actor, local=self._local)
        self._containers[container_id] = container
        try:
            await container.handshake(bundle_blob)
        except BaseException:
            container.kill("start_failed")
            container.set_exit(None)
            self._containers.pop(container_id, None)
            raise
        return container

    def _new_actor(self, concurrency: int, preload: tuple[str, ...] = ()) -> Any:
        """A new, empty container actor on this node.

        :raises StartFailed: Ray could not create it.
        """
        options: dict[str, Any] = {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=self.ray_node_id, soft=False),
            "max_concurrency": concurrency,
            "num_cpus": 0,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if self._provider.runtime_env is not None:
            options["runtime_env"] = self._provider.runtime_env
        try:
            return actor_class().options(**options).remote(list(self.setup.sys_path), self.setup.cwd, preload)
        except Exception as exc:  # noqa: BLE001 - no Ray error reaches the user
            raise StartFailed(f"node {self.id}: Ray could not create the container actor: {first_line(exc)}", stage="process") from None

    def _take_spare(self, concurrency: int) -> Any:
        """The spare actor if its ``max_concurrency`` is ``concurrency`` (else it is replaced by one that has)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        actor, spare_concurrency = spare
        if spare_concurrency == concurrency:
            return actor
        kill_actor(actor)
        return None

    def _make_spare(self, concurrency: int) -> None:
        if self._stopped or not self._provider.spare_actor:
            return
        try:
            self._spare = (self._new_actor(concurrency, self.setup.preload), concurrency)
        except StartFailed:
            self._spare = None  # none then: the next start creates its actor

    def container_gone(self, container: RayContainer) -> None:
        self._containers.pop(container.id, None)

    async def stop(self) -> None:
        """Kill the spare and every container actor, wait (briefly) until each is seen gone, and free the Ray node."""
        with anyio.CancelScope(shield=True):
            self._stopped = True
            if self._spare is not None:
                kill_actor(self._spare[0])
                self._spare = None
            containers = list(self._containers.values())
            for container in containers:
                container.kill("stopped")
            with anyio.move_on_after(EXIT_STATUS_WAIT + 1.0):
                for container in containers:
                    await container.exited.wait()
            self._provider._release(self.ray_node_id)


_positive_or_none = positive_int(optional=True)
_non_negative = number_at_least(0)
_min_nodes = int_at_least(0)


@attrs.frozen(kw_only=True)
class RayNodes:
    """Nodes that are Ray nodes; containers that are Ray actors.

    :param address: the cluster to use when Ray is not initialised yet: None (``RAY_ADDRESS``,
        else a new local cluster), ``"auto"`` (the cluster running on this machine) or
        ``"ray://host:10001"`` (Ray Client). When ``ray.init`` was already called, it is used as is.
    :param max_nodes: how many Ray nodes microfaas may hold at once (None: as many as are alive).
    :param node_memory_mb: each node's capacity for containers (None: the smallest alive Ray
        node's ``memory`` resource).
    :param min_nodes: nodes held from the start and never released for emptiness.
    :param release_after: seconds an empty node is kept before it is released.
    :param runtime_env: a Ray runtime environment for the container actors (and for ``ray.init``).
    :param namespace: the Ray namespace for ``ray.init``.
    :param autoscale: when no alive Ray node is free, ask the Ray autoscaler for one (needs
        ``max_nodes``: without it microfaas never holds more nodes than are alive).
    :param acquire_timeout: seconds an autoscaling acquire waits for the new node.
    :param spare_actor: keep one empty container actor started on each node, with the app's
        modules imported, for the next cold start to take: it then skips the Ray worker's start.
        Costs one idle Ray worker process per held node.
    """

    address: str | None = None
    max_nodes: int | None = attrs.field(default=None, validator=_positive_or_none)
    node_memory_mb: int | None = attrs.field(default=None, validator=_positive_or_none)
    min_nodes: int = attrs.field(default=1, validator=_min_nodes)
    release_after: float = attrs.field(default=30.0, validator=_non_negative)
    runtime_env: dict[str, Any] | None = None
    namespace: str | None = None
    autoscale: bool = False
    acquire_timeout: float = attrs.field(default=300.0, validator=_non_negative)
    spare_actor: bool = True
    # Ray node id -> the microfaas node holding it.
    _in_use: dict[str, str] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    _concurrencies: dict[bytes, int] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    # What one Ray node offers, as asked of the autoscaler per node (set by ``resource_manager``).
    _node_bundle: dict[str, float] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    # Microfaas nodes waiting for the autoscaler to add a Ray node.
    _awaiting: set[str] = attrs.field(factory=set, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError(f"RayNodes: min_nodes must be between 0 and max_nodes={self.max_nodes}, got {self.min_nodes!r}")
        if self.autoscale and self.max_nodes is None:
            raise ValueError("RayNodes: autoscale=True needs max_nodes, the most Ray nodes microfaas may ask the autoscaler for")

    # -- the provider surface --------------------------------------------------------------

    def resource_manager(self) -> ResourceManager:
        """Connect to Ray if needed, and size nodes from the cluster's alive nodes."""
        self.connect()
        alive = alive_nodes()
        if not alive:
            raise RuntimeError("RayNodes: the Ray cluster has no alive node")
        ray_node_memory = min(n["Resources"].get("memory", 0) for n in alive)
        memory_mb = self.node_memory_mb or max(1, int(ray_node_memory // 2**20))
        # A whole Ray node per request bundle: the autoscaler packs bundles, so a smaller one
        # (node_memory_mb below the node's memory) could be met by a node microfaas already holds.
        self._node_bundle.clear()
        self._node_bundle.update({"memory": ray_node_memory} if ray_node_memory else {"CPU": 1})
        max_nodes = self.max_nodes or len(alive)
        if self.min_nodes > max_nodes:
            raise ValueError(f"RayNodes: min_nodes={self.min_nodes} is more than the {max_nodes} node(s) available (max_nodes)")
        return ResourceManager(node_memory_mb=memory_mb, max_nodes=max_nodes, min_nodes=self.min_nodes, release_after=self.release_after)

    async def acquire(self, node_id: str, setup: NodeSetup, task_group: anyio.abc.TaskGroup) -> RayNode:
        """Map node ``node_id`` to a free alive Ray node (asking the autoscaler for one if allowed).

        ``task_group`` is not used: Ray runs the actors, and their replies arrive as future callbacks.

        :raises StartFailed: no Ray node is free.
        """
        ray_node = self._claim(await anyio.to_thread.run_sync(alive_nodes), node_id)
        if ray_node is None and self.autoscale:
            ray_node = await self._autoscale(node_id)
        if ray_node is None and self.autoscale:
            raise StartFailed(
                f"no free Ray node: microfaas holds {len(self._in_use)}, and the Ray autoscaler did not add one"
                f" within acquire_timeout={self.acquire_timeout}s",
                stage="node",
            )
        if ray_node is None:
            raise StartFailed(
                f"no free Ray node: {len(self._in_use)} of the cluster's alive nodes are held by microfaas and none is left",
                stage="node",
            )
        return RayNode(node_id, ray_node, self, setup)

    # -- helpers ----------------------------------------------------------------------------

    def connect(self) -> None:
        """``ray.init`` with this configuration, unless Ray is initialised already."""
        if not ray.is_initialized():
            ray.init(address=self.address, runtime_env=self.runtime_env, namespace=self.namespace, log_to_driver=True)

    def _claim(self, alive: list[dict[str, Any]], node_id: str) -> dict[str, Any] | None:
        for node in alive:
            if node["NodeID"] not in self._in_use:
                self._in_use[node["NodeID"]] = node_id
                return node
        return None

    def _release(self, ray_node_id: str) -> None:
        self._in_use.pop(ray_node_id, None)
        if self.autoscale:
            self._request()

    async def _autoscale(self, node_id: str) -> dict[str, Any] | None:
        self._awaiting.add(node_id)
        try:
            self._request()
            with anyio.move_on_after(self.acquire_timeout):
                while True:
                    ray_node = self._claim(await anyio.to_thread.run_sync(alive_nodes), node_id)
                    if ray_node is not None:
                        return ray_node
                    await anyio.sleep(_AUTOSCALE_POLL)
            return None
        finally:
            self._awaiting.discard(node_id)
            self._request()  # no standing request for a node that nobody waits for any more

    def _request(self) -> None:
        """Ask the autoscaler for room for the Ray nodes held and awaited, one whole node per bundle.

        A request stands until the next one replaces it, so every change restates the total.
        """
        from ray.autoscaler import sdk

        nodes = len(self._in_use) + len(self._awaiting)
        try:
            sdk.request_resources(bundles=[dict(self._node_bundle or {"CPU": 1}) for _ in range(nodes)])
        except Exception:  # noqa: BLE001 - no autoscaler: the acquire then times out
            pass

    def _concurrency(self, bundle_blob: bytes) -> int:
        concurrency = self._concurrencies.get(bundle_blob)
        if concurrency is None:
            if len(self._concurrencies) > 256:
                self._concurrencies.clear()
            concurrency = self._concurrencies[bundle_blob] = int(cloudpickle.loads(bundle_blob).concurrency)
        return concurrency


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes (``ray.nodes()`` entries), in Ray's order."""
    return [n for n in ray.nodes() if n.get("Alive")]
