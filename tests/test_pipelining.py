"""Pipelining on LocalNodes: short calls queued inside a busy container keep FaaS semantics.

A queued call that never ran is asked for again when its container dies (it is not
lost, and not reported as a crash); its timeout and its ``mf.context().deadline``
count from when it starts, not from when it was sent.
"""

from __future__ import annotations

import os
import time

import anyio
import pytest

import microfaas as mf
from microfaas.nodes.container import LocalContainer

pytestmark = pytest.mark.anyio

app = mf.App("pipelining")


@app.function(max_containers=1, idle_timeout=None, timeout=0.5)
def step(x: object) -> tuple[object, int, float]:
    """``"crash"`` kills the container; a float sleeps that long. Returns the pid and the time left at the start."""
    if x == "crash":
        os._exit(3)
    remaining = mf.context().remaining_time()
    if isinstance(x, float):
        time.sleep(x)
    return x, os.getpid(), remaining


@pytest.fixture
def queued_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The invocations the platform sent to a full container, to wait in it."""
    sent: list[str] = []
    start_call = LocalContainer.start_call

    def spy(self, outcome, request, *, queued=False):  # type: ignore[no-untyped-def]
        if queued:
            sent.append(request.invocation_id)
        return start_call(self, outcome, request, queued=queued)

    monkeypatch.setattr(LocalContainer, "start_call", spy)
    return sent


async def _make_calls_look_short(faas: mf.Platform) -> None:
    for i in range(20):
        await step.invoke(i)


async def test_a_burst_of_short_calls_is_pipelined_and_every_result_is_right(queued_calls: list[str]) -> None:
    async with app.run() as faas:
        await _make_calls_look_short(faas)
        results = [None] * 200

        async def one(i: int) -> None:
            results[i] = (await step.invoke(i))[0]

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert results == list(range(200))
        assert queued_calls, "no call was pipelined"
        stats = faas.stats("step")
        assert stats.invocations == 220 and stats.errors == 0
        assert stats.warm_starts == 219 and stats.cold_starts == 1


async def test_calls_queued_behind_a_crash_run_on_a_new_container(queued_calls: list[str]) -> None:
    async with app.run() as faas:
        await _make_calls_look_short(faas)
        first_pid = (await step.invoke(0))[1]
        outcomes: dict[int, object] = {}

        async def one(i: int, x: object) -> None:
            try:
                outcomes[i] = await step.invoke(x)
            except mf.FaaSError as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0, 0.05)  # runs while the rest arrive
            await anyio.sleep(0.01)
            tg.start_soon(one, 1, "crash")
            for i in range(2, 6):
                tg.start_soon(one, i, i)
        assert queued_calls, "no call was queued behind the crash"
        assert isinstance(outcomes[1], mf.ContainerCrashed)
        assert outcomes[0][0] == 0.05 and outcomes[0][1] == first_pid
        for i in range(2, 6):
            value, pid, _ = outcomes[i]
            assert value == i and pid != first_pid  # not lost: run again on the replacement
        stats = faas.stats("step")
        assert stats.crashes == 1 and stats.errors == 1


async def test_a_queued_calls_timeout_counts_from_its_start(queued_calls: list[str]) -> None:
    async with app.run() as faas:
        await _make_calls_look_short(faas)
        async with anyio.create_task_group() as tg:
            results: dict[str, object] = {}

            async def one(key: str, x: object) -> None:
                results[key] = await step.invoke(x)

            tg.start_soon(one, "slow", 0.35)
            await anyio.sleep(0.02)
            # Sent while "slow" runs, so queued; it runs 0.3 s of its own 0.5 s after "slow"'s 0.35 s.
            tg.start_soon(one, "queued", 0.3)
        assert len(queued_calls) == 1
        _, _, remaining = results["queued"]
        assert remaining > 0.4, f"the queued call started with {remaining:.2f}s of its 0.5s timeout left"
        assert faas.stats("step").timeouts == 0


def test_two_platforms_in_two_threads_both_pipeline_correctly() -> None:
    """Each platform on its own event loop in its own thread (write batching is per thread)."""
    import threading

    failures: list[BaseException] = []

    def run(n: int) -> None:
        own = mf.App(f"pipelining-thread-{n}")
        handle = own.function(step.__wrapped__, name="step", max_containers=1, idle_timeout=None)

        async def main() -> None:
            async with own.run():
                for i in range(20):
                    await handle.invoke(i)
                values = [None] * 100

                async def one(i: int) -> None:
                    values[i] = (await handle.invoke(i))[0]

                async with anyio.create_task_group() as tg:
                    for i in range(100):
                        tg.start_soon(one, i)
                assert values == list(range(100))

        try:
            anyio.run(main)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
