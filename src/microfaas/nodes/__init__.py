"""The NodeService: the contract every node provider implements, and the local parts behind ``pool.py``.

* ``contract`` -- ``NodeProvider``, ``Node``, ``Container`` (typing protocols), ``NodeSetup``,
  the ``Outcome`` of a call and ``StartFailed``.
* ``container`` -- ``LocalContainer``: the platform's end of one worker process's socket.
* ``zygote`` -- the warm process each local node forks its containers from;
  ``zygote_link`` -- the platform's end of one; ``preloading`` -- the modules it imports
  (each tried in a probe first); ``forking`` -- what a forked container does differently.
* ``memory`` -- a process's private memory from /proc, for the memory limits.

This package imports the sans-I/O core and the ContainerService (``worker``,
``protocol``) below it, never the runtime or the providers above it.
"""

from __future__ import annotations

from .contract import (
    BadPayload,
    Container,
    Died,
    Node,
    NodeProvider,
    NodeSetup,
    NotStarted,
    Outcome,
    Raised,
    Returned,
    StartFailed,
    describe_exit,
)

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
]
