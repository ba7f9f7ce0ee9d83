"""Call timeouts on one event-loop timer per container.

A loop timer per call costs a heap entry and a cancel on the way out. Here each
container has one timer, set for its earliest deadline. A new call's deadline is
almost always later than the ones already set (calls in one container start in
order), so adding it only records it; the timer, when it fires, reports the
calls that are really overdue and re-arms for the next deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadlines"]


class Deadlines:
    """The deadlines of the calls running in one container.

    :param overdue: called with an invocation id whose deadline has passed (once).
    """

    __slots__ = ("_due", "_loop", "_overdue", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, overdue: Callable[[str], None]) -> None:
        self._loop = loop
        self._overdue = overdue
        self._due: dict[str, float] = {}  # invocation id -> loop time
        self._timer: asyncio.TimerHandle | None = None

    def add(self, invocation_id: str, timeout: float) -> None:
        """The call ``invocation_id`` started now and may run for ``timeout`` seconds."""
        at = self._loop.time() + timeout
        self._due[invocation_id] = at
        timer = self._timer
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._fire)

    def discard(self, invocation_id: str) -> None:
        """The call finished (its deadline no longer matters)."""
        self._due.pop(invocation_id, None)

    def close(self) -> None:
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        overdue = [invocation_id for invocation_id, at in self._due.items() if at <= now]
        for invocation_id in overdue:
            del self._due[invocation_id]
        if self._due:
            self._timer = self._loop.call_at(min(self._due.values()), self._fire)
        for invocation_id in overdue:
            self._overdue(invocation_id)
