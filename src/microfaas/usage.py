"""Usage accounting for the scheduler core: container-seconds by state and idle MB·s.

The core reports each container's state changes with ``now``; intervals still open
are added when a snapshot is taken, so a snapshot at ``now`` is exact. Like the
rest of the core, no I/O and no clock.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from .actions import ContainerRecord, ContainerState

__all__ = ["Usage", "UsageMeter"]

_IDLE: Final = ContainerState.IDLE  # a global is read faster than an enum class attribute


@attrs.frozen(kw_only=True)
class Usage:
    """Time spent by containers, summed over containers.

    :param container_seconds: seconds by state (``"starting"``, ``"idle"``, ``"busy"``, ``"stopping"``).
    :param idle_memory_mb_s: memory kept warm while idle, in MB·s (idle seconds x memory_mb).
    """

    container_seconds: Mapping[str, float]
    idle_memory_mb_s: float


class UsageMeter:
    def __init__(self) -> None:
        self._seconds: collections.defaultdict[str, collections.defaultdict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float)
        )
        self._idle_mb_s: collections.defaultdict[str, float] = collections.defaultdict(float)

    def record(self, rec: ContainerRecord, new_state: ContainerState, now: float) -> None:
        """``rec`` leaves its state for ``new_state`` at ``now``."""
        elapsed = now - rec.state_since
        if elapsed > 0:
            state = rec.state
            self._seconds[rec.function][state] += elapsed
            if state is _IDLE:
                self._idle_mb_s[rec.function] += elapsed * rec.memory_mb
        rec.state = new_state
        rec.state_since = now

    def snapshot(self, function: str | None, open_records: Iterable[ContainerRecord], *, now: float) -> Usage:
        functions = [function] if function is not None else list(self._seconds)
        seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        idle_mb_s = 0.0
        for name in functions:
            for state, state_s in self._seconds.get(name, {}).items():
                seconds[state] += state_s
            idle_mb_s += self._idle_mb_s.get(name, 0.0)
        for rec in open_records:
            if function is None or rec.function == function:
                elapsed = max(0.0, now - rec.state_since)
                seconds[rec.state] += elapsed
                if rec.state is ContainerState.IDLE:
                    idle_mb_s += elapsed * rec.memory_mb
        states = [s for s in ContainerState if s is not ContainerState.STOPPED]
        return Usage(container_seconds={str(s): float(seconds.get(s, 0.0)) for s in states}, idle_memory_mb_s=idle_mb_s)
