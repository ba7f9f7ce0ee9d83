"""A platform on a store resumes what an earlier one left: spawned calls (attempts keep counting),
results found by id, dead letters kept and redriven; a store that cannot be used is refused at start.

Each test runs twice: on one ``MemoryStore`` opened by two platforms in turn, and on a SQLite
file. (tests/test_durability_kill.py kills a real platform process instead of stopping it.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import durability_handlers as handlers
import microfaas as mf
from durability_handlers import FIXED, LOG

pytestmark = pytest.mark.anyio

app = mf.App("durability")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)

# The handlers live in a light module: a zygote preloads the module that defines them (see its doc).
slow_first = app.function(handlers.slow_first, timeout=60)
double = app.function(handlers.double)
flaky = app.function(handlers.flaky, retries=mf.Retries(1, initial_delay=0.01))
short_lived = app.function(handlers.short_lived, retries=mf.Retries(0, max_event_age=0.5), timeout=60)
app.function(handlers.ship, triggers=[orders.subscribe(batch_size=2, batch_window=0.05)], timeout=60)
app.function(handlers.bill, triggers=[orders.subscribe(max_retries=0)])
app.function(handlers.count, triggers=[clicks.consume(batch_size=1)], timeout=60)
square = app.function(handlers.square)


@pytest.fixture(autouse=True)
def clean_logs() -> None:
    LOG.clear()
    FIXED.clear()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """A store for each platform in turn: the same MemoryStore, or the same SQLite file."""
    if request.param == "memory":
        shared = mf.MemoryStore()
        return lambda: shared
    return lambda: mf.SqliteStore(tmp_path / "faas.db")


async def started(faas: mf.Platform, function: str) -> None:
    """Wait until a call of ``function`` has got its container."""
    with faas.subscribe_events(("cold_start", "warm_start"), function=function, replay=True) as events:
        async for _ in events:
            return


async def test_a_call_cut_short_by_a_stop_runs_again_on_the_next_platform_with_its_attempt_counting(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        call = await slow_first.spawn(7)
        await started(faas, "slow_first")
    with pytest.raises(mf.PlatformClosed):
        await call.result()
    async with app.run(store=store()) as faas:
        again = faas.call(call.id)  # the same id, found on the new platform
        assert await again.result(timeout=60) == {"x": 7, "attempt": 2}
        assert faas.dead_letters("slow_first") == []
    # Attempt 1 may have been stopped before its handler began; attempt 2 ran once.
    assert [line for line in LOG.lines() if "attempt 1" not in line] == ["slow_first 7 attempt 2"]


async def test_results_of_calls_from_before_a_restart_are_found_by_id(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        calls = [await double.spawn(i) for i in range(3)]
        assert [await c.result(timeout=60) for c in calls] == [0, 2, 4]
    async with app.run(store=store()) as faas:
        found = [faas.call(c.id) for c in calls]
        assert [c.status for c in found] == ["succeeded"] * 3
        assert [await c.result() for c in found] == [0, 2, 4]
        with pytest.raises(mf.UnknownCall, match="no call 'nope'"):
            faas.call("nope")


async def test_dead_letters_are_kept_and_redrive_sends_them_back(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        calls = [await flaky.spawn(i) for i in (1, 2)]
        for c in calls:
            with pytest.raises(mf.FunctionError, match="cannot handle"):
                await c.result(timeout=60)
        assert len(faas.dead_letters("flaky")) == 2
    async with app.run(store=store()) as faas:
        letters = faas.dead_letters("flaky")
        assert sorted(letter.event for letter in letters) == [((1,), {}), ((2,), {})]
        assert {letter.invocation_id for letter in letters} == {c.id for c in calls}
        assert all(letter.attempts == 2 and isinstance(letter.error, mf.FunctionError) for letter in letters)
        FIXED.write("fixed")
        assert await faas.redrive("flaky") == 2
        assert faas.dead_letters("flaky") == []
        await faas.drain(timeout=60)
        assert await faas.redrive("flaky") == 0
    async with app.run(store=store()) as faas:
        assert faas.dead_letters("flaky") == []  # removed from the store too
    assert sorted(LOG.lines()) == ["flaky 1", "flaky 1", "flaky 1", "flaky 2", "flaky 2", "flaky 2"]


async def test_a_call_past_its_max_event_age_at_restart_goes_to_the_dead_letters(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        call = await short_lived.spawn(3)
        await started(faas, "short_lived")
    await anyio.sleep(0.6)  # past max_event_age=0.5 by the restart
    async with app.run(store=store()) as faas:
        [letter] = faas.dead_letters("short_lived")
        assert letter.invocation_id == call.id and letter.event == ((3,), {})
        assert isinstance(letter.error, mf.PlatformClosed)
        assert "past max_event_age=0.5s" in str(letter.error)
        with pytest.raises(mf.PlatformClosed):
            await faas.call(call.id).result()


async def test_a_call_of_a_function_the_app_no_longer_has_goes_to_the_dead_letters(store: Callable[[], Any]) -> None:
    before = mf.App("durability")
    gone = before.function(name="gone", timeout=60)(slow_first.spec.fn)
    async with before.run(store=store()) as faas:
        call = await gone.spawn(1)
        await started(faas, "gone")
    async with app.run(store=store()) as faas:
        [letter] = faas.dead_letters("gone")
        assert isinstance(letter.error, mf.UnknownFunction) and letter.invocation_id == call.id
        assert faas.call(call.id).status == "failed"


async def test_a_store_that_cannot_be_used_is_refused_when_the_platform_starts(tmp_path: Path) -> None:
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    with pytest.raises(mf.StoreCorrupt, match=r"notes\.txt is not a microfaas store"):
        async with app.run(store=str(not_a_store)):
            pass
    async with app.run(store=tmp_path / "faas.db"):
        other = mf.App("other")
        with pytest.raises(mf.StoreLocked, match="open in another platform"):
            async with other.run(store=tmp_path / "faas.db"):
                pass
    with pytest.raises(ValueError, match="store must be a path"):
        app.run(store=42)  # type: ignore[arg-type]


async def test_topic_messages_not_yet_handled_are_delivered_by_the_next_platform(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        with faas.subscribe_events("dead_letter", function="bill") as letters:
            for i in range(3):
                await faas.topic("orders").publish(i)
            await started(faas, "ship")
            with anyio.fail_after(60):
                for _ in range(3):  # bill fails every message at once; ship hangs on message 0
                    await letters.receive()
    shipped_before = {line for line in LOG.lines() if line.startswith("ship") and "attempt 1" not in line}
    async with app.run(store=store()) as faas:
        await faas.drain(timeout=60)
        shipped = sorted(line for line in LOG.lines() if line.startswith("ship") and line not in shipped_before)
        # Message 0 was cut short in attempt 1; it (and whatever was still waiting) is delivered again.
        assert "ship 0 attempt 2" in shipped
        assert {int(line.split()[1]) for line in LOG.lines() if line.startswith("ship")} == {0, 1, 2}
        letters = faas.dead_letters("bill")  # kept from the first platform
        assert sorted(letter.event.data for letter in letters) == [0, 1, 2]
        assert all(letter.source == "topic:orders" for letter in letters)
        FIXED.write("fixed")
        assert await faas.redrive("bill") == 3
        await faas.drain(timeout=60)
        assert faas.dead_letters("bill") == []
    assert sorted(line for line in LOG.lines() if line.startswith("bill")) == [f"bill {i}" for i in (0, 0, 1, 1, 2, 2)]


async def test_messages_of_a_subscription_the_app_no_longer_has_go_to_the_dead_letters(store: Callable[[], Any]) -> None:
    before = mf.App("durability")
    topic = before.topic("orders")
    before.function(name="audit", triggers=[topic.subscribe()], timeout=60)(slow_first.spec.fn)
    async with before.run(store=store()) as faas:
        await faas.topic("orders").publish(5)
        await started(faas, "audit")
    async with app.run(store=store()) as faas:
        [letter] = faas.dead_letters("audit")
        assert isinstance(letter.error, mf.UnknownFunction) and letter.event.data == 5
        await faas.drain(timeout=60)
    async with app.run(store=store()) as faas:
        assert len(faas.dead_letters("audit")) == 1  # dead-lettered once, not again on every start


async def test_stream_consumers_resume_after_their_checkpoint_in_put_order(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        stream = faas.stream("clicks")
        with faas.subscribe_events(("cold_start", "warm_start"), function="count") as starts:
            records = [await stream.put(i, key="k") for i in range(10)]  # one key: one shard, in order
            with anyio.fail_after(60):
                for _ in range(6):  # batches of one: the sixth is value 5, which hangs
                    await starts.receive()
        [shard] = {r.shard for r in records}
        assert stream.checkpoints("count")[shard] == 4
    FIXED.write("fixed")
    async with app.run(store=store()) as faas:
        stream = faas.stream("clicks")
        assert stream.checkpoints("count")[shard] == 4  # where the last platform had got to
        await faas.drain(timeout=60)
        assert stream.checkpoints("count")[shard] == 9
        again = await stream.put(10, key="k")
        assert again.sequence == 10  # the shard's numbering goes on
        await faas.drain(timeout=60)
    values = [int(line.split()[4]) for line in LOG.lines()]
    assert values[:5] == [0, 1, 2, 3, 4]  # before the stop, in order, once each
    assert values[-6:] == [5, 6, 7, 8, 9, 10]  # after: from the checkpoint on, in order
    assert values.count(4) == 1 and 1 <= values.count(5) <= 2


async def test_an_event_the_store_cannot_take_fails_its_caller_and_is_not_delivered(tmp_path: Path) -> None:
    big = b"x" * 400_000  # does not fit a store capped at 0.25 MB
    async with app.run(store=mf.SqliteStore(tmp_path / "small.db", max_size_mb=0.25)) as faas:
        with pytest.raises(mf.StoreFull):
            await double.spawn(big)  # type: ignore[arg-type]
        with pytest.raises(mf.StoreFull):
            await faas.topic("orders").publish(big)
        stream = faas.stream("clicks")
        with pytest.raises(mf.StoreFull):
            await stream.put(big, key="k")
        after = await stream.put(1, key="k")  # the consumer steps over the gap the failed put left
        assert await (await double.spawn(21)).result(timeout=60) == 42
        FIXED.write("fixed")
        await faas.drain(timeout=60)
        assert stream.checkpoints("count")[after.shard] == after.sequence
    assert [line.split()[4] for line in LOG.lines() if line.startswith("count")] == ["1"]
    assert not [line for line in LOG.lines() if line.startswith(("ship", "bill"))]


async def test_a_batch_job_resumes_on_the_next_platform_and_is_found_by_id(store: Callable[[], Any]) -> None:
    async with app.run(store=store()) as faas:
        job = await square.batch(range(6), max_parallel=2)
        with anyio.fail_after(60):
            async for done, _, _ in job.progress_updates():
                if done >= 3:  # 0, 1, 2 done; 3 hangs
                    break
    FIXED.write("fixed")
    async with app.run(store=store()) as faas:
        again = faas.batch_job(job.id)
        await again.wait(timeout=60)
        assert again.results() == [x * x for x in range(6)]
        assert again.progress == (6, 0, 6)
    async with app.run(store=store()) as faas:
        finished = faas.batch_job(job.id)  # from the store: a finished job of an earlier platform
        assert finished.done() and finished.results() == [x * x for x in range(6)]
        with pytest.raises(mf.UnknownCall, match="no batch job 'nope'"):
            faas.batch_job("nope")
        assert await faas.call(f"{job.id}.4").result() == 16  # a task is a call
    handled = [int(line.split()[1]) for line in LOG.lines()]
    assert sorted(set(handled)) == list(range(6))
    assert all(handled.count(x) == 1 for x in (0, 1, 2))  # finished before the stop: not run again
