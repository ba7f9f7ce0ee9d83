"""The published keep-alive policies microfaas compares against.

* ``HistogramKeepAlive``: the hybrid histogram policy of "Serverless in the Wild"
  (Shahrad et al., USENIX ATC 2020), as published but for one noted deviation.
* ``GreedyDualKeepAlive``: keep-alive as caching, FaaSCache's Greedy-Dual
  priority (Fuerst and Sharma, ASPLOS 2021).

Both implement ``KeepAlivePolicy`` (``policy.py``); users reach them as
``mf.HistogramKeepAlive`` and ``mf.GreedyDualKeepAlive`` (or through
``microfaas.keepalive``). No I/O, no clock.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .policy import KeepAliveDecision, KeepAlivePolicy, app_name, default_cold_start_s

if TYPE_CHECKING:
    from .actions import ContainerRecord

__all__ = ["GreedyDualKeepAlive", "HistogramKeepAlive"]


class _HistState:
    __slots__ = ("bins", "ended_since_arrival", "in_range", "kind", "last_end", "oob", "oob_recent", "prewarm_at", "sum_sq")

    def __init__(self, n_bins: int) -> None:
        self.bins = [0] * n_bins
        self.in_range = 0
        self.sum_sq = 0  # sum of squared bin counts, for the coefficient of variation
        self.oob = 0
        self.oob_recent: collections.deque[float] = collections.deque(maxlen=8)
        self.last_end: float | None = None
        self.ended_since_arrival = False
        self.prewarm_at: float | None = None
        self.kind = ""  # what the last decision was based on, for inspection


class HistogramKeepAlive(KeepAlivePolicy):
    """The hybrid histogram policy of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020).

    Per app, idle times (from the end of a call to the next arrival; 0 when a
    call arrives while another still runs) go into a histogram of ``range_s``
    (4 h) in ``bin_s`` (1 min) bins. When a container goes idle:

    * too many idle times out of range (more than ``oob_threshold`` of them): the
      next idle time is predicted (the paper uses ARIMA; here the mean of the last
      8 out-of-range idle times), pre-warm at 85% of it and keep 30% of it;
    * histogram not representative (coefficient of variation of the bin counts
      below ``cv_threshold``, or no idle time yet): standard keep-alive, no
      pre-warm, keep for the whole range;
    * else head = lower edge of the bin of the ``head`` (5th) percentile, tail =
      upper edge of the bin of the ``tail`` (99th) percentile; pre-warm window =
      head x (1 - margin), keep-alive window = tail x (1 + margin) - pre-warm. A
      zero pre-warm window keeps the container for the keep-alive window; else it
      is unloaded at once and a container is started after the pre-warm window
      and kept for the keep-alive window.
    """

    def __init__(
        self,
        *,
        range_s: float = 4 * 3600.0,
        bin_s: float = 60.0,
        head: float = 0.05,
        tail: float = 0.99,
        margin: float = 0.10,
        cv_threshold: float = 2.0,
        oob_threshold: float = 0.5,
        app_of: Mapping[str, str] | None = None,
    ) -> None:
        if not (bin_s > 0 and range_s >= bin_s):
            raise ValueError(f"HistogramKeepAlive: need 0 < bin_s <= range_s, got bin_s={bin_s}, range_s={range_s}")
        if not 0 <= head < tail <= 1:
            raise ValueError(f"HistogramKeepAlive: need 0 <= head < tail <= 1, got head={head}, tail={tail}")
        self.range_s, self.bin_s, self.head, self.tail, self.margin = range_s, bin_s, head, tail, margin
        self.cv_threshold, self.oob_threshold, self.app_of = cv_threshold, oob_threshold, app_of
        self.n_bins = math.ceil(range_s / bin_s)
        self._apps: dict[str, _HistState] = {}

    def _state(self, function: str) -> _HistState:
        app = app_name(self.app_of, function)
        state = self._apps.get(app)
        if state is None:
            state = self._apps[app] = _HistState(self.n_bins)
        return state

    def record_idle_time(self, function: str, idle_s: float) -> None:
        """Add one idle time to the function's app histogram (``observe_arrival`` does this)."""
        state = self._state(function)
        if idle_s >= self.range_s:
            state.oob += 1
            state.oob_recent.append(idle_s)
        else:
            i = int(idle_s // self.bin_s)
            state.sum_sq += 2 * state.bins[i] + 1
            state.bins[i] += 1
            state.in_range += 1

    def observe_arrival(self, function: str, *, now: float) -> None:
        state = self._state(function)
        if state.last_end is not None:
            self.record_idle_time(function, max(0.0, now - state.last_end) if state.ended_since_arrival else 0.0)
        state.ended_since_arrival = False
        state.prewarm_at = None

    def windows(self, function: str) -> tuple[float, float]:
        """(pre-warm window, keep-alive window) in seconds for ``function`` now."""
        state = self._state(function)
        total = state.in_range + state.oob
        if total and state.oob > self.oob_threshold * total:
            state.kind = "oob"
            predicted = sum(state.oob_recent) / len(state.oob_recent)
            return 0.85 * predicted, 0.30 * predicted
        if state.in_range == 0 or self.cv(function) < self.cv_threshold:
            state.kind = "standard"
            return 0.0, self.range_s
        state.kind = "histogram"
        head_bin = self._percentile_bin(state, self.head)
        tail_bin = self._percentile_bin(state, self.tail)
        prewarm = head_bin * self.bin_s * (1.0 - self.margin)
        keep = (tail_bin + 1) * self.bin_s * (1.0 + self.margin) - prewarm
        return prewarm, keep

    def cv(self, function: str) -> float:
        """Coefficient of variation of the bin counts of ``function``'s app."""
        state = self._state(function)
        mean = state.in_range / self.n_bins
        if mean == 0:
            return 0.0
        variance = max(0.0, state.sum_sq / self.n_bins - mean * mean)
        return math.sqrt(variance) / mean

    @staticmethod
    def _percentile_bin(state: _HistState, q: float) -> int:
        need, acc = q * state.in_range, 0
        for i, count in enumerate(state.bins):
            acc += count
            if acc >= need and acc > 0:
                return i
        return len(state.bins) - 1

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        state = self._state(function)
        if state.prewarm_at is not None and now >= state.prewarm_at:
            # The pre-warmed container came up: keep it for the keep-alive window.
            state.prewarm_at = None
            return KeepAliveDecision(ttl=self.windows(function)[1])
        state.last_end, state.ended_since_arrival = now, True
        prewarm, keep = self.windows(function)
        if prewarm > 0:
            state.prewarm_at = now + prewarm
            return KeepAliveDecision(ttl=0.0, prewarm=prewarm)
        return KeepAliveDecision(ttl=keep)


class GreedyDualKeepAlive(KeepAlivePolicy):
    """Keep-alive as caching: FaaSCache's Greedy-Dual (Fuerst and Sharma, ASPLOS 2021).

    Idle containers are kept (for ``ttl``, forever by default) and, when memory
    runs out, the idle container of lowest priority is evicted first::

        priority = clock + frequency x cold-start cost / memory

    ``clock`` is the function's clock stamp at its last use; the policy's clock
    rises to the priority of each evicted container. ``frequency`` counts the
    function's arrivals and is reset when its last container is evicted. The
    cold-start cost is ``cost[function]`` (seconds; default
    ``default_cold_start_s(memory)``).
    """

    def __init__(self, *, ttl: float = math.inf, cost: Mapping[str, float] | None = None) -> None:
        if not ttl >= 0:
            raise ValueError(f"GreedyDualKeepAlive: ttl must be >= 0 seconds, got {ttl!r}")
        self.ttl, self.cost = ttl, cost
        self._keep = KeepAliveDecision(ttl=ttl)
        self.clock = 0.0
        self.frequency: collections.Counter[str] = collections.Counter()
        self._stamp: dict[str, float] = {}

    def observe_arrival(self, function: str, *, now: float) -> None:
        self.frequency[function] += 1

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        self._stamp[function] = self.clock
        return self._keep

    def eviction_priority(self, container: ContainerRecord, *, now: float) -> float:
        function = container.function
        cost = self.cost.get(function) if self.cost is not None else None
        if cost is None:
            cost = default_cold_start_s(container.memory_mb)
        return self._stamp.get(function, self.clock) + self.frequency[function] * cost / container.memory_mb

    def evicted(self, container: ContainerRecord, *, remaining: int, now: float) -> None:
        self.clock = max(self.clock, self.eviction_priority(container, now=now))
        if remaining == 0:
            self.frequency.pop(container.function, None)
