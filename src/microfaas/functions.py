"""Per-function bookkeeping of the scheduler core: a function's containers, free slots and waiting requests.

How this works. The scheduler keeps one ``FunctionState`` per registered
function. It holds the function's live containers (starting, idle, busy), the
ones with a free slot in most-recently-used order (a warm pick takes the last),
the FIFO of requests waiting for a slot, and the counts that decide how many
containers to start: ``starting_slots`` (slots of containers on their way) and
``queued_starts`` (its starts waiting in the scheduler's shared capacity queue).
A start is needed while ``deficit() > 0`` and the function ``can_grow()``.

It also decides pipelining. The shell reports how long calls ran
(``call_took``); while the running average stays under ``PIPELINE_MAX_CALL_S``,
a function of concurrency 1 that cannot grow has a request that would wait sent
to the busy container with the fewest calls queued in it (``pipeline_to``), as long
as that container holds less than ``PIPELINE_QUEUED_WORK_S`` of queued work
(``pipeline_room``).

Records only: the scheduler makes every decision that hands out an action. No
I/O, no clock.
"""

from __future__ import annotations

import collections
import math
from typing import Final

import attrs

from .actions import ContainerRecord, ContainerState, FunctionProfile

__all__ = ["PIPELINE_MAX_CALL_S", "PIPELINE_QUEUED_WORK_S", "FunctionState"]

# Calls are pipelined only while a function's recent average call is shorter than this:
# there a round trip to the platform between calls is a large part of the work.
PIPELINE_MAX_CALL_S: Final = 0.001
# A busy container holds no more queued calls than this much work by the recent average:
# about the longest a pipelined call waits on the calls queued ahead of it.
PIPELINE_QUEUED_WORK_S: Final = 0.001
# Weight of the newest call in the running average of call durations.
_RECENT_WEIGHT: Final = 0.125


@attrs.define(eq=False)
class FunctionState:
    """The scheduler's mutable bookkeeping for one function."""

    profile: FunctionProfile
    containers: dict[str, ContainerRecord] = attrs.Factory(dict)
    # Containers with a free slot, most recently used last.
    available: dict[str, None] = attrs.Factory(dict)
    waiting: collections.deque[str] = attrs.Factory(collections.deque)
    starting_slots: int = 0
    queued_starts: int = 0  # entries of this function in the shared capacity queue
    start_failures: int = 0  # consecutive failed starts (a pinned start backs off by them)
    recent_call_s: float = math.inf  # running average of call durations (inf: none reported yet)

    def can_grow(self) -> bool:
        """Whether another container may be started or queued under ``max_containers``."""
        cap = self.profile.max_containers
        return cap is None or len(self.containers) + self.queued_starts < cap

    def deficit(self) -> int:
        """Waiting requests not covered by a starting or queued container."""
        covered = self.starting_slots + self.queued_starts * self.profile.concurrency
        return len(self.waiting) - covered

    def pinned_live(self) -> int:
        return sum(1 for c in self.containers.values() if c.pinned)

    def call_took(self, duration_s: float) -> None:
        """A call ran ``duration_s``: update the running average that decides pipelining."""
        recent = self.recent_call_s
        self.recent_call_s = duration_s if recent == math.inf else recent + _RECENT_WEIGHT * (duration_s - recent)

    def may_pipeline(self) -> bool:
        return self.profile.concurrency == 1 and self.recent_call_s < PIPELINE_MAX_CALL_S and not self.can_grow()

    def pipeline_room(self, depth: int) -> int:
        """How many calls a busy container may hold queued now: ``depth`` at most, and no more
        than ``PIPELINE_QUEUED_WORK_S`` of work by the recent average (0: do not pipeline)."""
        if not self.may_pipeline():
            return 0
        recent = self.recent_call_s
        return depth if recent <= 0.0 else min(depth, max(1, int(PIPELINE_QUEUED_WORK_S / recent)))

    def pipeline_to(self, depth: int) -> ContainerRecord | None:
        """The busy container to queue a call on: the one with the fewest queued (None: do not pipeline)."""
        room = self.pipeline_room(depth)
        if not room:
            return None
        best = None
        for rec in self.containers.values():
            if rec.state is ContainerState.BUSY and rec.queued < room and (best is None or rec.queued < best.queued):
                best = rec
        return best
