"""Lifecycle events: the kinds of thing that happen on a platform, and the record of one.

``faas.events(kind=..., function=...)`` and ``faas.subscribe_events()`` return
``LifecycleEvent``s; ``kind`` is one of the constants below (``KINDS`` has them all),
each with the keys its ``detail`` holds. The log that records them is
``runtime/eventlog.py``. This module is a record and its constants: it imports
nothing of microfaas's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = [
    "COLD_START",
    "CONNECTOR_DOWN",
    "CONNECTOR_UP",
    "CONTAINER_EXITED",
    "CONTAINER_STARTED",
    "CONTAINER_STOPPED",
    "CRASH",
    "DEAD_LETTER",
    "EVENTS_KEPT",
    "EVICTION",
    "FUNCTION_ERROR",
    "IDLE_RELEASE",
    "KINDS",
    "NODE_ACQUIRED",
    "NODE_FAILED",
    "NODE_RELEASED",
    "OUT_OF_MEMORY",
    "PRELOAD_REFUSED",
    "RETRY",
    "START_FAILED",
    "TIMEOUT",
    "WARM_START",
    "ZYGOTE_PRELOADED",
    "ZYGOTE_REPLACED",
    "LifecycleEvent",
]

# -- the kinds of event (detail keys in brackets) --------------------------------------------
#: A call got a container that was started for it [invocation_id, attempt, start_s, load_s, init_s].
COLD_START: Final = "cold_start"
#: A call got a container that was already up [invocation_id, attempt].
WARM_START: Final = "warm_start"
#: A container is ready: loaded, init run [start_s, load_s, init_s, pinned, pid].
CONTAINER_STARTED: Final = "container_started"
#: A container could not start [stage, error, injected].
START_FAILED: Final = "start_failed"
#: An idle container was stopped after its keep-alive ran out.
IDLE_RELEASE: Final = "idle_release"
#: An idle container was stopped to make room for another function's container.
EVICTION: Final = "eviction"
#: A container was stopped for another reason [reason: "shutdown"].
CONTAINER_STOPPED: Final = "container_stopped"
#: A container's process ended, for whatever reason [returncode, reason].
CONTAINER_EXITED: Final = "container_exited"
#: A node was acquired.
NODE_ACQUIRED: Final = "node_acquired"
#: A node could not be acquired [error].
NODE_FAILED: Final = "node_failed"
#: A node was released [reason: "empty" or "shutdown"].
NODE_RELEASED: Final = "node_released"
#: A node's zygote preloaded modules [modules (this time), preloaded (all so far), import_s, rss_mb, learned].
ZYGOTE_PRELOADED: Final = "zygote_preloaded"
#: A module was not preloaded; containers import it themselves [module, reason, learned].
PRELOAD_REFUSED: Final = "preload_refused"
#: A node's zygote was replaced by a new one [reason, pid (the old zygote's)].
ZYGOTE_REPLACED: Final = "zygote_replaced"
#: An invocation ran past its timeout; its container was killed [invocation_id, attempt, timeout, injected].
TIMEOUT: Final = "timeout"
#: A container died under an invocation [invocation_id, attempt, returncode, injected].
CRASH: Final = "crash"
#: A container went over memory_mb under an invocation and was killed [invocation_id, attempt, used_mb, limit_mb].
OUT_OF_MEMORY: Final = "out_of_memory"
#: The handler raised [invocation_id, attempt, remote_type, remote_message].
FUNCTION_ERROR: Final = "function_error"
#: A failed attempt will be tried again [source, invocation_id, attempt (the one that failed), delay, error].
RETRY: Final = "retry"
#: An event failed every attempt and went to the dead letters [source, invocation_id, attempts, error].
DEAD_LETTER: Final = "dead_letter"
#: A connector lost (or could not reach) its outside system and will try again [source, address, error, retry_in].
CONNECTOR_DOWN: Final = "connector_down"
#: A connector reached its outside system again after it was down [source, address, down_s].
CONNECTOR_UP: Final = "connector_up"

KINDS: Final = frozenset(
    {
        COLD_START,
        WARM_START,
        CONTAINER_STARTED,
        START_FAILED,
        IDLE_RELEASE,
        EVICTION,
        CONTAINER_STOPPED,
        CONTAINER_EXITED,
        NODE_ACQUIRED,
        NODE_FAILED,
        NODE_RELEASED,
        TIMEOUT,
        CRASH,
        OUT_OF_MEMORY,
        FUNCTION_ERROR,
        RETRY,
        DEAD_LETTER,
        CONNECTOR_DOWN,
        CONNECTOR_UP,
        ZYGOTE_PRELOADED,
        PRELOAD_REFUSED,
        ZYGOTE_REPLACED,
    }
)

# How many events a platform keeps (the oldest are dropped past it); None keeps all.
EVENTS_KEPT: Final = 10_000


@attrs.frozen(kw_only=True)
class LifecycleEvent:
    """One thing that happened on the platform.

    :param kind: what happened: one of ``microfaas.lifecycle.KINDS`` (``"cold_start"``, ``"crash"``, ...).
    :param function: the function it concerns (None for node events).
    :param container: the container it concerns, if any.
    :param node: the node it concerns, if any.
    :param time: when, on the platform's monotonic clock (``time.monotonic()``).
    :param wall_time: when, in wall-clock seconds (``time.time()``).
    :param detail: the rest, by kind (see the kind constants in ``microfaas.lifecycle``).
    """

    kind: str
    function: str | None = None
    container: str | None = None
    node: str | None = None
    time: float
    wall_time: float
    detail: Mapping[str, Any] = attrs.field(factory=dict)
