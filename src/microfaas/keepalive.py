"""Keep-alive policies: how long an idle container is kept for reuse, and when to pre-warm.

How this works. When a container goes idle the scheduler asks the policy one
question, ``went_idle(function, now=)``, and gets a frozen ``KeepAliveDecision``
back: keep the container ``ttl`` seconds, and (``prewarm``) start one that many
seconds later if none is up by then. A function that sets ``idle_timeout`` uses
that value and the policy is not asked. Policies see every arrival
(``observe_arrival``) so that learning policies can adapt. They do no I/O and
read no clock: time is the ``now`` they are given. The interface, with every
hook and when it is asked, is in ``policy.py``; this module gathers the policies:

* ``FixedKeepAlive(ttl)``: the same keep-alive for every function -- AWS Lambda's
  and OpenWhisk's choice; 600 s by default (Lambda keeps idle environments for
  roughly 5-15 minutes).
* ``NeverUnload()``: idle containers are kept forever (until evicted under memory
  pressure).
* ``HistogramKeepAlive()``: the hybrid policy of "Serverless in the Wild", as
  published (``baselines.py``).
* ``GreedyDualKeepAlive()``: FaaSCache's eviction priority (``baselines.py``).
* ``AdaptiveKeepAlive()``: ours -- keep-alive and pre-warm from observed reuse
  times, priced per call and per app, and spares during bursts (``adaptive.py``).
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from .adaptive import AdaptiveKeepAlive
from .baselines import GreedyDualKeepAlive, HistogramKeepAlive
from .policy import KeepAliveDecision, KeepAlivePolicy, default_cold_start_s, non_negative

__all__ = [
    "AdaptiveKeepAlive",
    "FixedKeepAlive",
    "GreedyDualKeepAlive",
    "HistogramKeepAlive",
    "KeepAliveDecision",
    "KeepAlivePolicy",
    "NeverUnload",
    "default_cold_start_s",
]

_FOREVER: Final = KeepAliveDecision(ttl=math.inf)


@attrs.frozen
class FixedKeepAlive(KeepAlivePolicy):
    """Keep idle containers for ``ttl`` seconds (default 600, ten minutes)."""

    ttl: float = attrs.field(default=600.0, converter=float, validator=non_negative)
    # The one decision this policy makes, built once (after ttl is validated): went_idle is on the hot path.
    _decision: KeepAliveDecision = attrs.field(init=False, repr=False, eq=False, default=_FOREVER)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_decision", KeepAliveDecision(ttl=self.ttl))

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        return self._decision


@attrs.frozen
class NeverUnload(KeepAlivePolicy):
    """Never stop an idle container for idleness."""

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        return _FOREVER
