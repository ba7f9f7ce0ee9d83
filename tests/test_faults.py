"""Fault injection: injected crashes, timeouts and start failures behave as real ones (retries, dead letters, stats)."""

from __future__ import annotations

import pathlib
import tempfile

import pytest

import microfaas as mf
from conftest import pid_alive
from microfaas import lifecycle as ev
from microfaas.testing import running

pytestmark = pytest.mark.anyio

# Handlers run in other processes: they report what they handled by appending to a file.
LOG = pathlib.Path(tempfile.gettempdir()) / "microfaas-test-faults.log"
FAST = mf.Retries(2, initial_delay=0.01, jitter=False)

app = mf.App("faults")
audit = app.topic("audit")
clicks = app.stream("clicks")


def _log(line: str) -> None:
    with open(LOG, "a") as f:
        f.write(line + "\n")


def lines() -> list[str]:
    return LOG.read_text().splitlines() if LOG.exists() else []


@app.function(retries=FAST, timeout=30)
def record(x: int) -> int:
    _log(f"record {x} attempt={mf.context().attempt}")
    return x


@app.function(retries=mf.Retries(1, initial_delay=0.01, jitter=False))
def once(x: int) -> int:
    return x


@app.function(triggers=[audit.subscribe(max_retries=1)], retries=FAST)
def on_audit(msg: mf.Message) -> None:
    _log(f"audit {msg.data} attempt={msg.attempt}")


@app.function(triggers=[clicks.consume(max_retries=1)], retries=FAST)
def on_click(batch: mf.RecordBatch) -> None:
    for r in batch:
        _log(f"click {r.value} attempt={mf.context().attempt}")


@app.function(min_containers=1)
def pinned() -> int:
    import os

    return os.getpid()


async def exit_of(faas: mf.Platform, container_id: str) -> mf.LifecycleEvent:
    """The container_exited event of ``container_id``, once the platform has seen it."""
    with faas.subscribe_events(ev.CONTAINER_EXITED, replay=True) as exits:
        async for event in exits:
            if event.container == container_id:
                return event
    raise AssertionError(f"container {container_id} never exited")


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.unlink(missing_ok=True)
    yield
    LOG.unlink(missing_ok=True)


async def test_an_injected_crash_is_a_real_crash_and_the_spawned_call_is_retried():
    async with running(app) as faas:
        await faas.invoke("record", 0)
        [first] = faas.containers("record")
        faas.inject("record", crash=1)
        assert faas.armed_faults("record") == {"crash": 1, "timeout": 0, "start_failure": 0}
        call = await faas.spawn("record", 1)
        assert await call.result() == 1
        assert call.attempts == 2
        assert faas.armed_faults("record")["crash"] == 0
        # The handler did not run on the attempt that crashed; the retry ran in a new container.
        assert lines() == ["record 0 attempt=1", "record 1 attempt=2"]
        assert (await exit_of(faas, first.id)).detail["reason"] == "injected"
        assert not pid_alive(first.pid)
        stats = faas.stats("record")
        assert stats.crashes == 1 and stats.containers_started == 2
        [crash] = faas.events(ev.CRASH)
        assert crash.container == first.id and crash.detail["injected"] is True
        assert [e.kind for e in faas.events([ev.RETRY, ev.COLD_START], function="record")][-2:] == ["retry", "cold_start"]


async def test_an_injected_crash_makes_invoke_raise_container_crashed():
    async with running(app) as faas:
        faas.inject("record", crash=1)
        with pytest.raises(mf.ContainerCrashed, match="injected") as info:
            await faas.invoke("record", 1)
        assert info.value.container_id is not None
        assert await faas.invoke("record", 2) == 2  # the next call is fine, in a new container


async def test_an_injected_timeout_raises_function_timeout_and_kills_the_container():
    async with running(app) as faas:
        await faas.invoke("record", 0)
        [first] = faas.containers("record")
        faas.inject("record", timeout=1)
        with pytest.raises(mf.FunctionTimeout, match="timeout=30"):
            await faas.invoke("record", 1)
        assert faas.stats("record").timeouts == 1
        [timeout] = faas.events(ev.TIMEOUT)
        assert timeout.detail["injected"] is True and timeout.container == first.id
        assert (await exit_of(faas, first.id)).detail["reason"] == "timeout"
        assert not pid_alive(first.pid)


async def test_faults_exhaust_the_retries_and_end_in_the_dead_letters():
    async with running(app) as faas:
        faas.inject("once", crash=1, timeout=1)
        call = await faas.spawn("once", 5)
        with pytest.raises(mf.FunctionTimeout):
            await call.result()  # the crash, then the timeout on the one retry
        [letter] = faas.dead_letters("once")
        assert letter.attempts == 2 and isinstance(letter.error, mf.FunctionTimeout)
        assert [e.kind for e in faas.events([ev.CRASH, ev.TIMEOUT, ev.RETRY, ev.DEAD_LETTER])] == [
            "crash",
            "retry",
            "timeout",
            "dead_letter",
        ]


async def test_an_injected_start_failure_is_a_cold_start_failure():
    async with running(app) as faas:
        faas.inject("record", start_failure=1)
        with pytest.raises(mf.ColdStartFailed, match="injected") as info:
            await faas.invoke("record", 1)
        assert info.value.container_id is not None
        [failed] = faas.events(ev.START_FAILED)
        assert failed.detail["injected"] is True and failed.function == "record"
        assert await faas.invoke("record", 2) == 2
        # A spawned call is retried past a failed start.
        faas.inject("record", start_failure=1)
        await faas.kill(faas.containers("record")[0])
        call = await faas.spawn("record", 3)
        assert await call.result() == 3 and call.attempts == 2


async def test_a_pinned_container_is_replaced_after_an_injected_start_failure_and_a_kill():
    async with running(app) as faas:
        [original] = faas.containers("pinned")
        faas.inject("pinned", start_failure=1)
        await faas.kill(original.id)
        with faas.subscribe_events(ev.CONTAINER_STARTED, function="pinned") as started:
            await started.receive()  # the failed start is retried with backoff
        assert [e.kind for e in faas.events([ev.START_FAILED, ev.CONTAINER_STARTED], function="pinned")] == [
            "container_started",
            "start_failed",
            "container_started",
        ]
        assert await faas.invoke("pinned") != original.pid


async def test_topic_and_stream_deliveries_survive_injected_faults():
    async with running(app) as faas:
        faas.inject("on_audit", crash=1)
        faas.inject("on_click", timeout=1)
        await faas.topic("audit").publish("a")
        await faas.stream("clicks").put("c")
        await faas.drain(timeout=60)
        assert sorted(lines()) == ["audit a attempt=2", "click c attempt=2"]
        assert faas.dead_letters("on_audit") == [] and faas.dead_letters("on_click") == []
        sources = sorted(e.detail["source"] for e in faas.events(ev.RETRY))
        assert sources == ["stream:clicks/0", "topic:audit"]


async def test_kill_a_container():
    async with running(app) as faas:
        await faas.invoke("record", 1)
        [container] = faas.containers("record")
        await faas.kill(container.id)
        assert faas.containers("record") == []
        assert not pid_alive(container.pid)
        [exited] = [e for e in faas.events(ev.CONTAINER_EXITED) if e.container == container.id]
        assert exited.detail["reason"] == "injected" and exited.detail["returncode"] == -9
        with pytest.raises(ValueError, match="no running container"):
            await faas.kill(container.id)


async def test_inject_validates_its_arguments_and_clear_disarms():
    async with running(app) as faas:
        with pytest.raises(mf.UnknownFunction):
            faas.inject("nope", crash=1)
        with pytest.raises(ValueError, match="crash must be an int >= 0"):
            faas.inject("record", crash=-1)
        with pytest.raises(ValueError, match="timeout"):
            faas.inject("record", timeout=True)
        faas.inject("record", crash=2, start_failure=1)
        faas.inject("record", crash=1)
        assert faas.armed_faults("record") == {"crash": 3, "timeout": 0, "start_failure": 1}
        faas.clear_faults("record")
        assert faas.armed_faults("record") == {"crash": 0, "timeout": 0, "start_failure": 0}
        assert await faas.invoke("record", 1) == 1
