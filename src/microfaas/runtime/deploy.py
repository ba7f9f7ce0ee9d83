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

Triggers. A deployed function may not take triggers yet (topics, streams and
timers are wired when the platform starts); ``deploy`` refuses them by name.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import cloudpickle

from ..actions import FunctionProfile
from ..errors import UnknownFunction
from ..spec import FunctionSpec
from ..store import StoredDeployment
from .shipping import dumps_by_value
from .stats import StatsRecorder

if TYPE_CHECKING:
    from ..store import Snapshot

# The runtime that owns this part (runtime.py imports this module, so it is not imported back).
Runtime = Any

__all__ = ["Deployer", "Deployment", "scheduler_name"]

logger = logging.getLogger("microfaas.deploy")


@attrs.frozen
class Deployment:
    """A deployed version of a function: what ``faas.deploy`` returns.

    :param name: the function's name (what callers invoke).
    :param version: 1 for its first deployment, then 2, 3, ...
    """

    name: str
    version: int


def scheduler_name(name: str, version: int) -> str:
    """What the scheduler core calls version ``version`` of deployed function ``name``."""
    return f"{name}@v{version}"


class Deployer:
    """The deployed functions of one platform and their versions."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.versions: dict[str, list[int]] = collections.defaultdict(list)  # every version deployed, oldest first
        self.active: dict[str, int] = {}

    async def deploy(self, fn: Callable[..., Any], settings: dict[str, Any]) -> Deployment:
        """Deploy ``fn`` with ``settings`` (the keywords of ``@app.function``) as a new version.

        :raises ValueError: a bad setting, triggers, a clash with a decorated function, or it fits no node.
        :raises SerializationError: the function (or its init) will not pickle.
        :raises StoreError: the deployment could not be stored; nothing changed.
        """
        runtime = self.runtime
        runtime.function_names()  # raises PlatformClosed when not running
        spec = FunctionSpec.build(fn, settings)
        name = spec.name
        if name in runtime.declared:
            raise ValueError(f"{name}: the app declares a function of that name with @app.function; deploy under another name")
        if spec.triggers:
            raise ValueError(f"{name}: a deployed function cannot take triggers yet; declare it with @app.function(triggers=...)")
        resources = runtime.cluster.sched.resources
        if not resources.fits_a_node(spec.memory_mb):
            raise ValueError(
                f"{name}: memory_mb={spec.memory_mb} does not fit on a node of {resources.node_memory_mb} MB; "
                "lower memory_mb or raise node_memory_mb"
            )
        code = dumps_by_value((fn, dict(settings)), (fn, spec.init), name)
        version = max(self.versions.get(name, [0]), default=0) + 1
        await runtime.store.put_deployment(StoredDeployment(name=name, version=version, code=code, deployed_at=time.time()))
        self._serve(name, version, spec)
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
        del self.active[name]
        del runtime.functions[name]
        del runtime.routes[name]
        runtime.cluster.retire(scheduler_name(name, version))

    def restore(self, snapshot: Snapshot) -> None:
        """Deploy again the active version of every name the store keeps (the others are listed in ``versions``)."""
        for deployment in snapshot.deployments:
            self.versions[deployment.name].append(deployment.version)
            if not deployment.active or deployment.name in self.runtime.declared:
                continue
            try:
                fn, settings = cloudpickle.loads(deployment.code)
                spec = FunctionSpec.build(fn, settings)
            except Exception:
                logger.exception(
                    "version %d of deployed function %s could not be loaded; it is not served", deployment.version, deployment.name
                )
                continue
            self._serve(deployment.name, deployment.version, spec)

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
