"""The node provider, node and container surface the platform drives, as typing Protocols.

``Platform`` (``platform.py``) is written against these three shapes; a new backend
implements them. ``LocalNodes``/``LocalNode``/``LocalContainer`` (``pool.py``,
``container.py``) run containers as processes on this machine; ``RayNodes``/
``RayNode``/``RayContainer`` (``ray.py``) run them as Ray actors.

* ``NodeProvider`` -- configuration, not state: makes the ``ResourceManager`` that
  decides how many nodes of what size exist, and brings up one node on request.
* ``Node`` -- creates and destroys the containers of one node.
* ``Container`` -- one running container: calls in, outcomes out, a death noticed.

The protocols are ``runtime_checkable`` so a test can assert ``isinstance``; that
checks that the members exist, not their signatures. This module is typing only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import asyncio

    import anyio
    import anyio.abc

    from .pool import NodeSetup
    from .resources import ResourceManager

__all__ = ["Container", "Node", "NodeProvider"]


@runtime_checkable
class Container(Protocol):
    """One running container, as the platform sees it.

    Times are seconds: ``start_s`` (set by the platform: acquire to ready), ``load_s``
    and ``init_s`` (reported by the container). ``exited`` is set once the container
    is gone; ``returncode`` is its exit status when known (negative: a signal).
    ``kill_reason`` is why the platform killed it (``"timeout"``, ``"oom"``,
    ``"stopped"``, ...), None for a death of its own.
    """

    id: str
    node_id: str
    pid: int | None
    start_s: float
    load_s: float
    init_s: float
    returncode: int | None
    kill_reason: str | None
    memory_at_kill_mb: float | None
    timed_out: str | None  # the invocation whose timeout killed it
    abandoned: set[str]  # invocations whose callers stopped waiting
    exited: anyio.Event
    on_exit: Callable[[Any], None] | None
    on_reply: Callable[[Any], None] | None
    # invocation id -> pending call; a call stays here until the container answers or dies
    _pending: dict[str, Any]

    on_call_started: Callable[[str], None] | None
    last_call_s: float | None

    def start_call(
        self,
        outcome: asyncio.Future[Any],
        invocation_id: str,
        attempt: int,
        timeout: float | None,
        cold_start: bool,
        args_blob: bytes,
        *,
        queued: bool = False,
    ) -> bool:
        """Send one invocation; ``outcome`` gets its ``Outcome`` (not awaiting it abandons the wait, not the call).

        The future is typed ``Any`` because the platform's call future also carries outcomes of its own.

        Returns whether it started now; a ``queued`` one starts later (``on_call_started``).
        """
        ...

    @property
    def in_flight(self) -> int: ...

    def kill(self, reason: str) -> None:
        """Kill now; calls in flight end as ``Died(kill_reason=reason)``."""
        ...

    def terminate(self) -> None:
        """Ask the container to stop (the platform kills it after a grace period)."""
        ...

    def memory_used_mb(self) -> float | None:
        """Memory the container uses beyond what it started with, or None when unknown."""
        ...

    async def serve_replies(self) -> None:
        """Run until the container is gone; then resolve pending calls with ``Died`` and call ``on_exit``."""
        ...


@runtime_checkable
class Node(Protocol):
    """One node: it creates and destroys containers."""

    id: str
    # modules the node could not import by name (the platform then ships them by value)
    preload_failures: dict[str, str]

    async def start_container(self, container_id: str, bundle_blob: bytes) -> Container:
        """Create a container and wait until it is ready (loaded, init run).

        :raises StartFailed: it did not come up (``container.py``).
        """
        ...

    def container_gone(self, container: Any) -> None:
        """Forget a container that has exited."""
        ...

    async def stop(self) -> None:
        """Stop every container of the node and release it."""
        ...


@runtime_checkable
class NodeProvider(Protocol):
    """Where nodes come from: ``app.run(nodes=...)`` takes any object of this shape."""

    def resource_manager(self) -> ResourceManager:
        """A fresh ``ResourceManager``: node capacity, max and min nodes, release delay."""
        ...

    async def acquire(self, node_id: str, setup: NodeSetup, task_group: anyio.abc.TaskGroup) -> Node:
        """Bring up node ``node_id``; its background tasks run in ``task_group``.

        :raises StartFailed: no node could be had.
        """
        ...
