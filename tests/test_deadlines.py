"""deadlines.Deadlines: one loop timer per container reports each overdue call once.

Driven by a fake loop whose clock moves only when the test says, so nothing here
depends on how fast the machine runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from microfaas.runtime.deadlines import Deadlines


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """``time`` and ``call_at`` of an event loop; ``advance`` moves the clock and runs what is due."""

    def __init__(self) -> None:
        self.now = 100.0
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def armed(self) -> list[float]:
        """When the timers not cancelled are due."""
        return sorted(when for when, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()


def make() -> tuple[FakeLoop, Deadlines, list[str]]:
    loop = FakeLoop()
    overdue: list[str] = []
    return loop, Deadlines(loop, overdue.append), overdue  # type: ignore[arg-type]


def test_overdue_calls_are_reported_once_in_deadline_order_and_finished_ones_never() -> None:
    loop, deadlines, overdue = make()
    deadlines.add("late", 15.0)
    deadlines.add("early", 5.0)  # earlier than the timer set: the timer moves
    deadlines.add("done", 1.0)
    deadlines.discard("done")
    assert loop.armed() == [101.0]
    loop.advance(4.9)
    assert overdue == []  # "done" finished before its deadline; its timer fired for nothing
    assert loop.armed() == [105.0]
    loop.advance(0.1)
    assert overdue == ["early"]
    assert loop.armed() == [115.0]  # re-armed for "late" when "early" fired
    loop.advance(9.9)
    assert overdue == ["early"]
    loop.advance(0.1)
    assert overdue == ["early", "late"]
    assert loop.armed() == []
    loop.advance(100.0)
    assert overdue == ["early", "late"]


def test_a_later_deadline_only_records_itself() -> None:
    loop, deadlines, overdue = make()
    deadlines.add("a", 5.0)
    deadlines.add("b", 8.0)
    deadlines.add("c", 8.0)
    assert loop.armed() == [105.0]  # one timer, for the earliest
    loop.advance(8.0)  # past all three at once: reported in deadline order, each once
    assert overdue == ["a", "b", "c"]
    assert loop.armed() == []


def test_a_call_that_finishes_is_never_reported() -> None:
    loop, deadlines, overdue = make()
    deadlines.add("a", 5.0)
    deadlines.add("b", 6.0)
    deadlines.discard("a")
    deadlines.discard("never-added")
    loop.advance(10.0)
    assert overdue == ["b"]


def test_close_drops_every_deadline() -> None:
    loop, deadlines, overdue = make()
    deadlines.add("a", 2.0)
    deadlines.add("b", 3.0)
    deadlines.close()
    assert loop.armed() == []
    loop.advance(10.0)
    assert overdue == []
    deadlines.add("c", 1.0)  # still usable after close
    loop.advance(1.0)
    assert overdue == ["c"]
