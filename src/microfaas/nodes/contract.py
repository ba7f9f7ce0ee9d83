"""The NodeService contract: the node provider, node and container the runtime drives, and what a call's outcome can be.

The runtime (``runtime/``) is written against these shapes; a new backend
implements them. ``LocalNodes``/``LocalNode``/``LocalContainer`` (``pool.py``,
``nodes/container.py``) run containers as processes on this machine; ``RayNodes``/
``RayNode``/``RayContainer`` (``ray.py``, ``ray_container.py``) run them as Ray actors.

* ``NodeProvider`` -- configuration, not state: makes the ``ResourceManager`` that
  decides how many nodes of what size exist, and brings up one node on request.
* ``Node`` -- creates and destroys the containers of one node.
* ``Container`` -- one running container: calls in, outcomes out, a death noticed.

The protocols are ``runtime_checkable`` so a test can assert ``isinstance``; that
checks that the members exist, not their signatures. The outcome records
(``Returned``, ``Raised``, ``BadPayload``, ``Died``, ``NotStarted``) and
``StartFailed`` are what every kind of container reports, whatever runs it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ..protocol import BadPayloadReply, CallReply, CallRequest, ErrorReply, ResultReply, StartFailure

if TYPE_CHECKING:
    import asyncio

    import anyio
    import anyio.abc

    from ..resources import ResourceManager

__all__ = [
    "BadPayload",
    "Container",
    "Died",
    "Node",
    "NodeProvider",
    "NodeSetup",
    "NotStarted",
    "Outcome",
    "Raised",
    "Returned",
    "StartFailed",
    "describe_exit",
    "outcome_of",
]


@attrs.frozen(kw_only=True)
class NodeSetup:
    """What every container on a node needs from the platform's process.

    :param preload: modules the node's zygote imports before it forks (the app's and the declared).
    :param on_event: how a node reports a lifecycle event of its own: ``on_event(kind, node_id, detail)``
        (kinds from ``microfaas.lifecycle``: what a zygote preloaded or refused, a zygote replaced).
    """

    sys_path: tuple[str, ...]
    cwd: str
    preload: tuple[str, ...] = ()
    on_event: Callable[[str, str, dict[str, Any]], None] | None = attrs.field(default=None, eq=False)


@attrs.frozen(slots=True)
class Returned:
    blob: bytes | bytearray


@attrs.frozen(slots=True)
class Raised:
    remote_type: str
    remote_message: str
    remote_traceback: str


@attrs.frozen(slots=True)
class BadPayload:
    message: str


@attrs.frozen(slots=True)
class Died:
    """The container's process ended; ``returncode`` is negative for a signal."""

    returncode: int | None
    kill_reason: str | None


@attrs.frozen(slots=True)
class NotStarted:
    """The container died with the call still queued in it: the call never ran (pipelining)."""


Outcome = Returned | Raised | BadPayload | Died | NotStarted


def outcome_of(reply: CallReply) -> Outcome:
    """The outcome a container's reply to a call stands for.

    :raises TypeError: ``reply`` is not a reply to a call.
    """
    if type(reply) is ResultReply:
        return Returned(reply.value)
    if type(reply) is ErrorReply:
        return Raised(reply.remote_type, reply.remote_message, reply.remote_traceback)
    if type(reply) is BadPayloadReply:
        return BadPayload(reply.message)
    raise TypeError(f"outcome_of: {type(reply).__name__} is not a reply to a call")


class StartFailed(Exception):
    """A container did not come up (internal; the platform turns it into ColdStartFailed)."""

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    @classmethod
    def from_reply(cls, reply: StartFailure) -> StartFailed:
        """From a container's ``StartFailure`` reply."""
        return cls(
            f"{reply.stage} raised {reply.remote_type}: {reply.remote_message}",
            stage=reply.stage,
            remote_type=reply.remote_type,
            remote_message=reply.remote_message,
            remote_traceback=reply.remote_traceback,
        )


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (status unknown)"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


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

    def start_call(self, outcome: asyncio.Future[Any], request: CallRequest, *, queued: bool = False) -> bool:
        """Send one invocation; ``outcome`` gets its ``Outcome`` (not awaiting it abandons the wait, not the call).

        The future is typed ``Any`` because the platform's call future also carries outcomes of its own.

        :param request: the invocation, as it goes over the wire (``protocol.CallRequest``).
        :param queued: the call is to wait in the container behind the ones it runs (pipelining).
        :returns: whether it started now; a ``queued`` one starts later (``on_call_started``).
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

        :raises StartFailed: it did not come up.
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
