"""Timers: Every fires repeatedly, late ticks are skipped and counted (not stacked), retries and
dead letters, naming, and the next-fire computation on a fake clock (no waiting for minutes)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio
import pytest

import microfaas as mf
from conftest import HandlerLog
from microfaas.sources import build_sources
from microfaas.sources.timers import TimerSource, build_timer_sources, catch_up, next_fire

pytestmark = pytest.mark.anyio

# Handlers run in other processes: they report what they did in this log.
LOG = HandlerLog("timers")


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


async def wait_for_lines(n: int, prefix: str) -> list[str]:
    """Poll the log until ``n`` lines start with ``prefix`` (a generous bound, not a timing assertion)."""
    with anyio.fail_after(60):
        while len(found := [line for line in LOG.lines() if line.startswith(prefix)]) < n:
            await anyio.sleep(0.05)
    return found


async def test_every_fires_repeatedly_with_ticks():
    app = mf.App("every")

    @app.function(triggers=[mf.Every(seconds=0.2)])
    def heartbeat(tick: mf.Tick) -> None:
        LOG.write(f"beat {tick.name} {tick.scheduled_at!r} {tick.fired_at!r} {tick.skipped}")

    async with app.run() as faas:
        beats = await wait_for_lines(2, "beat")
        await faas.drain(timeout=60)
        source = faas.source("timer:heartbeat")
        assert isinstance(source, TimerSource) and source.fired >= 2
    assert len(beats) >= 2
    scheduled = []
    for line in beats:
        _, name, scheduled_at, fired_at, _skipped = line.split()
        assert name == "heartbeat"
        assert float(fired_at) >= float(scheduled_at)
        scheduled.append(float(scheduled_at))
    assert scheduled == sorted(scheduled) and len(set(scheduled)) == len(scheduled)


async def test_a_slow_handler_skips_late_ticks_instead_of_stacking_them():
    app = mf.App("slow_timer")
    period = 0.1

    @app.function(triggers=[mf.Every(seconds=period, name="slowpoke")], max_containers=1)
    def sluggish(tick: mf.Tick) -> None:
        LOG.write(f"tick {tick.skipped}")
        time.sleep(0.5)  # five periods

    started = time.monotonic()
    async with app.run() as faas:
        await wait_for_lines(3, "tick")
        source = faas.source("timer:slowpoke")
        elapsed = time.monotonic() - started
        invocations = faas.stats("sluggish").invocations
        assert isinstance(source, TimerSource)
        assert source.skipped > 0
    # One invocation at a time: far fewer invocations than periods went by.
    assert invocations < elapsed / period
    skipped = [int(line.split()[1]) for line in LOG.lines()]
    assert any(s > 0 for s in skipped[1:])


async def test_a_tick_that_fails_every_attempt_is_dead_lettered():
    app = mf.App("failing_timer")

    @app.function(triggers=[mf.Every(seconds=0.2)], retries=mf.Retries(1, initial_delay=0.01, jitter=False))
    def broken(tick: mf.Tick) -> None:
        LOG.write(f"broken attempt={mf.context().attempt}")
        raise RuntimeError("no")

    async with app.run() as faas:
        with anyio.fail_after(60):
            while not faas.dead_letters("broken"):
                await anyio.sleep(0.05)
        letter = faas.dead_letters("broken")[0]
        assert letter.source == "timer:broken"
        assert isinstance(letter.event, mf.Tick) and letter.event.name == "broken"
        assert letter.attempts == 2
        assert isinstance(letter.error, mf.FunctionError)


def test_timers_are_named_by_trigger_then_function_and_disambiguated():
    app = mf.App("names")

    @app.function(triggers=[mf.Every(seconds=5), mf.Cron("0 * * * *")])
    def twice(tick: mf.Tick) -> None: ...

    @app.function(triggers=[mf.Cron("0 3 * * *", name="nightly")])
    def report(tick: mf.Tick) -> None: ...

    @app.function(triggers=[mf.Every(seconds=1)])
    def once(tick: mf.Tick) -> None: ...

    assert {s.key for s in build_timer_sources(app.functions)} == {"timer:twice#0", "timer:twice#1", "timer:nightly", "timer:once"}
    assert {
        s.key for s in build_sources(app.functions, topics=app.topics, streams=app.streams, app_name=app.name) if s.key.startswith("timer:")
    } == {
        "timer:twice#0",
        "timer:twice#1",
        "timer:nightly",
        "timer:once",
    }

    clash = mf.App("clash")

    @clash.function(triggers=[mf.Every(seconds=1, name="same")])
    def a(tick: mf.Tick) -> None: ...

    @clash.function(triggers=[mf.Every(seconds=2, name="same")])
    def b(tick: mf.Tick) -> None: ...

    with pytest.raises(ValueError, match="'same'"):
        build_timer_sources(clash.functions)


def test_timer_settings_are_validated_naming_the_field():
    with pytest.raises(ValueError, match="seconds"):
        mf.Every(seconds=0)
    with pytest.raises(ValueError, match="seconds"):
        mf.Every(seconds=float("nan"))
    with pytest.raises(ValueError, match="expr"):
        mf.Cron("every tuesday")
    with pytest.raises(ValueError, match="tz"):
        mf.Cron("* * * * *", tz="Mars/Olympus")


# -- the schedule on a fake clock ----------------------------------------------------------------


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_every_next_fire_is_the_next_multiple_of_the_period_after_now():
    every = mf.Every(seconds=10)
    first = 1000.0
    assert next_fire(every, first, first) == 1010.0
    assert next_fire(every, 1003.0, first) == 1010.0
    assert next_fire(every, 1010.0, first) == 1020.0  # strictly after now
    assert next_fire(every, 1047.5, first) == 1050.0  # late: no stacking, straight to the next one


def test_every_catch_up_fires_once_for_the_latest_due_time_and_counts_the_rest():
    every = mf.Every(seconds=10)
    assert catch_up(every, 1010.0, 1010.2, 1000.0) == (1010.0, 0)  # on time
    assert catch_up(every, 1010.0, 1047.5, 1000.0) == (1040.0, 3)  # 1010, 1020, 1030 skipped
    assert catch_up(every, 1010.0, 1005.0, 1000.0) == (1010.0, 0)  # early wake-up


def test_cron_next_fire_and_catch_up_on_a_fake_clock():
    cron = mf.Cron("*/5 * * * *")
    now = ts("2024-03-01 12:03:10")
    assert next_fire(cron, now, now) == ts("2024-03-01 12:05:00")
    assert next_fire(cron, ts("2024-03-01 12:05:00"), now) == ts("2024-03-01 12:10:00")
    # Woken at 12:31:02 for the 12:05 tick: fire once for 12:30, having skipped 12:05 .. 12:25.
    assert catch_up(cron, ts("2024-03-01 12:05:00"), ts("2024-03-01 12:31:02"), now) == (ts("2024-03-01 12:30:00"), 5)


def test_cron_honours_its_time_zone_across_daylight_saving():
    nine_in_new_york = mf.Cron("0 9 * * *", tz="America/New_York")
    # EST (UTC-5) in winter, EDT (UTC-4) after the switch on 2024-03-10.
    assert next_fire(nine_in_new_york, ts("2024-03-08 00:00:00"), 0.0) == ts("2024-03-08 14:00:00")
    assert next_fire(nine_in_new_york, ts("2024-03-11 00:00:00"), 0.0) == ts("2024-03-11 13:00:00")
    assert next_fire(mf.Cron("0 9 * * *"), ts("2024-03-11 00:00:00"), 0.0) == ts("2024-03-11 09:00:00")
