"""Timers: ``mf.Every(seconds)`` and ``mf.Cron(expr, tz)`` triggers, one ``TimerSource`` each.

How this works. A timer's schedule is a series of due times: for ``Every(p)`` the
multiples ``first + k*p`` (k >= 1) of the period after ``first``, the moment the
platform started the timer; for ``Cron`` the times ``cron.next_after`` gives, in its
time zone. The timer sleeps (with anyio) until the next due time, then fires: it
invokes the function with a ``Tick(name, scheduled_at, fired_at, skipped)``, retried
per the function's ``retries`` like a spawned call, and dead-lettered with
``source="timer:<name>"`` when every attempt fails.

Ticks are not stacked. A timer has one invocation at a time, retries included; the
due times that pass while it runs (or while the event loop was too busy to wake
the timer) are skipped: the timer fires once, for the latest due time that has
passed, and counts the skipped ones in that ``Tick.skipped`` and in
``source.skipped``. This is how Kubernetes' ``concurrencyPolicy: Forbid`` and
EventBridge's "at most one run" behave, rather than a queue of late ticks.

Clocks. Due times, ``scheduled_at`` and ``fired_at`` are wall-clock
(``time.time()``); the wait is re-checked at least once a minute, so a wall-clock
jump is noticed within a minute.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

from ..events import Tick
from ..runtime.call import Call
from ..runtime.delivery import CallDelivery
from ..runtime.shipping import dump_args
from .triggers import Cron, Every

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..runtime.delivery import SourceRuntime
    from ..spec import FunctionSpec, Retries

__all__ = ["TimerSource", "build_timer_sources", "catch_up", "next_fire"]

# The longest single sleep; the wall clock is re-read after it.
MAX_SLEEP: Final = 60.0
# Cron due times counted one by one when catching up; past this the count is estimated as this.
MAX_SKIP_COUNT: Final = 100_000


def next_fire(trigger: Every | Cron, now: float, first: float) -> float:
    """The first due time strictly after ``now`` of a timer whose schedule began at ``first``.

    ``Every``: the next multiple of the period after ``first``; ``Cron``: ``trigger.next_after(now)``.
    """
    if isinstance(trigger, Every):
        k = max(1, math.floor((now - first) / trigger.seconds) + 1)
        due = first + k * trigger.seconds
        while due <= now:  # float rounding
            k += 1
            due = first + k * trigger.seconds
        return due
    return trigger.next_after(now)


def catch_up(trigger: Every | Cron, due: float, now: float, first: float) -> tuple[float, int]:
    """The latest due time at or before ``now`` (``due`` being the earliest one not yet fired), and how many were skipped.

    When the timer wakes on time that is ``(due, 0)``; after a long invocation it is the
    most recent due time and the count of those before it that were passed over.
    """
    if now < due:
        return due, 0
    if isinstance(trigger, Every):
        skipped = max(0, math.floor((now - due) / trigger.seconds))
        latest = due + skipped * trigger.seconds
        while latest > now and skipped > 0:  # float rounding
            skipped -= 1
            latest = due + skipped * trigger.seconds
        return latest, skipped
    latest, skipped = due, 0
    while skipped < MAX_SKIP_COUNT:
        following = trigger.next_after(latest)
        if following > now:
            break
        latest, skipped = following, skipped + 1
    else:
        latest = _latest_cron_before(trigger, now)
    return latest, skipped


def _latest_cron_before(trigger: Cron, now: float) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import croniter

    start = datetime.fromtimestamp(now, ZoneInfo(trigger.tz))
    latest = float(croniter.croniter(trigger.expr, start).get_prev(float))
    return now if trigger.next_after(latest) <= now else latest  # ``now`` itself may be due


class TimerSource:
    """A running timer: ``faas.source("timer:<name>")``. ``fired`` and ``skipped`` count its ticks."""

    def __init__(self, name: str, function: str, trigger: Every | Cron) -> None:
        self.name = name
        self.function = function
        self.trigger = trigger
        self.key = f"timer:{name}"
        self.fired = 0
        self.skipped = 0
        self.next_due: float | None = None
        self.retries: Retries | None = None  # the function's (set when it starts; a new version's replace them)
        self._running = False
        self._stopping = False
        self._wait: anyio.CancelScope | None = None  # the wait for the next due time

    def __repr__(self) -> str:
        return f"<timer {self.name!r} of {self.function}: {self.trigger!r}>"

    def stop(self) -> None:
        """Fire no more: at once when waiting, else once the running tick is handled."""
        self._stopping = True
        if self._wait is not None:
            self._wait.cancel()

    async def run(self, runtime: SourceRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self.retries is None:
            self.retries = runtime.function(self.function).retries
        first = time.time()
        due = next_fire(self.trigger, first, first)
        task_status.started()
        while not self._stopping:
            self.next_due = due
            with anyio.CancelScope() as self._wait:
                while (now := time.time()) < due:  # noqa: ASYNC110 - waiting on the wall clock, re-read after each sleep
                    await anyio.sleep(min(due - now, MAX_SLEEP))
            if self._stopping:
                return
            scheduled, skipped = catch_up(self.trigger, due, now, first)
            self.skipped += skipped
            self.fired += 1
            tick = Tick(name=self.name, scheduled_at=scheduled, fired_at=now, skipped=skipped)
            call: Call[None] = Call(runtime.new_invocation_id(), self.function)
            self._running = True
            try:
                delivery = CallDelivery(self.function, self.key, call.id, dump_args(self.function, (tick,), {}), tick)
                await runtime.run_call(call, delivery, self.retries)
            finally:
                self._running = False
            due = next_fire(self.trigger, scheduled, first)

    def pending(self) -> list[str]:
        if self._running:
            return [f"a tick of timer {self.name!r} for {self.function}"]
        return []


def build_timer_sources(functions: Mapping[str, FunctionSpec]) -> list[TimerSource]:
    """One ``TimerSource`` per ``Every``/``Cron`` trigger of ``functions``.

    A timer is named by its trigger's ``name``, else by its function; a function with
    several unnamed timers names them ``fn#0``, ``fn#1``, ... (by position among its timers).

    :raises ValueError: two timers have the same name.
    """
    sources: list[TimerSource] = []
    owners: dict[str, str] = {}
    for function, spec in functions.items():
        timers = [t for t in spec.triggers if isinstance(t, Every | Cron)]
        for i, trigger in enumerate(timers):
            name = trigger.name if trigger.name is not None else (function if len(timers) == 1 else f"{function}#{i}")
            if name in owners:
                raise ValueError(
                    f"{function}: timer name {name!r} is already used by a timer of {owners[name]}; pass name=... to tell them apart"
                )
            owners[name] = function
            sources.append(TimerSource(name, function, trigger))
    return sources
