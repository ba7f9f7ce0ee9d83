"""Batch jobs: input-order results, failures in their slots, progress, retries per task, dead letters, drain."""

from __future__ import annotations

import pytest

import microfaas as mf
from conftest import HandlerLog

pytestmark = pytest.mark.anyio

app = mf.App("batches")
# Handlers run in other processes: they report what they did in this log.
LOG = HandlerLog("batch")


@app.function(max_containers=2)
def square(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


@app.function(retries=mf.Retries(2, initial_delay=0.01, jitter=False))
def flaky(x: int) -> int:
    attempt = mf.context().attempt
    LOG.write(f"flaky {x} attempt={attempt}")
    if x == 1 and attempt == 1:
        raise RuntimeError("fails once")
    if x == 2:
        raise RuntimeError("always fails")
    return x + 100


@app.function(max_containers=2)
def slow(x: int) -> int:
    import time

    time.sleep(0.2)
    LOG.write(f"slow {x}")
    return x


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


async def test_results_are_in_input_order_with_a_failed_task_error_in_its_slot():
    seen: list[mf.BatchProgress] = []
    async with app.run() as faas:
        job = await square.batch(range(6), max_parallel=3, on_progress=seen.append)
        assert isinstance(job, mf.BatchJob) and job.id
        assert job.progress.total == 6
        updates = [p async for p in job.progress_updates()]
        await job.wait(timeout=60)
        assert job.done()
        results = job.results()
        assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 4, 16, 25]
        assert isinstance(results[3], mf.FunctionError) and "three is not allowed" in str(results[3].remote_message)
        [(index, error)] = job.failures()
        assert index == 3 and error is results[3]
        assert job.progress == (6, 1, 6) == mf.BatchProgress(done=6, failed=1, total=6)
        # The callback saw every task finish, in order; the iterator ended on the final progress.
        assert [p.done for p in seen] == [1, 2, 3, 4, 5, 6]
        assert seen[-1] == (6, 1, 6)
        assert updates[-1] == (6, 1, 6)
        assert [p.done for p in updates] == sorted(p.done for p in updates)
        # Retries=0: the failed task is dead-lettered after its single attempt.
        [letter] = faas.dead_letters("square")
        assert letter.source == f"batch:{job.id}"
        assert letter.event == mf.BatchTask(job_id=job.id, index=3, item=3)
        assert letter.attempts == 1


async def test_each_task_is_retried_and_one_that_exhausts_its_retries_is_dead_lettered():
    async with app.run() as faas:
        job = await flaky.batch([0, 1, 2], max_parallel=8)
        await job.wait(timeout=60)
        results = job.results()
        assert results[0] == 100
        assert results[1] == 101  # failed once, then succeeded
        assert isinstance(results[2], mf.FunctionError)
        assert job.progress == (3, 1, 3)
        assert sorted(line for line in LOG.lines() if line.startswith("flaky 1")) == ["flaky 1 attempt=1", "flaky 1 attempt=2"]
        assert len([line for line in LOG.lines() if line.startswith("flaky 2")]) == 3  # first try and 2 retries
        [letter] = faas.dead_letters("flaky")
        assert letter.source == f"batch:{job.id}"
        assert letter.event == mf.BatchTask(job_id=job.id, index=2, item=2)
        assert letter.attempts == 3
        assert isinstance(letter.error, mf.FunctionError)


async def test_drain_waits_for_a_running_batch():
    async with app.run() as faas:
        job = await slow.batch(range(5), max_parallel=2)
        await faas.drain(timeout=60)
        assert job.done()
        assert job.progress == (5, 0, 5)
        assert job.results() == [0, 1, 2, 3, 4]
        assert sorted(LOG.lines()) == [f"slow {i}" for i in range(5)]


async def test_a_progress_iterator_started_late_and_an_empty_batch_end_at_once():
    async with app.run():
        job = await square.batch([2])
        await job.wait(timeout=60)
        assert [p async for p in job.progress_updates()] == [(1, 0, 1)]
        empty = await square.batch([])
        assert empty.done() and empty.results() == [] and empty.progress == (0, 0, 0)
        assert [p async for p in empty.progress_updates()] == [(0, 0, 0)]


async def test_a_raising_progress_callback_does_not_break_the_job():
    called: list[mf.BatchProgress] = []

    def boom(progress: mf.BatchProgress) -> None:
        called.append(progress)
        raise RuntimeError("callback bug")

    async with app.run():
        job = await square.batch([1, 2], on_progress=boom)
        await job.wait(timeout=60)
        assert job.results() == [1, 4]
        assert job.progress == (2, 0, 2)
    # It raised on the first task's progress and was still called for the second.
    assert called == [(1, 0, 2), (2, 0, 2)]


async def test_cancel_fails_the_remaining_tasks_with_call_cancelled():
    async with app.run() as faas:
        job = await slow.batch(range(6), max_parallel=1)
        job.cancel()
        await job.wait(timeout=60)
        assert job.progress.done == 6
        assert all(isinstance(r, mf.CallCancelled) for r in job.results())
        assert faas.dead_letters("slow") == []
        await faas.drain(timeout=60)


async def test_bad_arguments_are_rejected_naming_the_field():
    async with app.run():
        with pytest.raises(ValueError, match="max_parallel"):
            await square.batch([1], max_parallel=0)
        with pytest.raises(ValueError, match="on_progress"):
            await square.batch([1], on_progress=42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="items"):
            await square.batch("abc")
        with pytest.raises(mf.SerializationError, match="item 1"):
            await square.batch([1, (i for i in range(3))])  # a generator does not pickle
        job = await square.batch([1])
        with pytest.raises(RuntimeError, match=r"await job\.wait\(\)"):
            job.results()  # batch() returns before any task has run
        await job.wait(timeout=60)
    with pytest.raises(mf.PlatformClosed):
        await square.batch([1])
