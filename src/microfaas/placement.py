"""Where a new container goes, what is evicted to make room for it, and what waits for room.

How this works. A start first asks ``ResourceManager.place`` for the best-fit
node (ready or still being acquired). With none, it acquires a node if the cap
allows: the container is reserved on it at once and gets its
``StartContainer`` when the node is up. Only then does it evict: the idle,
unpinned containers of lowest ``eviction_priority`` (the keep-alive policy's;
least recently used by default), counted per node until one node would have
room; just those are stopped. A start that still finds no room waits in one
FIFO shared by all functions (``queue``), drained strictly in order so that a
large function is not overtaken forever by small ones; while it is not empty,
every new start joins its end.

``provision`` covers a function's waiting requests (its ``deficit``),
``drain`` retries the queue whenever room may have appeared, ``start_spares``
starts containers ahead of demand (never evicting, never queueing). The
scheduler decides when; this module decides where. No I/O, no clock.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from .actions import Action, ContainerRecord, ContainerState, StartContainer
from .containers import ContainerBook
from .functions import FunctionState
from .keepalive import KeepAlivePolicy
from .resources import ResourceManager

__all__ = ["Placement"]


class Placement:
    """Starts containers where they fit, for one scheduler.

    :param resources: the node bookkeeping.
    :param functions: the scheduler's per-function bookkeeping, by name.
    :param book: the scheduler's container records.
    :param keep_alive: the policy whose ``eviction_priority`` orders evictions.
    """

    def __init__(
        self, resources: ResourceManager, functions: Mapping[str, FunctionState], book: ContainerBook, keep_alive: KeepAlivePolicy
    ) -> None:
        self.resources = resources
        self.functions = functions
        self.book = book
        self.keep_alive = keep_alive
        self.queue: collections.deque[str] = collections.deque()  # function names, one entry per queued start

    def provision(self, fn: FunctionState, now: float) -> list[Action]:
        """Start (or queue) containers for the waiting requests not yet covered."""
        actions: list[Action] = []
        while fn.deficit() > 0 and fn.can_grow():
            started = None if self.queue else self.start(fn, pinned=False, now=now)
            if started is None:
                self.queue.append(fn.profile.name)
                fn.queued_starts += 1
            else:
                actions += started
        return actions

    def drain(self, now: float) -> list[Action]:
        """Start queued containers in FIFO order while they fit; stop at the first that does not."""
        actions: list[Action] = []
        queue = self.queue
        while queue:
            fn = self.functions[queue[0]]
            fn.queued_starts -= 1
            if fn.deficit() <= 0:
                queue.popleft()
                continue
            started = self.start(fn, pinned=False, now=now)
            if started is None:
                fn.queued_starts += 1
                break
            queue.popleft()
            actions += started
        return actions

    def start_spares(self, fn: FunctionState, spares: int, now: float) -> list[Action]:
        """Start containers until ``spares`` are starting beyond the waiting requests (called when
        no container has a free slot).

        Spares never evict and never queue for room: they are a bet on demand, not demand."""
        concurrency = fn.profile.concurrency
        free = fn.starting_slots - len(fn.waiting)  # slots starting that no waiting request claims
        actions: list[Action] = []
        memory_mb = fn.profile.memory_mb
        while free < spares * concurrency and fn.can_grow() and not self.queue:
            if self.resources.place(memory_mb) is None and not self.resources.can_acquire():
                break
            started = self.start(fn, pinned=False, now=now, spare=True)
            if started is None:  # pragma: no cover - place/can_acquire said there was room
                break
            actions += started
            free += concurrency
        return actions

    def start(self, fn: FunctionState, *, pinned: bool, now: float, spare: bool = False) -> list[Action] | None:
        """Reserve room for a new container of ``fn`` and start it; None when nothing fits."""
        memory_mb = fn.profile.memory_mb
        actions: list[Action] = []
        node_id = self.resources.place(memory_mb)
        if node_id is None and self.resources.can_acquire():
            acquire = self.resources.acquire(now=now)
            actions.append(acquire)
            node_id = acquire.node_id
        if node_id is None:
            evictions = self._evict_for(memory_mb, now)
            if not evictions:
                return None
            actions += evictions
            node_id = self.resources.place(memory_mb)
            assert node_id is not None, "eviction freed room that placement cannot find"
        self.resources.reserve(node_id, memory_mb)
        rec = self.book.new(fn, node_id, pinned=pinned, spare=spare, now=now)
        if not rec.awaiting_node:
            actions.append(StartContainer(container_id=rec.id, function=rec.function, node_id=node_id, pinned=pinned))
        return actions

    def _evict_for(self, memory_mb: int, now: float) -> list[Action]:
        """Stop the idle, unpinned containers of lowest eviction priority that make room on one node.

        The priority is the policy's ``eviction_priority``: by default the time of
        last use, so the least recently used go first."""
        priority = self.keep_alive.eviction_priority
        idle = sorted(
            (c for c in self.book.live.values() if c.state is ContainerState.IDLE and not c.pinned),
            key=lambda c: priority(c, now=now),
        )
        chosen: dict[str, list[ContainerRecord]] = collections.defaultdict(list)
        freed: dict[str, int] = collections.defaultdict(int)
        for rec in idle:
            chosen[rec.node_id].append(rec)
            freed[rec.node_id] += rec.memory_mb
            if self.resources.nodes[rec.node_id].free_mb + freed[rec.node_id] >= memory_mb:
                stops: list[Action] = [self.book.stop(victim, "evicted", now) for victim in chosen[rec.node_id]]
                for victim in chosen[rec.node_id]:
                    self.keep_alive.evicted(victim, remaining=len(self.functions[victim.function].containers), now=now)
                return stops
        return []
