"""Spawned and mapped calls run as plain asyncio tasks (runtime/calltasks.py): cancelling one
ends only that call, wherever it is; stopping the platform settles every one; a bug in one
surfaces from the platform instead of vanishing."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

import microfaas as mf

pytestmark = pytest.mark.anyio

app = mf.App("call_tasks")


@app.function(timeout=10)
def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(retries=mf.Retries(max_retries=3, initial_delay=30.0, jitter=False))
def fails(x: int) -> int:
    raise RuntimeError(f"no {x}")


@app.function
def echo(x: int) -> int:
    return x


async def _first_attempt_failed(faas: mf.Platform, name: str) -> None:
    with anyio.fail_after(10):
        while not faas.events("retry", function=name):
            await anyio.sleep(0.01)


async def test_cancel_a_call_running_in_its_container() -> None:
    async with app.run():
        running = await sleeps.spawn(0.5)
        await anyio.sleep(0.1)  # it is in its container by now
        running.cancel()
        with anyio.fail_after(5), pytest.raises(mf.CallCancelled):
            await running.result()
        assert running.status == mf.CallStatus.CANCELLED
        assert await echo.invoke(3) == 3  # the platform keeps serving


async def test_cancel_a_call_waiting_for_a_container_withdraws_it_and_it_never_runs() -> None:
    one_at_a_time = mf.App("call_tasks_one")
    slow = one_at_a_time.function(sleeps, name="slow", max_containers=1, timeout=10)
    async with one_at_a_time.run() as faas:
        running = await slow.spawn(0.3)
        waiting = await slow.spawn(0.0)
        await anyio.sleep(0.1)  # both attempts begun: the first runs, the second waits for the container
        waiting.cancel()
        with pytest.raises(mf.CallCancelled):
            await waiting.result()
        assert waiting.status == mf.CallStatus.CANCELLED
        assert await running.result(timeout=5) == 0.3
        await faas.drain(timeout=5)
        started = faas.events(("cold_start", "warm_start"), function="slow")
        assert [e.detail["invocation_id"] for e in started] == [running.id]  # the cancelled one never ran


async def test_cancel_a_call_waiting_to_retry_ends_it_at_once() -> None:
    async with app.run() as faas:
        call = await fails.spawn(1)
        await _first_attempt_failed(faas, "fails")  # it now waits 30 s to retry
        started = time.monotonic()
        call.cancel()
        with pytest.raises(mf.CallCancelled):
            await call.result()
        assert time.monotonic() - started < 1


async def test_cancel_before_the_task_starts_never_attempts_the_call() -> None:
    async with app.run() as faas:
        call = await echo.spawn(1)
        call.cancel()  # its task has not taken a step yet
        with pytest.raises(mf.CallCancelled):
            await call.result()
        others = [await echo.spawn(i) for i in range(5)]
        assert [await c.result() for c in others] == list(range(5))
        assert faas.stats("echo").invocations == 5


async def test_stopping_settles_every_call_wherever_it_is() -> None:
    async with app.run() as faas:
        waiting_to_retry = await fails.spawn(2)
        running = await sleeps.spawn(5)
        await _first_attempt_failed(faas, "fails")
        not_started = await echo.spawn(3)
    for call in (waiting_to_retry, running, not_started):
        assert call.done()
        if call is not not_started:  # the last may have run before the stop
            with pytest.raises(mf.PlatformClosed):
                await call.result()


async def test_a_bug_in_a_call_task_fails_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bug(Exception):
        pass

    async def broken(*args: object, **kwargs: object) -> None:
        raise Bug("a bug in the delivery loop")

    def broken_ending(*args: object, **kwargs: object) -> None:
        raise Bug("a bug once the call ended")

    # In the task that retries a call, and in the callback that settles a first attempt (no task).
    cases = (("deliverer", "deliver_after", broken, fails), ("durable", "finished", broken_ending, echo))
    for target, name, replacement, function in cases:
        with pytest.raises(BaseException) as caught:  # the platform's task group may wrap it
            async with app.run() as faas:
                monkeypatch.setattr(getattr(faas._runtime, target), name, replacement)
                await function.spawn(1)
                await anyio.sleep(5)  # cancelled by the failure well before this ends
        errors = caught.value.exceptions if isinstance(caught.value, BaseExceptionGroup) else (caught.value,)
        assert any(isinstance(e, Bug) for e in errors), repr(caught.value)


async def test_waiters_of_a_call_wait_each_on_their_own_and_a_finished_call_answers_at_once() -> None:
    from microfaas.runtime.call import Call

    call: Call[int] = Call("c1", "f")
    got: list[object] = []

    async def wait() -> None:
        got.append(await call.result())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        async with anyio.create_task_group() as impatient:
            impatient.start_soon(wait)
            await anyio.sleep(0.01)
            impatient.cancel_scope.cancel()  # this waiter gives up ...
        with pytest.raises(TimeoutError):
            await call.result(timeout=0.01)  # ... and so does this one ...
        assert not call.done() and call._waiters is not None and len(call._waiters) == 1
        call._succeed(7)  # ... the first still waits, and gets the value
    assert got == [7] and call.done() and call._waiters is None

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        for _ in range(100):
            assert await call.result() == 7
        assert ticks == before  # no loop iteration per result: the ticker never ran in between
        tg.cancel_scope.cancel()
