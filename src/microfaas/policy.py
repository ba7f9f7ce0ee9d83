"""The keep-alive policy interface: what the scheduler asks a policy, and when.

How this works. A policy decides for functions whose ``idle_timeout`` is None.
The scheduler asks it, always with ``now`` (a policy reads no clock):

* ``went_idle(function, now=)`` each time a container of the function goes
  idle -- its last busy slot freed, or it came up with no call waiting (a
  pre-warmed container, or one a freed slot made unnecessary). The answer is
  one frozen ``KeepAliveDecision``: how long to keep the container, and
  whether to start a container later (pre-warm) if none is up by then. The
  hybrid policy of "Serverless in the Wild" unloads at once (``ttl=0``) and
  pre-warms just before the predicted next call.
* ``observe_arrival`` on every request, so that a learning policy can adapt;
  ``function_added`` once per function, with its memory.
* ``spares`` when a request leaves its function no free container, and
  ``spare_ttl`` when a spare comes up unused (Azure Functions' Premium plan
  keeps such a buffer of pre-warmed instances).
* ``eviction_priority`` and ``evicted`` under memory pressure.

Before ``went_idle`` the scheduler asked two hooks one after the other,
``ttl_for`` and then ``prewarm_delay``, and learning policies had to carry the
first call's decision over to the second. The default ``went_idle`` still asks
them in that order, so a policy written for them keeps working; the policies
that ship with microfaas override ``went_idle`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from .validation import at_least

if TYPE_CHECKING:
    from .actions import ContainerRecord

__all__ = ["KeepAliveDecision", "KeepAlivePolicy", "default_cold_start_s"]


def default_cold_start_s(memory_mb: float) -> float:
    """The cold start assumed when none is measured: 0.5 s plus 0.5 s per GB of memory."""
    return 0.5 + 0.5 * memory_mb / 1024.0


def app_name(app_of: Mapping[str, str] | None, function: str) -> str:
    """The app ``function`` belongs to under a policy's ``app_of`` (None, or not listed: its own)."""
    return function if app_of is None else app_of.get(function, function)


#: An attrs validator: a number of seconds >= 0 (or None).
non_negative = at_least(0, unit=" seconds", optional=True)


@attrs.frozen(kw_only=True)
class KeepAliveDecision:
    """What a policy decided when a container of a function went idle.

    :param ttl: seconds to keep the idle container before it is stopped
        (0: stop it at once; ``math.inf``: keep it until it is evicted).
    :param prewarm: seconds from now after which a container of the function is
        started if none is up or starting then (None: no pre-warm).
    :raises ValueError: a time is negative or NaN.
    """

    ttl: float = attrs.field(validator=non_negative)
    prewarm: float | None = attrs.field(default=None, validator=non_negative)


class KeepAlivePolicy:
    """Base of keep-alive policies: how long idle containers are kept, and when to pre-warm.

    Override ``went_idle`` (or, as before it existed, ``ttl_for`` and
    ``prewarm_delay``); the other hooks are optional. See the module doc for
    when each is asked.
    """

    def observe_arrival(self, function: str, *, now: float) -> None:
        """An invocation of ``function`` arrived at ``now``."""
        return None

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        """A container of ``function`` went idle at ``now``: how long to keep it, and whether to pre-warm.

        The default asks ``ttl_for`` and then ``prewarm_delay``, for policies written
        for those two hooks.
        """
        return KeepAliveDecision(ttl=self.ttl_for(function, now=now), prewarm=self.prewarm_delay(function, now=now))

    def ttl_for(self, function: str, *, now: float) -> float:
        """Seconds to keep an idle container of ``function`` that went idle at ``now`` (asked only
        by the default ``went_idle``)."""
        raise NotImplementedError(f"{type(self).__name__} must override went_idle (or ttl_for)")

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        """Asked by the default ``went_idle`` right after ``ttl_for``: start a container of
        ``function`` this many seconds later if none is up by then (None: do not pre-warm)."""
        return None

    def function_added(self, function: str, *, memory_mb: int) -> None:
        """The scheduler registered ``function``, whose containers take ``memory_mb``."""
        return None

    def spares(self, function: str, *, cold: bool, now: float) -> int:
        """A request of ``function`` arrived and left no free container: it took the last one,
        or (``cold``) found none and waits for a start. Return how many containers should
        stand ready beyond the waiting requests -- idle or starting -- for the calls that may
        follow; the scheduler starts them if there is room without evicting (0: none, the
        default)."""
        return 0

    def spare_ttl(self, function: str, *, now: float) -> float:
        """Seconds to keep a spare that came up and was not used yet (asked instead of
        ``went_idle``, which is about a container whose call ended)."""
        return 60.0

    def eviction_priority(self, container: ContainerRecord, *, now: float) -> float:
        """Under memory pressure idle containers are evicted lowest priority first.

        The default is the time of last use: least recently used first."""
        return container.last_used

    def evicted(self, container: ContainerRecord, *, remaining: int, now: float) -> None:
        """``container`` was evicted; ``remaining`` containers of its function are left."""
        return None
