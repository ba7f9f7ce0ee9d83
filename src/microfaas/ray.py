"""RayNodes: a node is a Ray node, a container is a Ray actor on it (extra ``ray``).

How this works. ``RayNodes`` is a node provider (``nodes.NodeProvider``): the
platform's ``ResourceManager`` sizes nodes from the cluster (the smallest alive
node's ``memory`` resource; as many nodes as are alive), and acquiring microfaas
node ``n-k`` maps it to one alive Ray node that no other microfaas node holds
(with ``autoscale=True`` it asks the Ray autoscaler for one when none is free).
Releasing the node frees the Ray node again.

A container is a ``_ContainerActor`` placed on its node with a hard node-affinity
scheduling strategy and ``max_concurrency`` equal to the function's concurrency.
Its ``start`` call loads the cloudpickled ``Bundle`` exactly as ``worker.serve`` does
(``worker.start_function``). Most of a cold actor's time is Ray
starting a worker process for it (and that process importing Ray and microfaas), so
each node keeps one spare actor started ahead, as ``LocalNodes`` keeps a zygote; a
cold start takes the spare when its ``max_concurrency`` fits.

An invocation is one ``invoke`` actor call (``worker.run_call``), awaited from the
platform's event loop. The call takes one bytes argument (the invocation's fields
and its arguments, pickled together) and returns the result's bytes, or the
error's reply record, because Ray pays for every argument and every non-bytes value it
serialises: five arguments and a tuple reply cost about 0.3 ms per call more. A
second, never-returning ``watch`` call in its own concurrency group notices the
actor's death even when it is idle.

Every Ray error is turned into a microfaas fact here: an actor that dies, or any
Ray exception while a call is awaited, is the container's death (``Died``), which
the platform reports as ``ContainerCrashed`` (or ``FunctionTimeout`` /
``OutOfMemory`` when the platform killed it). Timeouts, memory limits and stops
kill the actor with ``ray.kill(actor, no_restart=True)``.

Actors ask Ray for no CPUs and no memory: microfaas does the packing itself (the
``ResourceManager`` never puts more ``memory_mb`` on a node than its capacity).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import pickle
import sys
import threading
import time
from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import cloudpickle
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from . import events
from .nodes import NodeSetup
from .nodes.container import EXIT_STATUS_WAIT, ContainerHandle
from .nodes.contract import Died, Outcome, Returned, StartFailed, outcome_of
from .protocol import CallReply, CallRequest, Ready, ResultReply, StartFailure
from .resources import ResourceManager
from .worker import Bundle, Started, flush_user_output, run_call, run_call_async, start_function

__all__ = ["RayContainer", "RayNode", "RayNodes"]

# How often an autoscaling acquire looks for the node it asked for.
_AUTOSCALE_POLL: Final = 1.0
_CONTROL_GROUP: Final = "microfaas-control"


def _private_mb(pid: int | str) -> float | None:
    """A process's private memory (USS) in MB, from /proc; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            private_kb = sum(int(line.split()[1]) for line in f if line.startswith(b"Private_"))
    except (OSError, IndexError, ValueError):
        return None
    return private_kb / 1024


# -- the container: a Ray actor --------------------------------------------------------------


class _ContainerActor:
    """One container inside a Ray worker process (see the module docstring).

    It is created empty, its process set up as the platform's is, and becomes a container
    with one ``start`` call; a spare imports the app's modules while it waits for that call.
    """

    def __init__(self, sys_path: list[str], cwd: str, preload: tuple[str, ...]) -> None:
        self._container_id = ""
        self._forever = threading.Event()
        self._bundle: Bundle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._baseline_mb = 0.0  # private memory once the bundle was loaded
        # The platform's import path first (its modules import here by name), then the worker's own.
        sys.path[:0] = [p for p in sys_path if p not in sys.path]
        try:
            os.chdir(cwd)
        except OSError:
            pass
        for module in preload:
            try:
                importlib.import_module(module)
            except BaseException:  # noqa: BLE001 - the container's own load reports it
                pass

    def start(self, container_id: str, bundle_blob: bytes) -> tuple[Ready, float] | StartFailure:
        """Load the function and run its init.

        :returns: ``(Ready, baseline_mb)`` or the ``StartFailure``.
        """
        self._container_id = container_id
        result = start_function(bundle_blob, after_load=self._measure_baseline)
        if not isinstance(result, Started):
            return result
        flush_user_output()
        self._bundle, self._loop = result.bundle, result.loop
        if result.loop is not None:
            # Async handlers (and what their init set up) share one loop, run in a helper thread.
            threading.Thread(target=result.loop.run_forever, name="microfaas-loop", daemon=True).start()
        return Ready(pid=os.getpid(), load_s=result.load_s, init_s=result.init_s), self._baseline_mb

    def _measure_baseline(self) -> None:
        # What the Ray worker and the function's code take is not the container's to pay for (a
        # forked local container shares them with its zygote); init's allocations and the calls' are.
        self._baseline_mb = _private_mb("self") or 0.0

    @ray.method(concurrency_group=_CONTROL_GROUP)
    def watch(self) -> None:
        """Never returns: its error is how the platform learns that the actor died."""
        self._forever.wait()

    def invoke(self, request: bytes) -> bytes | bytearray | CallReply:
        """Run one invocation (an ``_invoke_request``).

        :returns: the result's blob, or the ``ErrorReply`` or ``BadPayloadReply``.
        """
        invocation_id, attempt, deadline, cold_start, args_blob = pickle.loads(request)
        bundle = self._bundle
        assert bundle is not None, "invoke on a container that did not start"
        ctx = events.Context(
            invocation_id=invocation_id,
            function_name=bundle.name,
            attempt=attempt,
            cold_start=cold_start,
            deadline=deadline,
            memory_mb=bundle.memory_mb,
            container_id=self._container_id,
        )
        try:
            if self._loop is not None:
                reply = asyncio.run_coroutine_threadsafe(run_call_async(bundle, ctx, args_blob), self._loop).result()
            else:
                reply = run_call(bundle, ctx, args_blob, None)
        finally:
            flush_user_output()
        return reply.value if type(reply) is ResultReply else reply


class RayContainer(ContainerHandle):
    """The platform's handle on one container actor (``nodes.Container``)."""

    def __init__(self, container_id: str, node_id: str, actor: Any, *, local: bool) -> None:
        super().__init__(container_id, node_id, None)
        self.actor = actor
        # Why Ray says the actor died (its error's first line), when it died of itself.
        self.death_detail: str | None = None
        self._local = local
        self._baseline_mb = 0.0
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._replies: dict[str, asyncio.Future[Any]] = {}  # Ray's futures for the calls in flight
        self._lost = anyio.Event()  # the actor is dead, or was killed
        self._watch_ref: Any = None

    # -- start ------------------------------------------------------------------------------

    async def handshake(self, bundle_blob: bytes) -> None:
        """Make the actor this container: load the function and run its init.

        :raises StartFailed: the actor died first, or loading or init raised.
        """
        try:
            reply = await self.actor.start.remote(self.id, bundle_blob)
        except Exception as exc:  # noqa: BLE001 - any Ray error: the actor did not come up
            raise StartFailed(f"the container actor died before it was ready: {_first_line(exc)}", stage="process") from None
        if isinstance(reply, StartFailure):
            raise StartFailed.from_reply(reply)
        ready, self._baseline_mb = reply
        self.pid, self.load_s, self.init_s = ready.pid, ready.load_s, ready.init_s
        if self._local and not _is_ray_worker(self.pid):
            self._local = False  # the pid is not a Ray worker of this machine: memory is not measured
        self._watch_ref = self.actor.watch.remote()

    # -- calls ------------------------------------------------------------------------------

    def start_call(self, outcome: asyncio.Future[Any], request: CallRequest, *, queued: bool = False) -> bool:
        """Send one invocation as an actor call; ``outcome`` gets its ``Outcome`` (see ``nodes.Container``).

        RayNodes does not pipeline (the actor queues calls beyond its ``max_concurrency`` itself),
        so a call starts when it is sent.
        """
        if self._lost.is_set():
            outcome.set_result(self._death())
            return True
        invocation_id = request.invocation_id
        self._pending[invocation_id] = outcome
        deadline = time.time() + request.timeout_s if request.timeout_s is not None else None
        try:
            ref = self.actor.invoke.remote(_invoke_request(invocation_id, request.attempt, deadline, request.cold_start, request.args))
            reply = asyncio.wrap_future(ref.future())
        except Exception as exc:  # noqa: BLE001 - a Ray error is a lost container, never the user's problem
            self._actor_lost(exc)
        else:
            # A callback, not a task per call: Ray's future completes on this loop, and the caller wakes once.
            self._replies[invocation_id] = reply
            reply.add_done_callback(functools.partial(self._reply_arrived, invocation_id, outcome))
        return True

    def _reply_arrived(self, invocation_id: str, outcome: asyncio.Future[Any], reply: asyncio.Future[Any]) -> None:
        self._replies.pop(invocation_id, None)
        if reply.cancelled():
            return  # the container is gone: its pending calls were resolved as a death
        exc = reply.exception()
        if exc is not None:  # ActorDiedError and friends: the container is gone
            self._actor_lost(exc)
            return
        if self._pending.get(invocation_id) is not outcome:
            return  # resolved as a death meanwhile
        del self._pending[invocation_id]
        result = reply.result()
        value: Outcome = Returned(result) if isinstance(result, bytes | bytearray) else outcome_of(result)
        if not outcome.done():  # done: the caller gave up waiting
            outcome.set_result(value)
        if self.on_reply is not None:
            self.on_reply(self)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- control ----------------------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """Kill the actor now; pending calls end as ``Died(kill_reason=reason)``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self._kill_actor()

    def terminate(self) -> None:
        """Stop the container: an actor has no graceful stop worth waiting for, so it is killed."""
        self.kill("stopped")

    def memory_used_mb(self) -> float | None:
        """Private memory grown since the actor started (the Ray worker's own is not counted).

        Measured from /proc when the actor runs on this machine; None otherwise.
        """
        if not self._local or self.pid is None or self.exited.is_set():
            return None
        used = _private_mb(self.pid)
        return None if used is None else max(0.0, used - self._baseline_mb)

    def set_exit(self, returncode: int | None) -> None:
        if not self.exited.is_set():
            self.returncode = returncode
            self.exited.set()

    def _kill_actor(self) -> None:
        if not self._lost.is_set():
            self._lost.set()
            _kill(self.actor)

    def _actor_lost(self, exc: BaseException) -> None:
        if self.death_detail is None and self.kill_reason is None:
            self.death_detail = _first_line(exc)
        self._kill_actor()

    async def serve_replies(self) -> None:
        """Run until the actor is gone; then fail what is pending and report the exit."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, tg.cancel_scope)
                tg.start_soon(self._wait_lost, tg.cancel_scope)
        finally:
            if not self._lost.is_set():
                self.kill("stopped")
            self.set_exit(None)
            death = self._death()
            for outcome in self._pending.values():
                if not outcome.done():
                    outcome.set_result(death)
            self._pending.clear()
            for reply in list(self._replies.values()):
                reply.cancel()
            if self.on_exit is not None:
                self.on_exit(self)

    async def _watch(self, scope: anyio.CancelScope) -> None:
        try:
            if self._watch_ref is not None:
                await self._watch_ref
        except Exception as exc:  # noqa: BLE001 - the actor died: that is what we wait for
            self._actor_lost(exc)
        scope.cancel()

    async def _wait_lost(self, scope: anyio.CancelScope) -> None:
        # Killed by us: Ray confirms the death through the watch call; don't wait for it forever.
        await self._lost.wait()
        await anyio.sleep(EXIT_STATUS_WAIT)
        scope.cancel()

    def _death(self) -> Died:
        return Died(self.returncode, self.kill_reason)


def _invoke_request(invocation_id: str, attempt: int, deadline: float | None, cold_start: bool, args_blob: bytes | bytearray) -> bytes:
    """An invocation as the one bytes argument of ``_ContainerActor.invoke``."""
    return pickle.dumps((invocation_id, attempt, deadline, cold_start, args_blob), protocol=pickle.HIGHEST_PROTOCOL)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _is_ray_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"ray::")
    except OSError:
        return False


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
            return _actor_class().options(**options).remote(list(self.setup.sys_path), self.setup.cwd, preload)
        except Exception as exc:  # noqa: BLE001 - no Ray error reaches the user
            raise StartFailed(f"node {self.id}: Ray could not create the container actor: {_first_line(exc)}", stage="process") from None

    def _take_spare(self, concurrency: int) -> Any:
        """The spare actor if its ``max_concurrency`` is ``concurrency`` (else it is replaced by one that has)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        actor, spare_concurrency = spare
        if spare_concurrency == concurrency:
            return actor
        _kill(actor)
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
                _kill(self._spare[0])
                self._spare = None
            containers = list(self._containers.values())
            for container in containers:
                container.kill("stopped")
            with anyio.move_on_after(EXIT_STATUS_WAIT + 1.0):
                for container in containers:
                    await container.exited.wait()
            self._provider._release(self.ray_node_id)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone, or the cluster is: either way it is dead to us
        pass


_ACTOR_CLASS: list[Any] = []


def _actor_class() -> Any:
    """The actor class; its concurrency group is declared once, here."""
    if not _ACTOR_CLASS:
        # Ray's overloads of ray.remote leave out concurrency_groups, which it documents and takes.
        cls = ray.remote(concurrency_groups={_CONTROL_GROUP: 1})(_ContainerActor)  # type: ignore[call-overload]
        _ACTOR_CLASS.append(cls)
    return _ACTOR_CLASS[0]


def _positive_or_none(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"RayNodes: {attribute.name} must be a positive int or None, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"RayNodes: {attribute.name} must be a number >= 0, got {value!r}")


def _min_nodes(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"RayNodes: min_nodes must be an int >= 0, got {value!r}")


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
