"""Asynchronous invocation: retries with backoff, max event age, dead letters and drain."""

from __future__ import annotations

import pytest

import microfaas as mf

pytestmark = pytest.mark.anyio

app = mf.App("async_invocation")


@app.function(retries=mf.Retries(2, initial_delay=0.01, jitter=False))
def always_fails(order: dict[str, int]) -> None:
    raise RuntimeError(f"cannot handle order {order['id']}")


@app.function(retries=mf.Retries(10, initial_delay=1.0, backoff=1.0, jitter=False, max_event_age=1.5))
def too_old() -> None:
    raise RuntimeError("still failing")


@app.function(retries=mf.Retries(3, initial_delay=0.01))
def crashes_first_time(marker: str) -> str:
    import os

    if mf.context().attempt == 1:
        os._exit(7)
    return marker


@app.function
def ok(x: int) -> int:
    return x


async def test_exhausted_retries_land_in_the_dead_letters_with_event_error_and_attempts():
    async with app.run() as faas:
        call = await always_fails.spawn({"id": 17})
        with pytest.raises(mf.FunctionError):
            await call.result()
        [letter] = faas.dead_letters("always_fails")
        assert letter.function == "always_fails"
        assert letter.source == "spawn"
        assert letter.event == (({"id": 17},), {})
        assert letter.attempts == 3
        assert isinstance(letter.error, mf.FunctionError)
        assert letter.error.remote_message == "cannot handle order 17"
        assert letter.invocation_id == call.id
        assert letter.first_attempt_at <= letter.failed_at
        assert faas.dead_letters("ok") == []


async def test_max_event_age_stops_retrying_before_max_retries():
    async with app.run() as faas:
        with pytest.raises(mf.FunctionError):
            await too_old.invoke()  # its container is warm: the first attempt fails at once
        call = await too_old.spawn()
        with pytest.raises(mf.FunctionError):
            await call.result()
        # Retried once, 1 s after a quick failure (within the 1.5 s age); a second retry, 2 s in, would be too late.
        assert call.attempts == 2
        [letter] = faas.dead_letters("too_old")
        assert letter.attempts == 2
        assert letter.error.remote_message == "still failing"


async def test_a_container_dying_on_the_first_attempt_loses_nothing():
    async with app.run() as faas:
        call = await crashes_first_time.spawn("kept")
        assert await call.result() == "kept"
        assert call.attempts == 2
        assert faas.stats("crashes_first_time").crashes == 1
        assert faas.dead_letters("crashes_first_time") == []


async def test_drain_waits_for_every_spawned_call():
    async with app.run() as faas:
        calls = [await ok.spawn(i) for i in range(20)]
        await faas.drain(timeout=30)
        assert all(c.done() for c in calls)
        assert [await c.result() for c in calls] == list(range(20))


async def test_drain_timeout_names_what_is_pending():
    slow_app = mf.App("slow_drain")
    sleeper = slow_app.function(lambda: __import__("time").sleep(5), name="sleeper")
    async with slow_app.run() as faas:
        call = await sleeper.spawn()
        with pytest.raises(TimeoutError, match=r"1 spawned call"):
            await faas.drain(timeout=0.2)
        call.cancel()
