"""A deployed function's triggers: topics, streams, timers and Http routes wired on the running
platform, replaced by the next version's, stopped by undeploy, refused when they cannot be wired
(nothing changed), and wired again after a restart on the store."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import microfaas as mf
from microfaas import lifecycle as ev
from microfaas.http import make_asgi_app

pytestmark = pytest.mark.anyio

app = mf.App("deploy-triggers")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)


@app.function(triggers=[orders.subscribe()])
def declared_biller(message: mf.Message) -> None:
    return None


@app.function(triggers=[mf.Every(seconds=3600, name="nightly"), mf.Http("GET", "/declared")])
def declared_nightly(event: Any) -> str:
    return "declared"


def logger(path: Path, version: str) -> Callable[[Any], None]:
    """A handler (shipped by value) that appends what it got to ``path``, tagged with ``version``."""
    where = str(path)

    def handle(event: Any) -> None:
        if isinstance(event, mf.Message):
            what = [f"{event.data}"]
        elif isinstance(event, list):
            what = [f"{m.data}" for m in event]
        elif isinstance(event, mf.RecordBatch):
            what = [f"{r.key}:{r.value}" for r in event.records]
        else:
            what = [type(event).__name__]
        with open(where, "a") as f:
            f.writelines(f"{version} {item}\n" for item in what)

    return handle


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow  # a few seconds; CI runs it with -m slow
async def test_a_deployed_subscription_is_replaced_by_the_next_versions_and_removed_by_undeploy(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with app.run() as faas:
        topic = faas.topic("orders")
        await faas.deploy(logger(log, "v1"), name="audit", triggers=[orders.subscribe()])
        assert set(topic.subscribers()) == {"declared_biller", "audit"}
        await topic.publish(1)
        await faas.drain(timeout=60)
        assert lines(log) == ["v1 1"]
        await faas.deploy(logger(log, "v2"), name="audit", triggers=[orders.subscribe(batch_size=2, batch_window=5.0)])
        assert topic.subscribers()["audit"].batch_size == 2
        await topic.publish(2)
        await topic.publish(3)
        await faas.drain(timeout=60)
        assert lines(log)[1:] == ["v2 2", "v2 3"]  # one batch of two, by the new version
        await faas.deploy(logger(log, "v3"), name="audit")  # no triggers any more
        assert set(topic.subscribers()) == {"declared_biller"}
        await topic.publish(4)
        await faas.drain(timeout=60)
        assert len(lines(log)) == 3
        assert faas.stats("declared_biller").invocations == 4
        await faas.deploy(logger(log, "v4"), name="audit", triggers=[orders.subscribe()])
        await faas.undeploy("audit")
        assert set(topic.subscribers()) == {"declared_biller"}
        await topic.publish(5)
        await faas.drain(timeout=60)
        assert len(lines(log)) == 3


def blocks_until(flag: Path) -> Callable[[mf.Message], None]:
    where = str(flag)

    def handle(message: mf.Message) -> None:
        while not os.path.exists(where):
            time.sleep(0.01)

    return handle


async def test_messages_a_removed_subscription_had_not_delivered_go_to_the_dead_letters(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    async with app.run() as faas:
        topic = faas.topic("orders")
        await faas.deploy(blocks_until(flag), name="stuck", triggers=[orders.subscribe(max_concurrency=1, buffer_size=2)])
        with faas.subscribe_events((ev.COLD_START, ev.WARM_START), function="stuck") as started:
            await topic.publish("first")
            with anyio.fail_after(60):
                await started.receive()  # "first" is being handled
        for data in ("second", "third", "fourth"):  # the buffer holds two: the fourth waits for room
            with anyio.move_on_after(0.2):
                await topic.publish(data)
        await faas.deploy(blocks_until(flag), name="stuck")  # its subscription goes
        flag.touch()
        await faas.drain(timeout=60)  # nothing is left counted in flight
        letters = faas.dead_letters("stuck")
        assert sorted(letter.event.data for letter in letters) == ["fourth", "second", "third"]
        assert all(isinstance(letter.error, mf.UnknownFunction) for letter in letters)
        assert "no longer subscribes to topic 'orders' (its new version does not)" in str(letters[0].error)
        assert faas.stats("stuck").invocations == 1  # "first" finished on the old version


async def test_a_deployed_stream_consumer_hands_over_to_the_next_version_after_its_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with app.run() as faas:
        stream = faas.stream("clicks")
        await faas.deploy(logger(log, "v1"), name="counter", triggers=[clicks.consume(batch_size=10)])
        for i in range(6):
            await stream.put(i, key=f"user{i % 3}")
        await faas.drain(timeout=60)
        assert sorted(lines(log)) == sorted(f"v1 user{i % 3}:{i}" for i in range(6))
        before = stream.checkpoints("counter")
        await faas.deploy(logger(log, "v2"), name="counter", triggers=[clicks.consume(batch_size=1, parallelization=2)])
        for i in range(6, 12):
            await stream.put(i, key=f"user{i % 3}")
        await faas.drain(timeout=60)
        handled = lines(log)[6:]
        assert sorted(handled) == sorted(f"v2 user{i % 3}:{i}" for i in range(6, 12))  # nothing handled twice
        for key in ("user0", "user1", "user2"):  # per-key order held across the hand-over
            values = [int(line.rpartition(":")[2]) for line in lines(log) if f" {key}:" in line]
            assert values == sorted(values)
        after = stream.checkpoints("counter")
        assert sum(after.values()) - sum(before.values()) == 6
        await faas.undeploy("counter")
        assert "counter" not in stream.consumers()
        await stream.put(99, key="user0")
        await faas.drain(timeout=60)  # the record is not waiting for the consumer that went
        assert len(lines(log)) == 12


async def test_a_deployed_timer_keeps_running_when_unchanged_and_stops_when_removed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with app.run() as faas:
        await faas.deploy(logger(log, "v1"), name="ticker", triggers=[mf.Every(seconds=0.1)])
        timer = faas.source("timer:ticker")
        with anyio.fail_after(60):
            while not lines(log):
                await anyio.sleep(0.05)
        await faas.deploy(logger(log, "v2"), name="ticker", triggers=[mf.Every(seconds=0.1)])
        assert faas.source("timer:ticker") is timer  # the same timer, on its schedule
        with anyio.fail_after(60):
            while not any(line.startswith("v2") for line in lines(log)):
                await anyio.sleep(0.05)
        assert all(line.endswith("Tick") for line in lines(log))
        await faas.deploy(logger(log, "v3"), name="ticker", triggers=[mf.Every(seconds=0.1, name="renamed")])
        with pytest.raises(mf.UnknownSource):
            faas.source("timer:ticker")
        assert faas.source("timer:renamed").function == "ticker"
        await faas.undeploy("ticker")
        with pytest.raises(mf.UnknownSource):
            faas.source("timer:renamed")
        await faas.drain(timeout=60)
        count = len(lines(log))
        await anyio.sleep(0.4)
        assert len(lines(log)) == count  # no timer fires for it any more


def hello(version: str) -> Callable[[mf.HttpRequest], dict[str, str]]:
    def handle(request: mf.HttpRequest) -> dict[str, str]:
        return {"hello": request.path_params["who"], "version": version}

    return handle


async def test_the_gateway_serves_the_routes_and_invoke_api_of_deployed_functions() -> None:
    async with app.run() as faas:
        gateway = make_asgi_app(faas, invoke_api=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway") as http:
            assert (await http.get("/hello/ada")).status_code == 404
            await faas.deploy(hello("v1"), name="hello", triggers=[mf.Http("GET", "/hello/{who}")])
            assert (await http.get("/hello/ada")).json() == {"hello": "ada", "version": "v1"}
            await faas.deploy(hello("v2"), name="hello", triggers=[mf.Http("GET", "/hi/{who}")])
            assert (await http.get("/hello/ada")).status_code == 404  # the old version's route went
            assert (await http.get("/hi/bob")).json() == {"hello": "bob", "version": "v2"}
            listed = (await http.get("/v1/functions")).json()["functions"]
            assert {"declared_biller", "declared_nightly", "hello"} <= {f["name"] for f in listed}
            [mine] = [f for f in listed if f["name"] == "hello"]
            assert mine["stats"]["invocations"] == 2  # faas.stats counts the deployed function's versions
            detail = (await http.get("/v1/functions/hello")).json()
            assert detail["routes"] == ["GET /hi/{who}"]
            await faas.undeploy("hello")
            assert (await http.get("/hi/bob")).status_code == 404
            assert (await http.get("/v1/functions/hello")).status_code == 404
            assert (await http.get("/declared")).text == "declared"


async def test_triggers_that_cannot_be_wired_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    async with app.run() as faas:
        await faas.deploy(logger(log, "v1"), name="audit", triggers=[orders.subscribe()])
        bad: list[tuple[list[Any], str]] = [
            ([mf.Topic("nowhere").subscribe()], "subscribes to topic 'nowhere', which app 'deploy-triggers' did not declare"),
            ([mf.Stream("nowhere").consume()], "consumes stream 'nowhere', which app 'deploy-triggers' did not declare"),
            ([mf.Every(seconds=1, name="nightly")], "timer name 'nightly' is already used by a timer of declared_nightly"),
            ([mf.Http("GET", "/declared")], "collides with GET /declared of declared_nightly"),
            ([mf.Http("GET", "/healthz")], "reserved by the gateway"),
            (
                [orders.subscribe(buffer_size=5)],
                r"buffer_size of its subscription to topic 'orders' cannot change while it runs \(1000 -> 5\): .*"
                r"Deploy with buffer_size=1000 .*redrive",
            ),
        ]
        for triggers, message in bad:
            with pytest.raises(ValueError, match=message):
                await faas.deploy(logger(log, "v2"), name="audit", triggers=triggers)
        assert faas.versions("audit") == [1]
        assert faas.function("audit").triggers == (orders.subscribe(),)
        assert set(faas.topic("orders").subscribers()) == {"declared_biller", "audit"}
        await faas.topic("orders").publish("still v1")
        await faas.drain(timeout=60)
        assert lines(log) == ["v1 still v1"]


async def test_a_restart_wires_the_deployed_functions_triggers_before_resuming(tmp_path: Path) -> None:
    store, log, flag = tmp_path / "faas.db", tmp_path / "log", tmp_path / "go"
    async with app.run(store=store) as faas:
        await faas.deploy(blocks_until(flag), name="audit", triggers=[orders.subscribe()])
        await faas.deploy(logger(log, "consumer"), name="counter", triggers=[clicks.consume()])
        await faas.stream("clicks").put("a", key="k")
        await faas.drain(timeout=60)
        with faas.subscribe_events((ev.COLD_START, ev.WARM_START), function="audit") as started:
            await faas.topic("orders").publish("left over")
            with anyio.fail_after(60):
                await started.receive()
        # The platform stops with "left over" being handled: it stays accepted.
    flag.touch()
    async with app.run(store=store) as faas:
        assert set(faas.topic("orders").subscribers()) == {"declared_biller", "audit"}
        assert "counter" in faas.stream("clicks").consumers()
        await faas.stream("clicks").put("b", key="k")
        await faas.drain(timeout=60)
        assert faas.dead_letters("audit") == []  # resumed by the restored subscription, not dead-lettered
        assert faas.stats("audit").invocations == 1
        assert lines(log) == ["consumer k:a", "consumer k:b"]  # after its checkpoint: "a" is not handled again


async def test_a_deployment_the_store_cannot_take_changes_nothing(tmp_path: Path) -> None:
    ballast = b"x" * 400_000  # shipped with the handler's code: does not fit a store capped at 0.25 MB
    log = tmp_path / "log"

    def heavy(message: mf.Message) -> int:
        return len(ballast)

    async with app.run(store=mf.SqliteStore(tmp_path / "small.db", max_size_mb=0.25)) as faas:
        await faas.deploy(logger(log, "v1"), name="audit", triggers=[orders.subscribe()])
        with pytest.raises(mf.StoreFull):
            await faas.deploy(heavy, name="audit", triggers=[orders.subscribe(batch_size=3)])
        with pytest.raises(mf.StoreFull):
            await faas.deploy(heavy, name="newcomer", triggers=[mf.Every(seconds=0.1)])
        assert faas.versions("audit") == [1]
        assert faas.topic("orders").subscribers()["audit"] == orders.subscribe()
        assert "newcomer" not in faas.function_names()
        with pytest.raises(mf.UnknownSource):
            faas.source("timer:newcomer")
        await faas.topic("orders").publish("v1 still")
        await faas.drain(timeout=60)
        assert lines(log) == ["v1 v1 still"]


async def test_a_restored_deployment_whose_triggers_the_app_no_longer_allows_is_not_served(tmp_path: Path) -> None:
    store, log = tmp_path / "faas.db", tmp_path / "log"
    async with app.run(store=store) as faas:
        await faas.deploy(logger(log, "v1"), name="audit", triggers=[orders.subscribe()])
        await faas.deploy(logger(log, "v1"), name="plain")
    smaller = mf.App("deploy-triggers")  # the same app, without its topic now
    async with smaller.run(store=store) as faas:
        assert faas.function_names() == ["plain"]  # served; "audit" could not be wired
        assert faas.versions("audit") == [1]  # still kept in the store
        with pytest.raises(mf.UnknownFunction):
            await faas.invoke("audit", "x")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.connectors  # mf.RedisStream needs the connectors extra (redis-py); no server: its port is closed
async def test_a_deploy_whose_new_connector_cannot_start_leaves_the_old_version_wired_and_the_store_as_it_was(tmp_path: Path) -> None:
    store, log, inbox = tmp_path / "faas.db", tmp_path / "log", tmp_path / "in"
    inbox.mkdir()
    unreachable = mf.RedisStream(url=f"redis://127.0.0.1:{closed_port()}", stream="clicks", group="g")
    files = mf.Files(str(inbox / "*.csv"), poll_interval=0.05)
    v1 = [orders.subscribe(), mf.Every(seconds=3600, name="audit-hourly"), files]
    async with app.run(store=store) as faas:
        await faas.deploy(logger(log, "v1"), name="audit", triggers=v1)
        timer, reader = faas.source("timer:audit-hourly"), faas.source(f"files:audit:{files.glob}")
        v2 = [orders.subscribe(batch_size=2), mf.Every(seconds=1800, name="audit-hourly"), unreachable]
        with pytest.raises(mf.ConnectorUnreachable, match=r"audit: RedisStream 'clicks' could not reach redis://127\.0\.0\.1"):
            await faas.deploy(logger(log, "v2"), name="audit", triggers=v2)
        with pytest.raises(mf.ConnectorUnreachable):
            await faas.deploy(logger(log, "new"), name="newcomer", triggers=[mf.Every(seconds=0.05), unreachable])
        # Nothing changed: v1 serves, with each of its triggers as it was (the very same sources).
        assert faas.versions("audit") == [1]
        assert faas.function("audit").triggers == tuple(v1)
        assert faas.source("timer:audit-hourly") is timer and timer.trigger == mf.Every(seconds=3600, name="audit-hourly")
        assert faas.source(f"files:audit:{files.glob}") is reader
        assert faas.topic("orders").subscribers()["audit"] == orders.subscribe()
        assert "newcomer" not in faas.function_names()
        for key in ("redis:audit:clicks", "redis:newcomer:clicks", "timer:newcomer"):
            with pytest.raises(mf.UnknownSource):
                faas.source(key)
        await faas.topic("orders").publish("after")
        (inbox / "a.csv").write_text("n\n1\n")
        with anyio.fail_after(60):
            while len(lines(log)) < 2:
                await anyio.sleep(0.05)
        await faas.drain(timeout=60)
        assert sorted(line.split()[0] for line in lines(log)) == ["v1", "v1"]
    async with app.run(store=store) as faas:  # the store kept no trace of the failed deploys
        assert faas.versions("audit") == [1]
        assert faas.function("audit").triggers == tuple(v1)
        assert "newcomer" not in faas.function_names()
