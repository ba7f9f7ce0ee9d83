"""Deploying functions on a running platform: ``faas.deploy``, ``faas.undeploy``, ``faas.versions``.

How this works. Each deployed version is a function of its own to the scheduler
core, named ``<name>@v<version>`` (``@`` cannot appear in a function's name, so it
never clashes): it has its own containers, and its code ships by value, as it was
when deployed. The runtime routes the public name to the newest version, so every
call that asks for a container after ``deploy`` returns gets one of the new
version, and a retried event's next attempt too. The version it replaces is
retired (``Scheduler.retire_function``): its idle containers (pinned ones too) are
stopped at once, its busy ones once their calls finish, and requests already
waiting for it are still served by it. Both versions share one ``FunctionStats``.

Deploying checks everything first -- the settings (``FunctionSpec.build``, as
``@app.function`` does), a clash with a decorated function, that the function
pickles and fits a node -- then stores the deployment, and only then changes
anything, so a bad deploy leaves the platform as it was. A restart on the store
deploys the active version of every name again.

Triggers. A deployed function's triggers are wired by the platform's ``Wiring``
(``sources/wiring.py``; this package cannot import the sources above it): ``check``
refuses triggers that cannot be wired (an undeclared topic, a timer name or an Http
route another function has) before anything changes, and ``rewire`` replaces the
old version's triggers with the new one's on the running platform: it subscribes and
unsubscribes topics, starts and stops stream consumers, timers and connectors. A
restart wires the restored versions' triggers before the sources start, so what
they had left in the store resumes with them.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import cloudpickle

from ..actions import FunctionProfile
from ..errors import UnknownFunction
from ..spec import FunctionSpec
from ..store import StoredDeployment
from .delivery import SourceRuntime
from .shipping import dumps_by_value
from .stats import StatsRecorder

if TYPE_CHECKING:
    from ..store import Snapshot
    from .cluster import Cluster
    from .delivery import Source

__all__ = ["Deployer", "DeployerOwner", "Deployment", "Rewiring", "SourceHost", "Wiring", "scheduler_name"]

logger = logging.getLogger("microfaas.deploy")


@attrs.frozen
class Deployment:
    """A deployed version of a function: what ``faas.deploy`` returns.

    :param name: the function's name (what callers invoke).
    :param version: 1 for its first deployment, then 2, 3, ...
    """

    name: str
    version: int


class SourceHost(SourceRuntime, Protocol):
    """What wiring a function's triggers may ask of the runtime: its sources, and starting and stopping one."""

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        """What callers invoke now, by name (declared and deployed)."""
        ...

    @property
    def sources(self) -> dict[str, Source]:
        """The platform's event sources by key."""
        ...

    async def start_source(self, source: Source, runtime: SourceRuntime | None = None) -> None:
        """Run ``source`` from now on (with the others, if they have not started yet), showing it ``runtime``
        (None: the platform itself); what it raises before it is ready goes to the caller, and it is not kept."""
        ...

    def stop_source(self, key: str, *, cancel: bool = False) -> None:
        """Stop source ``key`` (its ``stop()`` if it has one, to finish what it is doing; else, or with ``cancel``, cancelled)."""
        ...

    def detach_source(self, key: str) -> tuple[Source, Any]:
        """Take source ``key`` out of the table, still running, so that a new one may take its key."""
        ...

    def reattach_source(self, key: str, detached: tuple[Source, Any]) -> None:
        """Put back what ``detach_source`` took out."""
        ...

    def end_source(self, detached: tuple[Source, Any], *, cancel: bool = False) -> None:
        """Stop what ``detach_source`` took out (its ``stop()``, else, or with ``cancel``, cancelled)."""
        ...


class Rewiring(Protocol):
    """A function's new triggers running beside the old ones while a deploy completes (``Wiring.open``)."""

    def finish(self) -> None:
        """The deploy is done: let the new triggers' events through, and retire the old triggers."""
        ...

    def undo(self) -> None:
        """The deploy failed: stop the new triggers; the old ones run on as they were."""
        ...


class Wiring(Protocol):
    """Wires a deployed function's triggers into the running platform (``sources.wiring.TriggerWiring``)."""

    def check(self, host: SourceHost, name: str, spec: FunctionSpec) -> None:
        """:raises ValueError: ``spec``'s triggers cannot replace those of ``name`` now (the message says why)."""
        ...

    async def open(self, host: SourceHost, name: str, previous: FunctionSpec | None, spec: FunctionSpec) -> Rewiring:
        """Start the sources ``spec``'s triggers add or change, beside the old ones, their events held until ``finish``.

        :raises Exception: a source that could not start (``ConnectorUnreachable``); those started are stopped again.
        """
        ...

    async def rewire(self, host: SourceHost, name: str, previous: FunctionSpec | None, spec: FunctionSpec | None) -> None:
        """Replace the triggers of ``previous`` (None: a new function) by those of ``spec`` (None: undeployed)."""
        ...


class DeployerOwner(SourceHost, Protocol):
    """What ``Deployer`` asks of the runtime that owns it (``Runtime``; runtime.py imports this module,
    so it is not imported back): its routing tables and cluster, and the host its triggers are wired on."""

    declared: frozenset[str]
    specs: dict[str, FunctionSpec]
    routes: dict[str, str]
    stats: dict[str, StatsRecorder]
    cluster: Cluster
    wiring: Wiring | None

    def function_names(self) -> list[str]:
        """:raises PlatformClosed: the platform is not running."""
        ...


def scheduler_name(name: str, version: int) -> str:
    """What the scheduler core calls version ``version`` of deployed function ``name``."""
    return f"{name}@v{version}"


class Deployer:
    """The deployed functions of one platform and their versions."""

    def __init__(self, runtime: DeployerOwner) -> None:
        self.runtime = runtime
        self.versions: dict[str, list[int]] = collections.defaultdict(list)  # every version deployed, oldest first
        self.active: dict[str, int] = {}

    async def deploy(self, fn: Callable[..., Any], settings: dict[str, Any]) -> Deployment:
        """Deploy ``fn`` with ``settings`` (the keywords of ``@app.function``) as a new version.

        :raises ValueError: a bad setting, a trigger that cannot be wired, a clash with a decorated function, or it fits no node.
        :raises SerializationError: the function (or its init) will not pickle.
        :raises ConnectorUnreachable: a new connector could not reach its server; nothing changed.
        :raises StoreError: the deployment could not be stored; nothing changed.
        """
        runtime = self.runtime
        runtime.function_names()  # raises PlatformClosed when not running
        spec = FunctionSpec.build(fn, settings)
        name = spec.name
        if name in runtime.declared:
            raise ValueError(f"{name}: the app declares a function of that name with @app.function; deploy under another name")
        wiring = runtime.wiring
        if spec.triggers:
            if wiring is None:
                raise ValueError(f"{name}: this platform cannot wire the triggers of a deployed function")
            wiring.check(runtime, name, spec)
        resources = runtime.cluster.sched.resources
        if not resources.fits_a_node(spec.memory_mb):
            raise ValueError(
                f"{name}: memory_mb={spec.memory_mb} does not fit on a node of {resources.node_memory_mb} MB; "
                "lower memory_mb or raise node_memory_mb"
            )
        code = dumps_by_value((fn, dict(settings)), (fn, spec.init), name)
        version = max(self.versions.get(name, [0]), default=0) + 1
        previous = runtime.functions.get(name)
        rewiring = None
        if wiring is not None and (spec.triggers or (previous is not None and previous.triggers)):
            # The new triggers start first, beside the old ones, so that one that cannot start
            # (a connector whose server is down) fails the deploy with nothing changed.
            rewiring = await wiring.open(runtime, name, previous, spec)
        try:
            await runtime.store.put_deployment(StoredDeployment(name=name, version=version, code=code, deployed_at=time.time()))
        except BaseException:
            if rewiring is not None:
                rewiring.undo()
            raise
        self._serve(name, version, spec)
        if rewiring is not None:
            rewiring.finish()
        return Deployment(name, version)

    async def undeploy(self, name: str) -> None:
        """Take deployed function ``name`` away: its running calls finish, its containers go.

        :raises UnknownFunction: no deployed function by that name.
        :raises ValueError: ``name`` is declared with ``@app.function`` (it cannot be undeployed).
        """
        runtime = self.runtime
        runtime.function_names()  # raises PlatformClosed when not running
        if name in runtime.declared:
            raise ValueError(f"{name}: declared with @app.function, so it cannot be undeployed; only deployed functions can")
        version = self.active.get(name)
        if version is None:
            deployed = ", ".join(sorted(self.active)) or "none"
            raise UnknownFunction(f"app {runtime.app_name!r} has no deployed function {name!r}; the deployed ones are: {deployed}")
        await runtime.store.undeploy(name)
        spec = runtime.functions[name]
        if runtime.wiring is not None and spec.triggers:
            await runtime.wiring.rewire(runtime, name, spec, None)
        del self.active[name]
        del runtime.functions[name]
        del runtime.routes[name]
        runtime.cluster.retire(scheduler_name(name, version))

    async def restore(self, snapshot: Snapshot) -> None:
        """Deploy again the active version of every name the store keeps (the others are listed in ``versions``),
        with its triggers; one that no longer loads, or whose triggers the app no longer allows, is not served."""
        for deployment in snapshot.deployments:
            self.versions[deployment.name].append(deployment.version)
            if not deployment.active or deployment.name in self.runtime.declared:
                continue
            try:
                fn, settings = cloudpickle.loads(deployment.code)
                spec = FunctionSpec.build(fn, settings)
                if spec.triggers:
                    if self.runtime.wiring is None:
                        raise ValueError(f"{deployment.name}: this platform cannot wire the triggers of a deployed function")
                    self.runtime.wiring.check(self.runtime, deployment.name, spec)
            except Exception:
                logger.exception(
                    "version %d of deployed function %s could not be loaded; it is not served", deployment.version, deployment.name
                )
                continue
            self._serve(deployment.name, deployment.version, spec)
            if spec.triggers and self.runtime.wiring is not None:
                await self.runtime.wiring.rewire(self.runtime, deployment.name, None, spec)

    def _serve(self, name: str, version: int, spec: FunctionSpec) -> None:
        """Route ``name`` to this version from now on, and retire the one it replaces."""
        runtime = self.runtime
        cluster = runtime.cluster
        internal = scheduler_name(name, version)
        runtime.specs[internal] = spec
        recorder = runtime.stats.setdefault(name, StatsRecorder(name))
        runtime.stats[internal] = recorder
        cluster.shipper.ship_function_by_value(internal)
        profile = attrs.evolve(FunctionProfile.of(spec), name=internal)
        cluster.apply(cluster.sched.function_deployed(profile, now=cluster.clock()))
        previous = self.active.get(name)
        self.active[name] = version
        if version not in self.versions[name]:
            self.versions[name].append(version)
        runtime.functions[name] = spec
        runtime.routes[name] = internal
        if previous is not None:
            cluster.retire(scheduler_name(name, previous))

    def scheduler_names(self, name: str) -> list[str]:
        """Every scheduler name function ``name`` has had (its versions), or just ``name`` if it is declared."""
        if name in self.versions:
            return [scheduler_name(name, v) for v in self.versions[name] if scheduler_name(name, v) in self.runtime.specs]
        return [name]
