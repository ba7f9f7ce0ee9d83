"""Cluster: the async shell that carries out the scheduler core's decisions against real nodes.

How this works. The core (``scheduler.py``) takes facts and returns actions; ``apply``
carries each one out in one dispatch: start a container (a task that brings it up
on its node), stop one (SIGTERM, then SIGKILL after a grace period), acquire or
release a node, and hand a request's decision (``RunOn``/``FailRequest``) to the
invoker, which sends the call at once, from the callback that learned the fact.
The facts go back in from the tasks and callbacks that observe them: a container
started or failed to, a call finished (the container's reply reader), a container
exited, a node came up or failed. The cluster also ticks the core at its next
wake, and samples the memory of busy containers to enforce ``memory_mb``.

It owns no task group: the runtime gives it the platform's, so every task it
starts ends when the platform stops.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import attrs

from .. import lifecycle as ev
from ..actions import FailRequest, RunOn, StartContainer, StopContainer
from ..errors import SerializationError
from ..nodes import NodeSetup, StartFailed
from ..resources import AcquireNode, ReleaseNode
from ..scheduler import ContainerState, FunctionProfile, Scheduler
from .deadlines import Deadlines
from .learning import ImportLearner, learnable

if TYPE_CHECKING:
    from ..keepalive import KeepAlivePolicy
    from ..nodes import Container, Node, NodeProvider
    from ..protocol import Imports
    from ..spec import FunctionSpec
    from .eventlog import LifecycleLog
    from .faults import FaultPlan
    from .shipping import Shipper
    from .stats import StatsRecorder

__all__ = ["MEMORY_POLL_INTERVAL", "MIN_START_TIMEOUT", "Cluster"]

# How often the memory of running containers is sampled (Lambda reports max memory
# per invocation; we enforce the limit at this resolution).
MEMORY_POLL_INTERVAL: Final = 0.05
# A container must be ready (loaded, init run) within max(this, the function's timeout);
# Lambda gives its init phase 10 s.
MIN_START_TIMEOUT: Final = 10.0


class Cluster:
    """The nodes and containers of one platform, and the scheduler core that decides about them."""

    def __init__(
        self,
        provider: NodeProvider,
        specs: dict[str, FunctionSpec],
        *,
        keep_alive: KeepAlivePolicy | None,
        queue_limit: int | None,
        lifecycle: LifecycleLog,
        stats: dict[str, StatsRecorder],
        faults: FaultPlan,
        shipper: Shipper,
        clock: Callable[[], float],
        preload: tuple[str, ...] = (),
    ) -> None:
        self.provider = provider
        self.preload = preload
        learns = getattr(provider, "learn_imports", False)
        self.learner = ImportLearner(max_packages=getattr(provider, "max_learned_packages", 0)) if learns else None
        self.specs = specs
        self.lifecycle = lifecycle
        self.stats = stats
        self.faults = faults
        self.shipper = shipper
        self.clock = clock
        self.sched = Scheduler(
            provider.resource_manager(),
            keep_alive=keep_alive,
            queue_limit=queue_limit,
            pipeline_depth=getattr(provider, "pipeline_depth", 0),
        )
        for spec in specs.values():
            self.sched.add_function(FunctionProfile.of(spec))
        self.nodes: dict[str, Node] = {}
        self.containers: dict[str, Container] = {}
        self.deadlines: dict[str, Deadlines] = {}  # by container id
        self.start_errors: dict[str, BaseException] = {}  # why a container did not start, for its waiting caller
        self.closed = False
        # Set by the invoker: a request's decision, a queued call got its slot, a timeout fired, a container is gone.
        self.decide: Callable[[RunOn | FailRequest], None] = _unwired
        self.call_started: Callable[[str], None] = _unwired
        self.deadline_passed: Callable[[Container, str], None] = _unwired
        self.container_gone: Callable[[Container], None] = _unwired
        self.retired: set[str] = set()  # functions (old versions) whose containers go once idle
        self._pending_starts: dict[str, anyio.Event] = {}
        self._pending_nodes: dict[str, anyio.Event] = {}
        self._timer_target = math.inf
        self._wake_epoch = -1  # the scheduler's wake_epoch when _timer_target was last lowered
        self._timer_kick = anyio.Event()

    # -- starting and stopping --------------------------------------------------------------

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Come up with the core's minimum nodes and every pinned container ready (or failed)."""
        self._tg = tg
        self.loop = asyncio.get_running_loop()
        preload = (*self.shipper.modules_to_preload(), *self.preload)
        self._setup = NodeSetup(sys_path=tuple(sys.path), cwd=os.getcwd(), preload=preload, on_event=self._node_event)
        tg.start_soon(self._run_timer)
        tg.start_soon(self._watch_memory)
        self.apply(self.sched.start(now=self.clock()))
        while self._pending_nodes or self._pending_starts:
            for event in [*self._pending_nodes.values(), *self._pending_starts.values()]:
                await event.wait()

    async def stop(self) -> None:
        """Stop every container and node (called shielded, by the runtime's stop)."""
        self.closed = True
        if not hasattr(self, "_tg"):
            return
        self.apply(self.sched.shutdown(now=self.clock()))
        async with anyio.create_task_group() as tg:
            for node in list(self.nodes.values()):
                tg.start_soon(node.stop)
        self.nodes.clear()

    # -- carrying out the core's decisions --------------------------------------------------

    def apply(self, actions: list[Any]) -> None:
        """Carry out the core's actions, in order."""
        for action in actions:
            kind = type(action)
            if kind is RunOn or kind is FailRequest:
                self.decide(action)
            elif kind is StartContainer:
                self._pending_starts[action.container_id] = anyio.Event()
                self._tg.start_soon(self._start_container, action)
            elif kind is StopContainer:
                self._stop_container(action)
            elif kind is AcquireNode:
                self._pending_nodes[action.node_id] = anyio.Event()
                self._tg.start_soon(self._acquire_node, action.node_id)
            elif kind is ReleaseNode:
                self.lifecycle.emit(ev.NODE_RELEASED, node=action.node_id, reason="shutdown" if self.closed else "empty")
                node = self.nodes.pop(action.node_id, None)
                if node is not None:
                    self._tg.start_soon(node.stop)
            else:  # pragma: no cover - a new action type the shell does not know yet
                raise TypeError(f"unknown scheduler action {action!r}")
        epoch = self.sched.wake_epoch
        if epoch != self._wake_epoch:
            self._wake_epoch = epoch
            wake = self.sched.next_wake()
            if wake is not None and wake < self._timer_target:
                self._timer_target = wake
                self._timer_kick.set()

    def call_finished(self, container_id: str) -> None:
        """A call's slot in ``container_id`` is free again (its caller is gone, or it never ran)."""
        self.apply(self.sched.call_finished(container_id, now=self.clock()))
        if self.retired:
            self._retire_idle(container_id)

    def retire(self, function: str) -> None:
        """``function`` (an old version) takes no new calls: its containers go as they become idle."""
        self.retired.add(function)
        self.apply(self.sched.retire_function(function, now=self.clock()))

    def _retire_idle(self, container_id: str) -> None:
        record = self.sched.container(container_id)
        if record is not None and record.function in self.retired:
            self.apply(self.sched.retire_function(record.function, now=self.clock()))

    async def _start_container(self, action: StartContainer) -> None:
        container_id = action.container_id
        try:
            started = self.clock()
            try:
                container = await self._bring_up(action)
            except (StartFailed, SerializationError, OSError) as exc:
                self.start_errors[container_id] = exc
                stage = getattr(exc, "stage", None)
                self.emit(ev.START_FAILED, container_id, stage=stage, error=str(exc), injected=stage == "injected")
                self.apply(self.sched.container_start_failed(container_id, now=self.clock()))
                return
            self.deadlines[container_id] = Deadlines(self.loop, functools.partial(self.deadline_passed, container))
            container.on_exit = self._container_exited
            container.on_reply = self._call_done
            container.on_call_started = self.call_started
            if self.learner is not None and hasattr(container, "on_imports"):
                container.on_imports = self._imported
            self.containers[container_id] = container
            stats = self.stats[action.function]
            stats.containers_started += 1
            container.start_s = self.clock() - started
            stats.init_times.append(container.start_s)
            self._tg.start_soon(container.serve_replies)
            record = self.sched.container(container_id)
            if record is None or record.state is not ContainerState.STARTING:
                container.terminate()  # stopped (or the platform closed) while it was starting
                self._tg.start_soon(self._kill_after_grace, container)
                return
            self.lifecycle.container_started(action.function, container, pinned=action.pinned)
            self.apply(self.sched.container_started(container_id, now=self.clock()))
            if self.retired:
                self._retire_idle(container_id)
        finally:
            event = self._pending_starts.pop(container_id, None)
            if event is not None:
                event.set()

    async def _bring_up(self, action: StartContainer) -> Container:
        node = self.nodes.get(action.node_id)
        if node is None:
            raise StartFailed(f"node {action.node_id} is gone", stage="node")
        if self.faults and self.faults.take_start_failure(action.function):
            raise StartFailed("the start failure was injected with faas.inject(start_failure=...)", stage="injected")
        start_timeout = max(MIN_START_TIMEOUT, self.specs[action.function].timeout or 0.0)
        try:
            with anyio.fail_after(start_timeout):
                return await node.start_container(action.container_id, self.shipper.bundle(action.function))
        except TimeoutError:
            raise StartFailed(
                f"the container was not ready within {start_timeout}s (max(10s, timeout)); it was killed", stage="init"
            ) from None

    def _stop_container(self, action: StopContainer) -> None:
        kind = {"idle": ev.IDLE_RELEASE, "evicted": ev.EVICTION}.get(action.reason, ev.CONTAINER_STOPPED)
        self.emit(kind, action.container_id, reason=action.reason)
        container = self.containers.get(action.container_id)
        if container is not None:
            container.terminate()
            self._tg.start_soon(self._kill_after_grace, container)

    async def _kill_after_grace(self, container: Container) -> None:
        with anyio.move_on_after(1.0):
            await container.exited.wait()
        container.kill("stopped")

    def _container_exited(self, container: Container) -> None:
        self.emit(ev.CONTAINER_EXITED, container.id, returncode=container.returncode, reason=container.kill_reason)
        self.containers.pop(container.id, None)
        deadlines = self.deadlines.pop(container.id, None)
        if deadlines is not None:
            deadlines.close()
        self.container_gone(container)
        node = self.nodes.get(container.node_id)
        if node is not None:
            node.container_gone(container)
        self.apply(self.sched.container_exited(container.id, now=self.clock()))

    def _call_done(self, container: Container) -> None:
        self.apply(self.sched.call_finished(container.id, now=self.clock(), duration_s=container.last_call_s))
        if self.retired:
            self._retire_idle(container.id)

    async def _acquire_node(self, node_id: str) -> None:
        try:
            try:
                node = await self.provider.acquire(node_id, self._node_setup(), self._tg)
            except (StartFailed, OSError) as exc:
                for record in self.sched.containers():
                    if record.node_id == node_id:
                        self.start_errors[record.id] = StartFailed(f"node {node_id} could not be acquired: {exc}", stage="node")
                self.lifecycle.emit(ev.NODE_FAILED, node=node_id, error=str(exc))
                self.apply(self.sched.node_failed(node_id, now=self.clock()))
                return
            if node_id not in self.sched.resources.nodes:
                await node.stop()  # released (or the platform closed) while it was coming up
                return
            self.nodes[node_id] = node
            if node.preload_failures:
                self.shipper.ship_by_value(node.preload_failures)
            self.lifecycle.emit(ev.NODE_ACQUIRED, node=node_id)
            self.apply(self.sched.node_acquired(node_id, now=self.clock()))
        finally:
            event = self._pending_nodes.pop(node_id, None)
            if event is not None:
                event.set()

    # -- preloading ----------------------------------------------------------------------------

    def _node_setup(self) -> NodeSetup:
        """What a new node gets: the app's, the declared and the learned modules to preload."""
        if self.learner is None or not self.learner.learned:
            return self._setup
        learned = tuple(m for m in self.learner.learned if m not in self._setup.preload)
        return attrs.evolve(self._setup, preload=(*self._setup.preload, *learned))

    def _node_event(self, kind: str, node_id: str, detail: dict[str, Any]) -> None:
        if kind == ev.PRELOAD_REFUSED and self.learner is not None:
            self.learner.refused(detail["module"])
        self.lifecycle.emit(kind, node=node_id, **detail)

    def _imported(self, container: Container, report: Imports) -> None:
        """A container reported what its function imported: the zygotes preload what is new."""
        assert self.learner is not None
        new = self.learner.learn(learnable(report.modules, report.files, self._setup.cwd))
        if not new or self.closed:
            return
        memory_mb = getattr(self.provider, "zygote_memory_mb", None)
        for node in self.nodes.values():
            preload = getattr(node, "preload", None)
            if preload is not None:
                self._tg.start_soon(functools.partial(preload, new, memory_mb=memory_mb))

    async def _run_timer(self) -> None:
        """Tick the core at its next wake. ``apply`` lowers ``_timer_target`` (and kicks
        this loop) when a fact brings a wake forward; a wake that moved later, or went
        away, costs at most one early tick that finds nothing to do."""
        while True:
            with anyio.move_on_after(max(0.0, self._timer_target - self.clock())) as sleep:
                await self._timer_kick.wait()
            self._timer_kick = anyio.Event()
            if not sleep.cancelled_caught:
                continue  # kicked: an earlier target was set; sleep until it
            self._timer_target = -math.inf  # no kicks while carrying out the tick
            self.apply(self.sched.tick(now=self.clock()))
            wake = self.sched.next_wake()
            self._timer_target = wake if wake is not None else math.inf

    async def _watch_memory(self) -> None:
        while True:
            await anyio.sleep(MEMORY_POLL_INTERVAL)
            for container in list(self.containers.values()):
                if not container.in_flight:
                    continue
                used = container.memory_used_mb()
                record = self.sched.container(container.id)
                if used is not None and record is not None and used > self.specs[record.function].memory_mb:
                    container.memory_at_kill_mb = used
                    container.kill("oom")

    def emit(self, kind: str, container_id: str, **detail: Any) -> None:
        """A lifecycle event about container ``container_id`` (its function and node from the core's record)."""
        record = self.sched.container(container_id)
        function, node = (record.function, record.node_id) if record is not None else (None, None)
        self.lifecycle.emit(kind, function=function, container=container_id, node=node, **detail)

    def process_ids(self) -> set[int]:
        """Every process of this machine the cluster holds now: zygotes and containers."""
        pids: set[int | None] = {container.pid for container in self.containers.values()}
        for node in list(self.nodes.values()):
            pids.add(getattr(node, "zygote_pid", None))
            pids.update(getattr(c, "pid", None) for c in getattr(node, "containers", {}).values())
        return {pid for pid in pids if pid is not None}


def _unwired(*args: Any) -> None:  # pragma: no cover - the invoker wires every hook at once
    raise RuntimeError("the cluster's hooks were not wired to an invoker")
