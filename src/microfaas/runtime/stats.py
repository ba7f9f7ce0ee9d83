"""Records of what the platform did: FunctionStats, Summary and ContainerInfo.

``StatsRecorder`` is the mutable tally the platform keeps per function; the
records it hands out are frozen snapshots.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from ..actions import ContainerState
from ..usage import Usage

__all__ = ["ContainerInfo", "FunctionStats", "PlatformUsage", "StatsRecorder", "Summary", "container_info"]

# Latency and init-time summaries are over the most recent samples only.
SAMPLES_KEPT: Final = 10_000


@attrs.frozen(kw_only=True)
class Summary:
    """A distribution of durations in seconds (over the latest samples)."""

    count: int = 0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, samples: Iterable[float], *, count: int | None = None) -> Summary:
        ordered = sorted(samples)
        if not ordered:
            return cls(count=count or 0)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return cls(count=count if count is not None else len(ordered), p50=pct(0.5), p99=pct(0.99), max=ordered[-1])


@attrs.frozen(kw_only=True)
class FunctionStats:
    """What happened to one function since the platform started.

    ``cold_starts`` counts invocations that waited for their container to start;
    ``warm_starts`` those served by a container that was already up. ``init_time``
    summarises whole cold starts (process start, code load and ``init``).
    """

    name: str
    invocations: int
    cold_starts: int
    warm_starts: int
    errors: int
    timeouts: int
    crashes: int
    out_of_memory: int
    throttles: int
    containers_started: int
    containers: Mapping[str, int]
    latency: Summary
    init_time: Summary
    container_seconds: Mapping[str, float] = attrs.field(factory=dict)
    idle_memory_mb_s: float = 0.0


@attrs.frozen(kw_only=True)
class PlatformUsage:
    """What the platform has held so far: the resource cost side of the trade-off.

    :param nodes: nodes held now.
    :param node_seconds: node-seconds held (a node counts from its acquisition request).
    :param container_seconds: container-seconds by state, all functions.
    :param idle_memory_mb_s: memory kept warm while idle, in MB·s.
    """

    nodes: int
    node_seconds: float
    container_seconds: Mapping[str, float]
    idle_memory_mb_s: float


@attrs.frozen(kw_only=True)
class ContainerInfo:
    """One container as the platform sees it.

    :param state: ``"starting"``, ``"idle"``, ``"busy"``, ``"stopping"`` or ``"stopped"``.
    :param pid: the worker's process id (None where the node has no local process).
    :param calls: invocations it has been given.
    :param start_s: its whole cold start, from the start request to ready (None while starting).
    :param load_s: of which loading the function in the container.
    :param init_s: of which running the function's ``init``.
    :param preloaded: the modules it inherited from its node's zygote (forked containers).
    """

    id: str
    function: str
    state: ContainerState
    node: str
    pinned: bool
    pid: int | None
    calls: int
    start_s: float | None = None
    load_s: float | None = None
    init_s: float | None = None
    preloaded: tuple[str, ...] = ()


@attrs.define(eq=False)
class StatsRecorder:
    name: str
    invocations: int = 0
    cold_starts: int = 0
    warm_starts: int = 0
    errors: int = 0
    timeouts: int = 0
    crashes: int = 0
    out_of_memory: int = 0
    throttles: int = 0
    containers_started: int = 0
    latencies: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=SAMPLES_KEPT))
    init_times: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=SAMPLES_KEPT))
    completed: int = 0

    def snapshot(self, containers: Mapping[str, int], usage: Usage) -> FunctionStats:
        return FunctionStats(
            name=self.name,
            invocations=self.invocations,
            cold_starts=self.cold_starts,
            warm_starts=self.warm_starts,
            errors=self.errors,
            timeouts=self.timeouts,
            crashes=self.crashes,
            out_of_memory=self.out_of_memory,
            throttles=self.throttles,
            containers_started=self.containers_started,
            containers=dict(containers),
            latency=Summary.of(self.latencies, count=self.completed),
            init_time=Summary.of(self.init_times, count=self.containers_started),
            container_seconds=usage.container_seconds,
            idle_memory_mb_s=usage.idle_memory_mb_s,
        )


def container_info(rec: Any, container: Any) -> ContainerInfo:
    """What ``faas.containers()`` says of the core's record ``rec`` and its running ``container`` (None: gone)."""
    return ContainerInfo(
        id=rec.id,
        function=rec.function.partition("@")[0],
        state=rec.state,
        node=rec.node_id,
        pinned=rec.pinned,
        pid=container.pid if container is not None else None,
        calls=rec.calls,
        start_s=container.start_s if container is not None else None,
        load_s=container.load_s if container is not None else None,
        init_s=container.init_s if container is not None else None,
        preloaded=getattr(container, "preloaded", ()),
    )
