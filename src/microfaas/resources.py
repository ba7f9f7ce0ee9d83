"""ResourceManager: which nodes exist, how full they are, and which to acquire or release.

How this works. A node stands for a VM: it has a memory capacity, costs for every
second it is held, and takes time to acquire. The manager keeps one record per
node and answers three questions for the scheduler, always given ``now``:

* ``place(memory_mb)``: the node a new container should go on -- best fit, the
  fullest node that still has room, so that work packs onto few nodes and the
  rest can be released (OpenWhisk's and Knative's bin-packing placement does the
  same);
* ``acquire(now)``: a new node, when the scheduler found no room and the cap
  allows one (the shell carries out the ``AcquireNode`` action and reports back);
* ``expire(now)``: the empty nodes held longer than ``release_after``.

A node's capacity is never exceeded: every reservation goes through ``reserve``.
Like the scheduler, this module does no I/O and reads no clock.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

__all__ = ["AcquireNode", "NodeRecord", "NodeState", "ReleaseNode", "ResourceManager"]

# Released nodes are forgotten; a node id is never reused.
_NODE_PREFIX: Final = "n-"


class NodeState(enum.StrEnum):
    ACQUIRING = "acquiring"
    READY = "ready"


@attrs.frozen(kw_only=True)
class AcquireNode:
    """Acquire node ``node_id`` (boot the VM), then report ``node_acquired``."""

    node_id: str


@attrs.frozen(kw_only=True)
class ReleaseNode:
    """Release node ``node_id``; it holds no containers."""

    node_id: str


@attrs.define(eq=False, kw_only=True)
class NodeRecord:
    id: str
    capacity_mb: int
    state: NodeState
    used_mb: int = 0
    containers: int = 0
    # When the node last became empty (or was acquired empty); None while it holds containers.
    empty_since: float | None = None
    acquired_at: float | None = None
    held_since: float = 0.0  # when it was asked for: a VM costs from its boot

    @property
    def free_mb(self) -> int:
        return self.capacity_mb - self.used_mb


class ResourceManager:
    """Node bookkeeping for the scheduler.

    :param node_memory_mb: capacity of every node.
    :param max_nodes: how many nodes may be held at once.
    :param min_nodes: nodes kept even when empty.
    :param release_after: seconds an empty node is kept before it is released.
    """

    def __init__(self, *, node_memory_mb: int, max_nodes: int = 1, min_nodes: int = 0, release_after: float = 30.0) -> None:
        if node_memory_mb < 1:
            raise ValueError(f"node_memory_mb must be >= 1, got {node_memory_mb}")
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        if not 0 <= min_nodes <= max_nodes:
            raise ValueError(f"min_nodes must be between 0 and max_nodes={max_nodes}, got {min_nodes}")
        if release_after < 0:
            raise ValueError(f"release_after must be >= 0, got {release_after}")
        self.node_memory_mb = node_memory_mb
        self.max_nodes = max_nodes
        self.min_nodes = min_nodes
        self.release_after = release_after
        self.nodes: dict[str, NodeRecord] = {}
        self._next_id = 1
        self._released_node_seconds = 0.0
        # Ready nodes holding no container: the candidates for release.
        self._empty: dict[str, NodeRecord] = {}
        #: Counts the changes that can bring ``next_wake`` earlier (a node acquired or emptied).
        self.wake_epoch = 0

    # -- questions -------------------------------------------------------------------

    def place(self, memory_mb: int) -> str | None:
        """Best fit: the fullest node (ready or acquiring) with ``memory_mb`` free."""
        best: NodeRecord | None = None
        for node in self.nodes.values():
            if node.free_mb >= memory_mb and (best is None or node.free_mb < best.free_mb):
                best = node
        return best.id if best is not None else None

    def fits_a_node(self, memory_mb: int) -> bool:
        return memory_mb <= self.node_memory_mb

    def can_acquire(self) -> bool:
        return len(self.nodes) < self.max_nodes

    def is_ready(self, node_id: str) -> bool:
        return self.nodes[node_id].state is NodeState.READY

    # -- changes ---------------------------------------------------------------------

    def acquire(self, *, now: float) -> AcquireNode:
        if not self.can_acquire():
            raise RuntimeError(f"cannot acquire a node: already holding max_nodes={self.max_nodes}")
        node_id = f"{_NODE_PREFIX}{self._next_id}"
        self._next_id += 1
        self.wake_epoch += 1
        self.nodes[node_id] = NodeRecord(
            id=node_id, capacity_mb=self.node_memory_mb, state=NodeState.ACQUIRING, empty_since=now, held_since=now
        )
        return AcquireNode(node_id=node_id)

    def node_acquired(self, node_id: str, *, now: float) -> None:
        node = self.nodes[node_id]
        node.state = NodeState.READY
        node.acquired_at = now
        if node.containers == 0:
            node.empty_since = now
            self._empty[node_id] = node
            self.wake_epoch += 1

    def node_lost(self, node_id: str, *, now: float) -> None:
        """The node failed to come up or vanished; forget it (its containers are gone too)."""
        node = self.nodes.pop(node_id, None)
        self._empty.pop(node_id, None)
        if node is not None:
            self._released_node_seconds += now - node.held_since

    def reserve(self, node_id: str, memory_mb: int) -> None:
        node = self.nodes[node_id]
        if memory_mb > node.free_mb:
            raise RuntimeError(f"node {node_id} has {node.free_mb} MB free, cannot reserve {memory_mb} MB")
        node.used_mb += memory_mb
        node.containers += 1
        node.empty_since = None
        self._empty.pop(node_id, None)

    def free(self, node_id: str, memory_mb: int, *, now: float) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        node.used_mb -= memory_mb
        node.containers -= 1
        if node.containers == 0:
            node.empty_since = now
            if node.state is NodeState.READY:
                self._empty[node_id] = node
                self.wake_epoch += 1

    def expire(self, *, now: float) -> list[ReleaseNode]:
        """Release nodes that have been empty for ``release_after`` (keeping ``min_nodes``)."""
        releases: list[ReleaseNode] = []
        spare = len(self.nodes) - self.min_nodes
        if spare <= 0:
            return releases
        for node in sorted(self._empty.values(), key=lambda n: n.empty_since or 0.0):
            if spare <= 0:
                break
            if node.empty_since is not None and now >= node.empty_since + self.release_after:
                del self.nodes[node.id]
                del self._empty[node.id]
                self._released_node_seconds += now - node.held_since
                releases.append(ReleaseNode(node_id=node.id))
                spare -= 1
        return releases

    def release_all(self, *, now: float) -> list[ReleaseNode]:
        releases = [ReleaseNode(node_id=node_id) for node_id in self.nodes]
        self._released_node_seconds += sum(now - node.held_since for node in self.nodes.values())
        self.nodes.clear()
        self._empty.clear()
        return releases

    def node_seconds(self, *, now: float) -> float:
        """Node-seconds held so far (what the VMs cost), counting from each acquisition request."""
        return self._released_node_seconds + sum(now - node.held_since for node in self.nodes.values())

    def next_wake(self) -> float | None:
        if len(self.nodes) <= self.min_nodes:
            return None
        times = [n.empty_since + self.release_after for n in self._empty.values() if n.empty_since is not None]
        return min(times, default=None)
