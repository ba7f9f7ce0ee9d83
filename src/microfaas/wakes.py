"""When the scheduler core must look again: idle containers' expiries and per-function timers.

How this works. ``tick(now)`` has work only at a few times: an idle container's
keep-alive runs out, a pinned start is retried, a pre-warm is due, an empty node
may be released (that last one is ``ResourceManager.next_wake``). The first
three are kept here, in two heaps, and the shell sleeps until ``next_wake()``.

* Expiries: ``(expires_at, container id)``, at most one entry per container.
  A container used again and again only moves its ``expires_at`` later; its
  entry, now too early, is moved when it reaches the top (``pop_expired``,
  ``next_wake``), so a warm call pushes nothing. Entries of containers that
  are gone, busy or kept forever are dropped there too.
* Timers: ``(at, kind, function)`` for pinned retries (``PIN``) and pre-warms
  (``PREWARM``). A function has at most one live timer of each kind, the one
  whose time matches ``_pin_at`` / ``_prewarm_at``; replaced or cancelled
  entries stay in the heap and are skipped when they come up.

``epoch`` counts the changes that can bring ``next_wake`` earlier (an entry
pushed); a shell may skip asking ``next_wake`` while it stands still (see
``Scheduler.wake_epoch``). No I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Final

from .actions import ContainerRecord, ContainerState

__all__ = ["PIN", "PREWARM", "Wakes"]

PIN: Final = "pin"
PREWARM: Final = "prewarm"
_IDLE: Final = ContainerState.IDLE


class Wakes:
    """The expiry heap and the timer heap of one scheduler.

    :param containers: the scheduler's live containers by id (read, never changed).
    """

    def __init__(self, containers: Mapping[str, ContainerRecord]) -> None:
        self._containers = containers
        self._expiry: list[tuple[float, str]] = []  # (time, container id), at most one live entry per container
        self._timers: list[tuple[float, str, str]] = []  # (time, PIN | PREWARM, function), lazily pruned
        self._pin_at: dict[str, float] = {}
        self._prewarm_at: dict[str, float] = {}
        self.epoch = 0

    # -- idle containers --------------------------------------------------------------------

    def expire(self, rec: ContainerRecord, at: float) -> None:
        """``rec`` went idle: stop it at ``at`` unless it is used before."""
        rec.expires_at = at
        # An entry earlier than the new expiry is moved when it comes up (``_next_expiry``).
        if at < (rec.expiry_entry if rec.expiry_entry is not None else math.inf):
            heapq.heappush(self._expiry, (at, rec.id))
            rec.expiry_entry = at
            self.epoch += 1

    def pop_expired(self, now: float) -> ContainerRecord | None:
        """The idle container whose keep-alive ran out first by ``now``, taken off the heap (None: none)."""
        due = self._next_expiry()
        if due is None or due.expires_at > now:
            return None
        heapq.heappop(self._expiry)
        due.expiry_entry = None
        return due

    def _next_expiry(self) -> ContainerRecord | None:
        """The idle container that expires first, with the heap's top made exact.

        Entries of containers that are gone, busy or re-entered are dropped; an entry
        earlier than its container's expiry (it was used since) is moved to that time.
        """
        expiry = self._expiry
        while expiry:
            at, container_id = expiry[0]
            rec = self._containers.get(container_id)
            if rec is None or rec.expiry_entry != at:
                heapq.heappop(expiry)  # gone, or superseded by an earlier entry
            elif rec.state is not _IDLE or rec.expires_at == math.inf:
                heapq.heappop(expiry)
                rec.expiry_entry = None
            elif rec.expires_at > at:
                heapq.heapreplace(expiry, (rec.expires_at, container_id))
                rec.expiry_entry = rec.expires_at
            else:
                return rec
        return None

    # -- function timers ----------------------------------------------------------------------

    def retry_pinned(self, function: str, at: float) -> None:
        """Try the pinned starts of ``function`` again at ``at``."""
        self._set(self._pin_at, PIN, function, at)

    def pinned_retry_pending(self, function: str) -> bool:
        return function in self._pin_at

    def prewarm(self, function: str, at: float) -> None:
        """Start a container of ``function`` at ``at`` (replacing an earlier pre-warm)."""
        self._set(self._prewarm_at, PREWARM, function, at)

    def _set(self, times: dict[str, float], kind: str, function: str, at: float) -> None:
        times[function] = at
        heapq.heappush(self._timers, (at, kind, function))
        self.epoch += 1

    def pop_timer(self, now: float) -> tuple[str, str] | None:
        """The next live timer due by ``now`` as ``(kind, function)``, cleared (None: none)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, kind, function = heapq.heappop(timers)
            times = self._pin_at if kind == PIN else self._prewarm_at
            if times.get(function) == at:
                del times[function]
                return kind, function
        return None

    def cancel_timers(self, function: str) -> None:
        """Cancel the pinned retry and the pre-warm of ``function`` (it was retired)."""
        self._pin_at.pop(function, None)
        self._prewarm_at.pop(function, None)

    def clear_timers(self) -> None:
        """Cancel every pinned retry and pre-warm (shutdown)."""
        self._pin_at.clear()
        self._prewarm_at.clear()

    # -- when to look again --------------------------------------------------------------------

    def next_wake(self) -> float | None:
        """The earliest expiry or live timer (None: none)."""
        due = self._next_expiry()
        wake = due.expires_at if due is not None else None
        timers = self._timers
        while timers:
            at, kind, function = timers[0]
            if at == (self._pin_at if kind == PIN else self._prewarm_at).get(function):
                if wake is None or at < wake:
                    wake = at
                break
            heapq.heappop(timers)
        return wake
