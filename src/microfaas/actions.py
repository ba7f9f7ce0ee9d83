"""What the scheduler core takes in and hands out: records, container states and actions.

Actions are imperative (``StartContainer``), records are nouns (``FunctionProfile``),
states are adjectives (``idle``). Everything here is a frozen attrs value except
``ContainerRecord``, the core's mutable bookkeeping for one container. No I/O.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from .resources import AcquireNode, ReleaseNode

__all__ = [
    "Action",
    "ContainerRecord",
    "ContainerState",
    "FailRequest",
    "FunctionProfile",
    "RunOn",
    "StartContainer",
    "StopContainer",
]


class ContainerState(enum.StrEnum):
    """Where a container is in its life (see docs/lifecycle.md)."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"


@attrs.frozen(kw_only=True)
class FunctionProfile:
    """What the scheduler needs to know of a function."""

    name: str
    memory_mb: int
    concurrency: int = 1
    min_containers: int = 0
    max_containers: int | None = None
    idle_timeout: float | None = None

    @classmethod
    def of(cls, settings: Any) -> FunctionProfile:
        """The profile of anything with these fields (``FunctionSpec``, ``sim.SimFunction``)."""
        return cls(**{field.name: getattr(settings, field.name) for field in attrs.fields(cls)})


@attrs.frozen(kw_only=True, slots=True)
class StartContainer:
    container_id: str
    function: str
    node_id: str
    pinned: bool = False


@attrs.frozen(kw_only=True, slots=True)
class StopContainer:
    container_id: str
    reason: str  # "idle" | "evicted" | "shutdown"


@attrs.frozen(kw_only=True, slots=True)
class RunOn:
    request_id: str
    container_id: str
    cold_start: bool
    queued: bool = False  # sent to a full container, to wait in it for a slot (pipelining)


@attrs.frozen(kw_only=True, slots=True)
class FailRequest:
    request_id: str
    reason: str  # "throttled" | "start_failed" | "closed"
    container_id: str | None = None


Action = StartContainer | StopContainer | RunOn | FailRequest | AcquireNode | ReleaseNode


@attrs.define(eq=False, kw_only=True, slots=True)
class ContainerRecord:
    """The core's bookkeeping for one container."""

    id: str
    function: str
    node_id: str
    memory_mb: int
    concurrency: int
    pinned: bool
    state: ContainerState = ContainerState.STARTING
    busy: int = 0  # slots in use; invariant: 0 <= busy <= concurrency
    queued: int = 0  # calls sent on top of a full container, waiting in it for a slot (pipelining)
    calls: int = 0
    last_used: float = 0.0
    expires_at: float = math.inf  # meaningful only while IDLE and unpinned
    expiry_entry: float | None = None  # the time of its entry in the scheduler's expiry heap
    state_since: float = 0.0  # when it entered its current state (for usage accounting)
    awaiting_node: bool = False  # reserved on a node that is still being acquired
    spare: bool = False  # started ahead of demand (``KeepAlivePolicy.spares``), not for a waiting request
