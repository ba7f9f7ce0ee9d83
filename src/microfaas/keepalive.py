"""Keep-alive policies: how long an idle container is kept for reuse.

How this works. After a container's last slot frees, the scheduler asks the
policy for the function's keep-alive (``ttl_for``); the container is stopped once
it has been idle that long. A function that sets ``idle_timeout`` uses that value
and the policy is not asked. Policies see every arrival (``observe_arrival``) so
that learning policies can adapt. They do no I/O and read no clock: time is the
``now`` they are given.

* ``FixedKeepAlive(ttl)``: the same keep-alive for every function -- AWS Lambda's
  and OpenWhisk's choice; 600 s by default (Lambda keeps idle environments for
  roughly 5-15 minutes).
* ``NeverUnload()``: idle containers are kept forever (until evicted under memory
  pressure).
"""

from __future__ import annotations

import math

import attrs

__all__ = ["FixedKeepAlive", "KeepAlivePolicy", "NeverUnload"]


class KeepAlivePolicy:
    """Base of keep-alive policies: how long idle containers are kept, and when to pre-warm.

    Override ``ttl_for``; override ``observe_arrival`` to learn from arrivals and
    ``prewarm_delay`` to ask for a container to be started ahead of the next call
    (the hybrid policy of "Serverless in the Wild" unloads at once and pre-warms
    just before the predicted next invocation).
    """

    def observe_arrival(self, function: str, *, now: float) -> None:
        """An invocation of ``function`` arrived at ``now``."""
        return None

    def ttl_for(self, function: str, *, now: float) -> float:
        """Seconds to keep an idle container of ``function`` that went idle at ``now``."""
        raise NotImplementedError

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        """A container of ``function`` went idle at ``now``: start one this many seconds
        later if none is up by then (None: do not pre-warm)."""
        return None


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{type(instance).__name__}: {attribute.name} must be >= 0 seconds, got {value!r}")


@attrs.frozen
class FixedKeepAlive(KeepAlivePolicy):
    """Keep idle containers for ``ttl`` seconds (default 600, ten minutes)."""

    ttl: float = attrs.field(default=600.0, converter=float, validator=_non_negative)

    def ttl_for(self, function: str, *, now: float) -> float:
        return self.ttl


@attrs.frozen
class NeverUnload(KeepAlivePolicy):
    """Never stop an idle container for idleness."""

    def ttl_for(self, function: str, *, now: float) -> float:
        return math.inf
