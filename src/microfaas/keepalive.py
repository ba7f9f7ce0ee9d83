"""Keep-alive policies: how long an idle container is kept for reuse.

How this works. After a container's last slot frees, the scheduler asks the
policy for the function's keep-alive (``ttl_for``); the container is stopped once
it has been idle that long. A function that sets ``idle_timeout`` uses that value
and the policy is not asked. Policies see every arrival (``observe_arrival``) so
that learning policies can adapt. They do no I/O and read no clock: time is the
``now`` they are given.

* ``FixedKeepAlive(ttl)``: the same keep-alive for every function -- AWS Lambda's
  and OpenWhisk's choice; 600 s by default (Lambda keeps idle environments for
  roughly 5-15 minutes).
* ``NeverUnload()``: idle containers are kept forever (until evicted under memory
  pressure).
* ``HistogramKeepAlive()``: the hybrid policy of "Serverless in the Wild", as published.
* ``GreedyDualKeepAlive()``: FaaSCache's eviction priority.
* ``AdaptiveKeepAlive()``: ours -- keep-alive and pre-warm from observed reuse
  times, priced per call and per app, and spares during bursts.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from .validation import at_least

if TYPE_CHECKING:
    from .actions import ContainerRecord

__all__ = [
    "AdaptiveKeepAlive",
    "FixedKeepAlive",
    "GreedyDualKeepAlive",
    "HistogramKeepAlive",
    "KeepAlivePolicy",
    "NeverUnload",
    "default_cold_start_s",
]


def default_cold_start_s(memory_mb: float) -> float:
    """The cold start assumed when none is measured: 0.5 s plus 0.5 s per GB of memory."""
    return 0.5 + 0.5 * memory_mb / 1024.0


class KeepAlivePolicy:
    """Base of keep-alive policies: how long idle containers are kept, and when to pre-warm.

    Override ``ttl_for``; override ``observe_arrival`` to learn from arrivals and
    ``prewarm_delay`` to ask for a container to be started ahead of the next call
    (the hybrid policy of "Serverless in the Wild" unloads at once and pre-warms
    just before the predicted next invocation).
    """

    def observe_arrival(self, function: str, *, now: float) -> None:
        """An invocation of ``function`` arrived at ``now``."""
        return None

    def ttl_for(self, function: str, *, now: float) -> float:
        """Seconds to keep an idle container of ``function`` that went idle at ``now``."""
        raise NotImplementedError

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        """A container of ``function`` went idle at ``now``: start one this many seconds
        later if none is up by then (None: do not pre-warm)."""
        return None

    def function_added(self, function: str, *, memory_mb: int) -> None:
        """The scheduler registered ``function``, whose containers take ``memory_mb``."""
        return None

    def spares(self, function: str, *, cold: bool, now: float) -> int:
        """A request of ``function`` arrived and left no free container: it took the last one,
        or (``cold``) found none and waits for a start. Return how many containers should
        stand ready beyond the waiting requests -- idle or starting -- for the calls that may
        follow; the scheduler starts them if there is room without evicting (0: none, the
        default).
        Azure Functions' Premium plan keeps one such pre-warmed instance as a buffer."""
        return 0

    def spare_ttl(self, function: str, *, now: float) -> float:
        """Seconds to keep a spare that came up and was not used yet (asked instead of
        ``ttl_for``, which is about a container whose call ended)."""
        return 60.0

    def eviction_priority(self, container: ContainerRecord, *, now: float) -> float:
        """Under memory pressure idle containers are evicted lowest priority first.

        The default is the time of last use: least recently used first."""
        return container.last_used

    def evicted(self, container: ContainerRecord, *, remaining: int, now: float) -> None:
        """``container`` was evicted; ``remaining`` containers of its function are left."""
        return None


_non_negative = at_least(0, unit=" seconds")


@attrs.frozen
class FixedKeepAlive(KeepAlivePolicy):
    """Keep idle containers for ``ttl`` seconds (default 600, ten minutes)."""

    ttl: float = attrs.field(default=600.0, converter=float, validator=_non_negative)

    def ttl_for(self, function: str, *, now: float) -> float:
        return self.ttl


@attrs.frozen
class NeverUnload(KeepAlivePolicy):
    """Never stop an idle container for idleness."""

    def ttl_for(self, function: str, *, now: float) -> float:
        return math.inf


def _app_of(app_of: Mapping[str, str] | None, function: str) -> str:
    return function if app_of is None else app_of.get(function, function)


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
        self._decision: tuple[str, float, float | None] = ("", 0.0, None)

    def _state(self, function: str) -> _HistState:
        app = _app_of(self.app_of, function)
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

    def ttl_for(self, function: str, *, now: float) -> float:
        state = self._state(function)
        if state.prewarm_at is not None and now >= state.prewarm_at:
            # The pre-warmed container came up: keep it for the keep-alive window.
            state.prewarm_at = None
            self._decision = (function, now, None)
            return self.windows(function)[1]
        state.last_end, state.ended_since_arrival = now, True
        prewarm, keep = self.windows(function)
        if prewarm > 0:
            self._decision = (function, now, prewarm)
            return 0.0
        self._decision = (function, now, None)
        return keep

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        decided_for, at, prewarm = self._decision
        if decided_for != function or at != now or prewarm is None:
            return None
        self._state(function).prewarm_at = now + prewarm
        return prewarm


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
        self.clock = 0.0
        self.frequency: collections.Counter[str] = collections.Counter()
        self._stamp: dict[str, float] = {}

    def observe_arrival(self, function: str, *, now: float) -> None:
        self.frequency[function] += 1

    def ttl_for(self, function: str, *, now: float) -> float:
        self._stamp[function] = self.clock
        return self.ttl

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


class _Shadow:
    __slots__ = ("fresh", "idle", "last_cold", "prewarm", "prewarm_at", "recent", "samples", "ttl")

    def __init__(self, window: int, burst: int) -> None:
        self.idle: list[float] = []  # went-idle times of the shadow's idle containers, oldest first
        self.samples: collections.deque[float] = collections.deque(maxlen=window)
        self.fresh = 0  # samples since the last decision
        self.prewarm: float = 0.0
        self.ttl: float | None = None
        self.prewarm_at: float | None = None
        self.recent: collections.deque[float] = collections.deque(maxlen=burst)  # last arrival times
        self.last_cold = -math.inf  # when a call last found no free container


class AdaptiveKeepAlive(KeepAlivePolicy):
    """Per-function keep-alive, pre-warm and burst spares chosen by cost and benefit.

    microfaas's own policy. For each function it runs a *shadow* of the pool as
    if idle containers were never stopped -- the same most-recently-used reuse
    the scheduler does -- and records, for every idle period, how long it lasted
    until a call reused that container (``inf`` when none did within
    ``horizon_s``). Unlike an app-level idle-time histogram, these reuse times
    see bursts: the spare containers a burst leaves behind show up as long or
    infinite reuse times, so they are let go quickly, while the container that
    the next call will reuse is kept.

    What a warm start is worth, in seconds of the function's container::

        value = (value_s + app_value_s / calls of its app in the last day) x reference_mb / memory_mb

    ``value_s`` prices every call alike (total cold starts); ``app_value_s`` is
    what turning a whole app from all-cold to all-warm is worth, so a call of a
    rare app is worth more (the per-app cold-start ratio, the paper's metric).

    From the last ``window`` reuse times ``d`` it picks the pre-warm delay ``p``
    (0: none) and keep-alive ``t`` that maximise, summed over the samples::

        value x [call would be warm]  -  seconds kept idle

    where a call is warm if ``p + cold_start <= d <= t`` and the container is
    idle from ``p + cold_start`` (0 without pre-warm) until ``min(d, t)``. With
    fewer than ``min_samples`` samples it keeps a container for ``value``
    seconds (at most ``horizon_s``): the break-even rule of ski rental, which
    never pays more than twice the best choice in hindsight.

    Bursts (``spares=True``): when a call finds no free container, or follows
    another within ``burst_window_s``, the policy asks the scheduler for spare
    containers -- as many as calls are expected during one cold start at the
    recent arrival rate (``m``), ``max(1, ceil(m + sqrt(m)))`` -- so that the next
    calls of a burst find one warm; an unused spare is kept ``burst_window_s``.
    """

    def __init__(
        self,
        *,
        value_s: float = 5000.0,
        app_value_s: float = 400_000.0,
        reference_mb: float = 1024.0,
        window: int = 128,
        horizon_s: float = 4 * 3600.0,
        default_ttl: float | None = None,
        min_samples: int = 4,
        margin: float = 0.05,
        min_prewarm_s: float = 60.0,
        spares: bool = True,
        burst_window_s: float = 60.0,
        cold_start: Mapping[str, float] | None = None,
        app_of: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (("value_s", value_s), ("app_value_s", app_value_s), ("burst_window_s", burst_window_s)):
            if not value >= 0:
                raise ValueError(f"AdaptiveKeepAlive: {name} must be >= 0, got {value!r}")
        if not horizon_s > 0:
            raise ValueError(f"AdaptiveKeepAlive: horizon_s must be > 0 seconds, got {horizon_s!r}")
        self.value_s, self.app_value_s, self.reference_mb = value_s, app_value_s, reference_mb
        self.window, self.horizon_s, self.default_ttl = window, horizon_s, default_ttl
        self.min_samples, self.margin, self.min_prewarm_s = min_samples, margin, min_prewarm_s
        self.use_spares, self.burst_window_s = spares, burst_window_s
        self.cold_start, self.app_of = cold_start, app_of
        self.memory_mb: dict[str, float] = {}
        self._fns: dict[str, _Shadow] = {}
        self._app_calls: dict[str, collections.deque[float]] = {}  # app -> arrival times in the last day
        self._decision: tuple[str, float, float] = ("", 0.0, 0.0)

    def _shadow(self, function: str) -> _Shadow:
        shadow = self._fns.get(function)
        if shadow is None:
            shadow = self._fns[function] = _Shadow(self.window, 8)
        return shadow

    def observe_arrival(self, function: str, *, now: float) -> None:
        shadow = self._shadow(function)
        shadow.prewarm_at = None
        shadow.recent.append(now)
        app = _app_of(self.app_of, function)
        calls = self._app_calls.get(app)
        if calls is None:
            calls = self._app_calls[app] = collections.deque()
        calls.append(now)
        while calls[0] < now - 86_400.0:
            calls.popleft()
        idle = shadow.idle
        cutoff = now - self.horizon_s
        dropped = 0
        while dropped < len(idle) and idle[dropped] < cutoff:
            dropped += 1
        if dropped:
            del idle[:dropped]
            shadow.samples.extend([math.inf] * min(dropped, self.window))
            shadow.fresh += dropped
        if idle:
            shadow.samples.append(now - idle.pop())
            shadow.fresh += 1

    def value(self, function: str, memory_mb: float) -> float:
        """What one warm start of ``function`` is worth now, in seconds of its container."""
        calls = self._app_calls.get(_app_of(self.app_of, function))
        per_call = self.value_s + self.app_value_s / max(1, len(calls) if calls else 0)
        return per_call * self.reference_mb / memory_mb

    def decide(self, function: str, memory_mb: float) -> tuple[float, float]:
        """(pre-warm delay, keep-alive) for ``function`` from its samples."""
        shadow = self._shadow(function)
        n = len(shadow.samples)
        if n >= self.min_samples and shadow.ttl is not None and shadow.fresh * 8 < n:
            return shadow.prewarm, shadow.ttl  # decided lately: re-decide after n/8 new samples
        value = self.value(function, memory_mb)
        if n < self.min_samples:
            if self.default_ttl is not None:
                return 0.0, self.default_ttl
            return 0.0, min(value, self.horizon_s)
        shadow.fresh = 0
        d = sorted(shadow.samples)
        cold = self._cold(function, memory_mb)
        best = (0.0, 0.0, 0.0)  # score, prewarm, ttl
        finite = [x for x in d if x < math.inf]
        # Pre-warm candidates: just before the low quantiles of long reuse times.
        starts = [0.0]
        if finite and finite[len(finite) // 2] > 4 * cold + 60.0:
            for q in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
                x = finite[int(q * (len(finite) - 1))]
                p = x * (1 - self.margin) - cold
                if p >= self.min_prewarm_s:
                    starts.append(p)
        prefix = [0.0]
        for x in finite:
            prefix.append(prefix[-1] + x)
        stretch, horizon = 1 + self.margin, self.horizon_s
        for p in starts:
            up = p + cold if p > 0 else 0.0
            i = bisect.bisect_left(finite, up)
            for j in range(i, len(finite)):
                t = finite[j] * stretch
                if t > horizon:
                    t = horizon
                k = bisect.bisect_right(finite, t)  # samples i..k-1 are warm
                hits = k - i
                kept = prefix[k] - prefix[i] - up * hits
                score = value * hits - kept - (t - up) * (n - i - hits)
                if score > best[0]:
                    best = (score, p, t - up if p > 0 else t)
        shadow.prewarm, shadow.ttl = best[1], best[2]
        return shadow.prewarm, shadow.ttl

    def function_added(self, function: str, *, memory_mb: int) -> None:
        self.memory_mb[function] = memory_mb

    def _cold(self, function: str, memory_mb: float) -> float:
        if self.cold_start is not None and function in self.cold_start:
            return self.cold_start[function]
        return default_cold_start_s(memory_mb)

    def ttl_for(self, function: str, *, now: float) -> float:
        shadow = self._shadow(function)
        memory = self.memory_mb.get(function, self.reference_mb)
        if shadow.prewarm_at is not None and now >= shadow.prewarm_at:
            shadow.prewarm_at = None  # the pre-warmed container came up
            self._decision = (function, now, 0.0)
            return self.decide(function, memory)[1]
        shadow.idle.append(now)
        prewarm, ttl = self.decide(function, memory)
        self._decision = (function, now, prewarm)
        return 0.0 if prewarm > 0 else ttl

    def prewarm_delay(self, function: str, *, now: float) -> float | None:
        decided_for, at, prewarm = self._decision
        if decided_for != function or at != now or prewarm <= 0:
            return None
        self._shadow(function).prewarm_at = now + prewarm
        return prewarm

    def spares(self, function: str, *, cold: bool, now: float) -> int:
        if not self.use_spares:
            return 0
        shadow = self._shadow(function)
        recent, window = shadow.recent, self.burst_window_s
        if cold:
            shadow.last_cold = now
        elif now - shadow.last_cold > window:
            return 0  # the pool ran dry, but no call waited for a start lately: no burst
        first, count = now, 0
        for t in recent:  # oldest first
            if now - t <= window:
                if count == 0:
                    first = t
                count += 1
        rate = (count - 1) / (now - first) if count >= 2 and now > first else 0.0
        m = rate * self._cold(function, self.memory_mb.get(function, self.reference_mb))
        return max(1, math.ceil(m + math.sqrt(m)))

    def spare_ttl(self, function: str, *, now: float) -> float:
        return self.burst_window_s
