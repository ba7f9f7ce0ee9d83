"""Deploying functions on a running platform: new functions and new versions, what happens to the
old version's calls and containers, what a bad deploy leaves (nothing), and what a restart keeps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

import microfaas as mf
from microfaas import lifecycle as ev

pytestmark = pytest.mark.anyio

app = mf.App("deploy")


@app.function
def declared(x: int) -> int:
    return x


def greet_v1(name: str) -> str:
    return f"hello {name}"


def greet_v2(name: str) -> str:
    return f"HELLO {name.upper()}"


def slow_v1(seconds: float) -> str:
    time.sleep(seconds)
    return "v1"


def slow_v2(seconds: float) -> str:
    return "v2"


async def test_a_deployed_function_is_served_by_name_and_counted() -> None:
    async with app.run() as faas:
        deployment = await faas.deploy(greet_v1, name="greet", memory_mb=64)
        assert deployment == mf.Deployment("greet", 1)
        assert await faas.invoke("greet", "ada") == "hello ada"
        assert (await (await faas.spawn("greet", "bob")).result(timeout=60)) == "hello bob"
        assert faas.versions("greet") == [1]
        assert "greet" in faas.function_names()
        assert faas.function("greet").memory_mb == 64
        assert faas.stats("greet").invocations == 2
        assert [c.function for c in faas.containers("greet")] == ["greet"]


async def test_a_new_version_serves_new_calls_while_running_calls_finish_on_the_old_one() -> None:
    async with app.run() as faas:
        await faas.deploy(slow_v1, name="slow")
        running = await faas.spawn("slow", 1.0)
        with faas.subscribe_events((ev.COLD_START, ev.WARM_START), function="slow") as started:
            with anyio.fail_after(60):
                await started.receive()  # the v1 call has its container
        [v1_container] = faas.containers("slow")
        assert await faas.deploy(slow_v2, name="slow") == mf.Deployment("slow", 2)
        assert await faas.invoke("slow", 0) == "v2"  # started after deploy returned
        assert await running.result(timeout=60) == "v1"  # was running: finished on its version
        await faas.drain(timeout=60)
        with faas.subscribe_events(ev.CONTAINER_EXITED, replay=True) as exits:
            with anyio.fail_after(60):
                async for event in exits:
                    if event.container == v1_container.id:
                        break  # idle once its call ended: retired
        assert v1_container.id not in {c.id for c in faas.containers("slow")}
        [stopped] = [e for e in faas.events(ev.CONTAINER_STOPPED) if e.container == v1_container.id]
        assert stopped.detail["reason"] == "retired"
        assert faas.versions("slow") == [1, 2]
        assert faas.stats("slow").invocations == 2  # one count for the name, over its versions


async def test_an_idle_pinned_container_of_the_old_version_is_replaced() -> None:
    async with app.run() as faas:
        with faas.subscribe_events(ev.CONTAINER_STARTED, function="greet") as started:
            await faas.deploy(greet_v1, name="greet", min_containers=1)
            with anyio.fail_after(60):
                await started.receive()  # the pinned container comes up in the background
        [old] = faas.containers("greet")
        assert old.pinned
        await faas.deploy(greet_v2, name="greet", min_containers=1)
        assert await faas.invoke("greet", "ada") == "HELLO ADA"
        assert any(e.container == old.id and e.detail["reason"] == "retired" for e in faas.events(ev.CONTAINER_STOPPED))
        assert [c.pinned for c in faas.containers("greet") if c.id != old.id] == [True]


async def test_a_bad_deploy_changes_nothing() -> None:
    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.locked()

    async with app.run() as faas:
        await faas.deploy(greet_v1, name="greet")
        with pytest.raises(ValueError, match="memory_mb"):
            await faas.deploy(greet_v2, name="greet", memory_mb=0)
        with pytest.raises(ValueError, match="unknown function setting 'memroy_mb'; did you mean 'memory_mb'"):
            await faas.deploy(greet_v2, name="greet", memroy_mb=64)
        with pytest.raises(mf.SerializationError, match="greet"):
            await faas.deploy(holds_a_lock, name="greet")
        with pytest.raises(ValueError, match=r"declares a function of that name with @app\.function"):
            await faas.deploy(greet_v2, name="declared")
        with pytest.raises(ValueError, match=r"did not declare with app\.topic"):
            await faas.deploy(greet_v2, name="greet", triggers=[mf.Topic("nowhere").subscribe()])
        with pytest.raises(ValueError, match="does not fit on a node"):
            await faas.deploy(greet_v2, name="greet", memory_mb=10**9)
        assert faas.versions("greet") == [1]
        assert await faas.invoke("greet", "ada") == "hello ada"
        assert await faas.invoke("declared", 3) == 3


async def test_undeploy_takes_the_function_away() -> None:
    async with app.run() as faas:
        await faas.deploy(greet_v1, name="greet")
        assert await faas.invoke("greet", "ada") == "hello ada"
        await faas.undeploy("greet")
        with pytest.raises(mf.UnknownFunction, match="no function 'greet'"):
            await faas.invoke("greet", "ada")
        assert "greet" not in faas.function_names()
        with pytest.raises(mf.UnknownFunction, match="no deployed function 'greet'"):
            await faas.undeploy("greet")
        with pytest.raises(ValueError, match="cannot be undeployed"):
            await faas.undeploy("declared")
        await faas.deploy(greet_v2, name="greet")  # deploying again goes on counting
        assert faas.versions("greet") == [1, 2]


async def test_deployments_are_kept_in_the_store_and_served_after_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "faas.db"
    async with app.run(store=store) as faas:
        await faas.deploy(greet_v1, name="greet")
        await faas.deploy(greet_v2, name="greet")
        await faas.deploy(greet_v1, name="gone")
        await faas.undeploy("gone")
    async with app.run(store=store) as faas:
        assert await faas.invoke("greet", "ada") == "HELLO ADA"  # the active version
        assert faas.versions("greet") == [1, 2]
        assert faas.versions("gone") == [1]
        assert "gone" not in faas.function_names()
        assert await faas.deploy(greet_v1, name="greet") == mf.Deployment("greet", 3)
