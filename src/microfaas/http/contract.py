"""What the gateway asks of the platform it serves: a narrow typing protocol.

The gateway sits below ``platform.py`` and must not import it (the platform imports
the gateway to serve it). It types against ``GatewayPlatform`` instead, which names
exactly what it uses: the app's name and function specs, whether the platform is
closed, ``invoke`` by name, and the stats and containers of one function (any
attrs records: the gateway only serves them as JSON).
``Platform`` satisfies it structurally; so does a test double.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from attrs import AttrsInstance

    from ..spec import FunctionSpec

__all__ = ["GatewayApp", "GatewayPlatform"]


class GatewayApp(Protocol):
    """The served app, as the gateway reads it once at start."""

    @property
    def name(self) -> str:
        """The app's name (in ``/healthz`` and the log)."""
        ...

    @property
    def functions(self) -> Mapping[str, FunctionSpec]:
        """Every declared function by name: their Http triggers are the routes."""
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
