"""Pipelining on LocalNodes: short calls queued inside a busy container keep FaaS semantics.

A queued call that never ran is asked for again when its container dies (it is not
lost, and not reported as a crash); its timeout and its ``mf.context().deadline``
count from when it starts, not from when it was sent.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

import microfaas as mf
from conftest import Gate, wait_until
from microfaas import functions
from microfaas.nodes.container import LocalContainer

pytestmark = pytest.mark.anyio

app = mf.App("pipelining")
TIMEOUT = 2.5


@app.function(max_containers=1, idle_timeout=None, timeout=TIMEOUT)
def step(x: object) -> tuple[object, int, float | None, float]:
    """Returns ``x``, the pid, the call's deadline and when it ended.

    ``"crash"`` kills the container; a float sleeps that long; ``("hold", fifo)`` waits for a byte on ``fifo``.
    """
    if x == "crash":
        os._exit(3)
    deadline = mf.context().deadline
    if isinstance(x, float):
        time.sleep(x)
    elif isinstance(x, tuple):
        with open(x[1], "rb", buffering=0) as fifo:
            fifo.read(1)
    return x, os.getpid(), deadline, time.time()


@pytest.fixture
def gate(tmp_path: pathlib.Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


@pytest.fixture(autouse=True)
def every_call_counts_as_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelining is for short calls; here any call is short, however slowly the machine runs it,
    and a container may hold as many queued as the depth allows."""
    monkeypatch.setattr(functions, "PIPELINE_MAX_CALL_S", 3600.0)
    monkeypatch.setattr(functions, "PIPELINE_QUEUED_WORK_S", 3600.0)


@pytest.fixture
def queued_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The invocations the platform sent to a full container, to wait in it (with the sending thread)."""
    sent: list[tuple[str, int]] = []
    start_call = LocalContainer.start_call

    def spy(self, outcome, request, *, queued=False):  # type: ignore[no-untyped-def]
        if queued:
            sent.append((request.invocation_id, threading.get_ident()))
        return start_call(self, outcome, request, queued=queued)

    monkeypatch.setattr(LocalContainer, "start_call", spy)
    return sent


async def test_a_burst_of_calls_is_pipelined_and_every_result_is_right(queued_calls: list[tuple[str, int]]) -> None:
    async with app.run() as faas:
        await step.invoke(0)  # one call finished: the function has a call duration
        results: list[object] = [None] * 200

        async def one(i: int) -> None:
            results[i] = (await step.invoke(i))[0]

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert results == list(range(200))
        assert queued_calls, "no call was pipelined"
        stats = faas.stats("step")
        assert (stats.invocations, stats.errors, stats.warm_starts, stats.cold_starts) == (201, 0, 200, 1)


async def test_long_calls_are_not_pipelined(queued_calls: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(functions, "PIPELINE_MAX_CALL_S", 0.0)
    async with app.run():
        await step.invoke(0)
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(step.invoke, i)
    assert queued_calls == []


async def test_calls_queued_behind_a_crash_run_on_a_new_container(queued_calls: list[tuple[str, int]], gate: Gate) -> None:
    async with app.run(nodes=mf.LocalNodes(pipeline_depth=4)) as faas:
        first_pid = (await step.invoke(0))[1]
        outcomes: dict[int, object] = {}

        async def one(i: int, x: object) -> None:
            try:
                outcomes[i] = await step.invoke(x)
            except mf.FaaSError as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0, gate.hold)  # runs until the rest are queued behind it
            await wait_until(lambda: faas.containers("step")[0].state == mf.ContainerState.BUSY)
            tg.start_soon(one, 1, "crash")
            for i in range(2, 6):
                tg.start_soon(one, i, i)
            await wait_until(lambda: len(queued_calls) == 4)  # "crash" and three more; the last waits its turn
            gate.release()
        assert isinstance(outcomes[1], mf.ContainerCrashed)
        assert outcomes[0][:2] == (gate.hold, first_pid)  # type: ignore[index]
        for i in range(2, 6):
            value, pid, _, _ = outcomes[i]  # type: ignore[misc]
            assert value == i and pid != first_pid  # not lost: run again on the replacement
        stats = faas.stats("step")
        assert (stats.crashes, stats.errors) == (1, 1)


async def test_a_queued_calls_deadline_counts_from_when_it_starts(queued_calls: list[tuple[str, int]], gate: Gate) -> None:
    async with app.run() as faas:
        await step.invoke(0)
        results: dict[str, tuple[object, int, float, float]] = {}

        async def one(key: str, x: object) -> None:
            results[key] = await step.invoke(x)  # type: ignore[assignment]

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "first", gate.hold)
            await wait_until(lambda: faas.containers("step")[0].state == mf.ContainerState.BUSY)
            tg.start_soon(one, "queued", TIMEOUT * 0.6)
            await wait_until(lambda: len(queued_calls) == 1)
            # Time passes while "queued" waits: counted from when it was sent, its timeout would
            # expire 0.6 x TIMEOUT into its own run; counted from its start, it has all of TIMEOUT.
            await anyio.sleep(TIMEOUT * 0.6)
            gate.release()
        first_ended = results["first"][3]
        queued_deadline = results["queued"][2]
        # The container reads the queued call only after the first one ended.
        assert queued_deadline >= first_ended + TIMEOUT
        assert faas.stats("step").timeouts == 0


def test_two_platforms_in_two_threads_both_pipeline_correctly(queued_calls: list[tuple[str, int]]) -> None:
    """Each platform on its own event loop in its own thread (write batching is per thread)."""
    failures: list[BaseException] = []

    def run(n: int) -> None:
        own = mf.App(f"pipelining-thread-{n}")
        handle = own.function(step.__wrapped__, name="step", max_containers=1, idle_timeout=None)

        async def main() -> None:
            async with own.run():
                await handle.invoke(0)
                values: list[object] = [None] * 100

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
    assert not any(thread.is_alive() for thread in threads), "a platform's thread did not finish"
    assert not failures, failures
    assert {ident for _, ident in queued_calls} == {thread.ident for thread in threads}, "a platform pipelined nothing"
