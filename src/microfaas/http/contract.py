"""What the gateway asks of the platform it serves: a narrow typing protocol.

The gateway sits below ``platform.py`` and must not import it (the platform imports
the gateway to serve it). It types against ``GatewayPlatform`` instead, which names
exactly what it uses: the app's name, the functions served now and their specs
(looked up per request, so functions deployed while it runs are served), whether
the platform is closed, ``invoke`` by name, and the stats and containers of one
function (any attrs records: the gateway only serves them as JSON).
``Platform`` satisfies it structurally; so does a test double.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from attrs import AttrsInstance

    from ..spec import FunctionSpec

__all__ = ["GatewayApp", "GatewayPlatform"]


class GatewayApp(Protocol):
    """The served app."""

    @property
    def name(self) -> str:
        """The app's name (in ``/healthz`` and the log)."""
        ...


class GatewayPlatform(Protocol):
    """The running platform, as the gateway calls it for each request."""

    @property
    def app(self) -> GatewayApp:
        """The app whose functions are served."""
        ...

    @property
    def closed(self) -> bool:
        """True once the platform stopped (``/healthz`` then answers 503)."""
        ...

    def function_names(self) -> list[str]:
        """The functions served now, declared and deployed: their Http triggers are the routes."""
        ...

    def function(self, name: str) -> FunctionSpec:
        """The settings of function ``name`` (one of ``function_names()``).

        :raises UnknownFunction: no such function (it was undeployed).
        """
        ...

    async def invoke(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Invoke function ``name`` and return its result.

        :raises FaaSError: the call failed; the gateway maps it to a status (``ERROR_STATUS``).
        """
        ...

    def stats(self, name: str) -> AttrsInstance:
        """What has happened to function ``name`` so far (``FunctionStats``; served as JSON)."""
        ...

    def containers(self, name: str) -> Sequence[AttrsInstance]:
        """The live containers of function ``name`` (``ContainerInfo`` records; served as JSON)."""
        ...
