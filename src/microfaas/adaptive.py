"""microfaas's own keep-alive policy: ``AdaptiveKeepAlive``.

It prices a warm start per call and per app, learns keep-alive and pre-warm per
function from the reuse times of a shadow pool, and asks for spare containers
during bursts; the class docstring has the model. It implements
``KeepAlivePolicy`` (``policy.py``); users reach it as ``mf.AdaptiveKeepAlive``
(or through ``microfaas.keepalive``). No I/O, no clock.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Mapping

from .policy import KeepAliveDecision, KeepAlivePolicy, app_name, default_cold_start_s

__all__ = ["AdaptiveKeepAlive"]


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

    def _shadow(self, function: str) -> _Shadow:
        shadow = self._fns.get(function)
        if shadow is None:
            shadow = self._fns[function] = _Shadow(self.window, 8)
        return shadow

    def observe_arrival(self, function: str, *, now: float) -> None:
        shadow = self._shadow(function)
        shadow.prewarm_at = None
        shadow.recent.append(now)
        app = app_name(self.app_of, function)
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
        calls = self._app_calls.get(app_name(self.app_of, function))
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

    def went_idle(self, function: str, *, now: float) -> KeepAliveDecision:
        shadow = self._shadow(function)
        memory = self.memory_mb.get(function, self.reference_mb)
        if shadow.prewarm_at is not None and now >= shadow.prewarm_at:
            shadow.prewarm_at = None  # the pre-warmed container came up
            return KeepAliveDecision(ttl=self.decide(function, memory)[1])
        shadow.idle.append(now)
        prewarm, ttl = self.decide(function, memory)
        if prewarm > 0:
            shadow.prewarm_at = now + prewarm
            return KeepAliveDecision(ttl=0.0, prewarm=prewarm)
        return KeepAliveDecision(ttl=ttl)

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
