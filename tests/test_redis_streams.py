"""mf.RedisStream against a real redis-server: order, acknowledgements, bisection, partial failure,
reclaimed entries, undecodable entries, an unreachable server, a restarted server and a killed platform."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

import microfaas as mf
from conftest import HandlerLog, wait_until
from microfaas import lifecycle

pytestmark = pytest.mark.anyio

try:
    import redis
except ImportError:  # the connectors extra: its tests (marked `connectors`) fail without it, the others run
    redis = None

LOG = HandlerLog("redis-streams")
FAST = mf.Retries(0, initial_delay=0.01, jitter=False)


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


def handled() -> list[tuple[str, str, str]]:
    """(stream, entry id, value of field "n") of each record handled, in log order."""
    return [tuple(line.split()) for line in LOG.lines()]  # type: ignore[misc]


def record_all(batch: mf.RecordBatch) -> None:
    LOG.write("\n".join(f"{batch.stream} {r.key} {r.value['n']}" for r in batch))


def fail_on_poison(batch: mf.RecordBatch) -> None:
    for r in batch:
        if r.value["n"] == "poison":
            raise ValueError("poison")
    record_all(batch)


def report_failed(batch: mf.RecordBatch) -> mf.BatchResult | None:
    """Fails the record n=3 on its first attempt only, reporting it in a BatchResult."""
    bad = [r for r in batch if r.value["n"] == "3" and mf.context().attempt == 1]
    good = [r for r in batch if not bad or r.sequence < bad[0].sequence]
    LOG.write("\n".join(f"{batch.stream} {r.key} {r.value['n']}" for r in good))
    return mf.BatchResult(failed=[bad[0].key]) if bad else None


def slow(batch: mf.RecordBatch) -> None:
    time.sleep(0.02)
    record_all(batch)


def client(server):
    return redis.Redis.from_url(server.url)


def add(server, stream: str, values, **extra) -> list[str]:
    with client(server) as r:
        return [r.xadd(stream, {"n": str(v), **extra}).decode() for v in values]


def pending_count(server, stream: str, group: str = "microfaas") -> int:
    with client(server) as r:
        return int(r.xpending(stream, group)["pending"])


# -- settings (no server needed) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"url": "http://x"}, "url"),
        ({"stream": ""}, "stream"),
        ({"stream": []}, "stream"),
        ({"batch_size": 0}, "batch_size"),
        ({"start": "middle"}, "start"),
        ({"claim_idle": 0}, "claim_idle"),
        ({"decode": "no-such-codec"}, "decode"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_settings_fail_at_decoration(settings, field):
    args = {"url": "redis://127.0.0.1:1/0", "stream": "s", **settings}
    with pytest.raises(ValueError, match=f"RedisStream: {field} must be"):
        mf.RedisStream(**args)


@pytest.mark.connectors
async def test_an_unreachable_server_fails_app_run_naming_the_connector_and_address():
    app = mf.App("redis-down")
    app.function(record_all, name="on_clicks", triggers=[mf.RedisStream("redis://:secret@127.0.0.1:1/0", stream="clicks")])
    with pytest.raises(mf.ConnectorUnreachable) as caught:
        async with app.run():
            pass
    message = str(caught.value)
    assert "on_clicks: RedisStream 'clicks' could not reach redis://:***@127.0.0.1:1/0" in message
    assert "secret" not in message
    assert "wait_for_server=True" in message


# -- against a real server -----------------------------------------------------------------------


@pytest.mark.connectors
async def test_records_arrive_in_stream_order_per_stream_and_are_acknowledged(redis_server):
    app = mf.App("redis-order")
    app.function(record_all, name="on_clicks", triggers=[mf.RedisStream(redis_server.url, stream=["a", "b"], batch_size=7)])
    early = add(redis_server, "a", range(10))  # before the group exists: start="earliest" reads them
    async with app.run() as faas:
        ids_a = early + add(redis_server, "a", range(10, 40))
        ids_b = add(redis_server, "b", range(25))
        await wait_until(lambda: len(handled()) >= 65)
        await faas.drain(timeout=30)
    got = handled()
    assert [(k, int(n)) for s, k, n in got if s == "a"] == [(k, n) for n, k in enumerate(ids_a)]
    assert [(k, int(n)) for s, k, n in got if s == "b"] == [(k, n) for n, k in enumerate(ids_b)]
    assert pending_count(redis_server, "a") == pending_count(redis_server, "b") == 0


@pytest.mark.connectors
async def test_an_entry_is_acknowledged_only_after_its_handler_succeeded(redis_server, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    def held(batch: mf.RecordBatch) -> None:
        with open(gate) as f:
            f.read(1)
        record_all(batch)

    app = mf.App("redis-ack")
    app.function(held, name="held", triggers=[mf.RedisStream(redis_server.url, stream="s", batch_size=5)])
    fd = os.open(gate, os.O_RDWR)
    try:
        async with app.run() as faas:
            add(redis_server, "s", range(5))
            await wait_until(lambda: pending_count(redis_server, "s") == 5)  # read, handler running: not acknowledged
            assert handled() == []
            os.write(fd, b"x")
            await faas.drain(timeout=30)
            assert pending_count(redis_server, "s") == 0
    finally:
        os.close(fd)
    assert len(handled()) == 5


@pytest.mark.connectors
async def test_a_poison_entry_is_bisected_out_dead_lettered_and_acknowledged(redis_server):
    app = mf.App("redis-poison")
    app.function(
        fail_on_poison, name="picky", retries=FAST, triggers=[mf.RedisStream(redis_server.url, stream="s", batch_size=8, max_retries=0)]
    )
    async with app.run() as faas:
        ids = add(redis_server, "s", [0, 1, 2, "poison", 4, 5, 6, 7])
        await wait_until(lambda: len(handled()) >= 7)
        await faas.drain(timeout=30)
        letters = faas.dead_letters("picky")
    assert [n for _, _, n in handled()] == ["0", "1", "2", "4", "5", "6", "7"]
    assert len(letters) == 1
    assert letters[0].event.key == ids[3] and letters[0].source == "redis:s"
    assert "poison" in str(letters[0].error)
    assert pending_count(redis_server, "s") == 0


@pytest.mark.connectors
async def test_a_batch_result_retries_from_the_failed_record_only(redis_server):
    app = mf.App("redis-partial")
    app.function(report_failed, name="partial", retries=FAST, triggers=[mf.RedisStream(redis_server.url, stream="s", batch_size=6)])
    async with app.run() as faas:
        add(redis_server, "s", range(6))
        await wait_until(lambda: len(handled()) >= 6)
        await faas.drain(timeout=30)
        assert faas.dead_letters("partial") == []
    assert [n for _, _, n in handled()] == ["0", "1", "2", "3", "4", "5"]  # 0-2 once, then 3-5 on the retry
    assert pending_count(redis_server, "s") == 0


@pytest.mark.connectors
async def test_an_undecodable_entry_goes_to_the_dead_letters_with_the_reason(redis_server):
    app = mf.App("redis-undecodable")
    app.function(record_all, name="texts", triggers=[mf.RedisStream(redis_server.url, stream="s")])
    async with app.run() as faas:
        with client(redis_server) as r:
            bad = r.xadd("s", {"n": b"\xff\xfe"}).decode()
        add(redis_server, "s", [1])
        await wait_until(lambda: len(handled()) >= 1)
        await faas.drain(timeout=30)
        letters = faas.dead_letters("texts")
    assert [n for _, _, n in handled()] == ["1"]
    assert len(letters) == 1 and letters[0].event.key == bad
    assert isinstance(letters[0].error, mf.SerializationError)
    assert f"entry {bad} of Redis stream 's' does not decode as utf-8" in str(letters[0].error)
    assert pending_count(redis_server, "s") == 0


@pytest.mark.connectors
async def test_entries_a_crashed_consumer_held_are_claimed_and_handled(redis_server):
    with client(redis_server) as r:
        r.xgroup_create("s", "microfaas", id="0", mkstream=True)
        ids = add(redis_server, "s", range(4))
        r.xreadgroup("microfaas", "crashed", {"s": ">"}, count=4)  # read by a consumer that then died
    assert pending_count(redis_server, "s") == 4
    app = mf.App("redis-claim")
    app.function(record_all, name="claimer", triggers=[mf.RedisStream(redis_server.url, stream="s", claim_idle=0.2)])
    async with app.run() as faas:
        await wait_until(lambda: len(handled()) >= 4)
        await faas.drain(timeout=30)
    assert [k for _, k, _ in handled()] == ids
    assert pending_count(redis_server, "s") == 0


@pytest.mark.connectors
async def test_a_restarted_server_is_reconnected_to_and_nothing_is_lost(redis_server):
    app = mf.App("redis-restart")
    app.function(slow, name="slow", triggers=[mf.RedisStream(redis_server.url, stream="s", batch_size=5)])
    async with app.run() as faas:
        with faas.subscribe_events(kind=[lifecycle.CONNECTOR_DOWN, lifecycle.CONNECTOR_UP]) as events:
            first = add(redis_server, "s", range(50))
            await wait_until(lambda: len(handled()) >= 10)
            await anyio.to_thread.run_sync(redis_server.restart)
            second = add(redis_server, "s", range(50, 80))
            await wait_until(lambda: len({k for _, k, _ in handled()}) >= 80)
            await faas.drain(timeout=60)
            kinds = []
            while True:
                with anyio.move_on_after(0.1):
                    kinds.append((await events.receive()).kind)
                    continue
                break
    ids = [k for _, k, _ in handled()]
    assert set(ids) == set(first + second)
    assert list(dict.fromkeys(ids)) == first + second  # in stream order (a batch cut short by the restart may come twice)
    assert lifecycle.CONNECTOR_DOWN in kinds and kinds[-1] == lifecycle.CONNECTOR_UP
    assert pending_count(redis_server, "s") == 0


@pytest.mark.connectors
async def test_wait_for_server_waits_for_a_server_that_starts_later(tmp_path):
    from servers import RedisServer

    folder = tmp_path / "late"
    folder.mkdir()
    server = RedisServer(folder)
    app = mf.App("redis-late")
    app.function(record_all, name="late", triggers=[mf.RedisStream(server.url, stream="s", wait_for_server=True)])
    try:
        async with app.run() as faas:
            await wait_until(lambda: faas.events(kind=lifecycle.CONNECTOR_DOWN))
            down = faas.events(kind=lifecycle.CONNECTOR_DOWN)[0]
            assert down.function == "late" and down.detail["address"] == server.url
            await anyio.to_thread.run_sync(server.start)
            add(server, "s", range(3))
            await wait_until(lambda: len(handled()) >= 3)
            await faas.drain(timeout=30)
            assert faas.events(kind=lifecycle.CONNECTOR_UP)
    finally:
        server.stop()


# -- kill -9 of the platform -----------------------------------------------------------------------


def child(url: str, store: str) -> None:
    """Run a platform that consumes stream "s" slowly until it is killed (or, with MF_DRAIN, until drained)."""

    async def main() -> None:
        app = mf.App("redis-kill")
        app.function(slow, name="slow", triggers=[mf.RedisStream(url, stream="s", batch_size=4)])
        async with app.run(store=store) as faas:
            print("ready", flush=True)
            if os.environ.get("MF_DRAIN"):
                await wait_until(lambda: pending_count_url(url) == 0 and backlog(url) == 0, 60)
                await faas.drain(timeout=30)
                print("drained", flush=True)
                return
            await anyio.sleep_forever()

    anyio.run(main)


def pending_count_url(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        return int(r.xpending("s", "microfaas")["pending"])


def backlog(url: str) -> int:
    """Entries of "s" not yet delivered to the group."""
    with redis.Redis.from_url(url) as r:
        group = next(g for g in r.xinfo_groups("s") if g["name"] == b"microfaas")
        return int(group.get("lag") or 0)


def _spawn(url: str, store: Path, **env: str) -> subprocess.Popen[str]:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_redis_streams as t; t.child({url!r}, {str(store)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, **env})


@pytest.mark.connectors
async def test_a_killed_platform_loses_nothing_after_a_restart(redis_server, tmp_path):
    ids = add(redis_server, "s", range(200))
    store = tmp_path / "faas.db"
    first = _spawn(redis_server.url, store)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "ready"
        await wait_until(lambda: len(handled()) >= 40)
        family = psutil.Process(first.pid).children(recursive=True)
        os.kill(first.pid, signal.SIGKILL)  # its containers die with it (PR_SET_PDEATHSIG)
        psutil.wait_procs(family, timeout=10)
    finally:
        first.kill()
        first.wait()
    done_before = {k for _, k, _ in handled()}
    assert len(done_before) < 200
    second = _spawn(redis_server.url, store, MF_DRAIN="1")
    try:
        out, _ = await anyio.to_thread.run_sync(lambda: second.communicate(timeout=120))
    finally:
        second.kill()
        second.wait()
    assert "drained" in out
    seen = [k for _, k, _ in handled()]
    assert set(seen) == set(ids)  # every entry handled at least once
    assert pending_count(redis_server, "s") == 0


async def test_entries_a_lost_reply_gave_come_before_those_of_the_read_run_again():
    # The server took a read of new entries (A) and went down before its reply came; the
    # connection reconnected and ran the read again, which gave the next entries (B). A are
    # pending for this consumer, unseen: they must be delivered first, then B, in stream order.
    from microfaas.sources.redis_streams import RedisStreamSource

    source = RedisStreamSource(mf.RedisStream("redis://127.0.0.1:1/0", stream="s", batch_size=2), "f")
    [reader] = source._readers
    pending: list[str] = []  # this consumer's entries in the server's pending list
    delivered: list[str] = []

    class Connection:
        reconnects = 0

    source._connection = Connection()

    async def read(reader, after: str, *, block):
        if after != ">":  # this consumer's pending entries after ``after``
            return [(entry_id, {}) for entry_id in pending if entry_id > after][:2]
        if pending or delivered:
            await anyio.sleep_forever()  # nothing new after B
        pending.extend(["1-0", "2-0"])  # A: taken by the server, the reply lost with the connection
        Connection.reconnects += 1
        pending.extend(["3-0", "4-0"])  # B: the read run again
        return [("3-0", {}), ("4-0", {})]

    async def deliver(runtime, retries, reader, entries) -> None:
        delivered.extend(entry_id for entry_id, _ in entries)
        pending[:] = [entry_id for entry_id in pending if entry_id not in delivered]  # acknowledged
        if len(delivered) >= 4:
            scope.cancel()

    source._read = read
    source._deliver = deliver
    with anyio.CancelScope() as scope, anyio.fail_after(5):
        await source._serve(None, FAST, reader)
    assert delivered == ["1-0", "2-0", "3-0", "4-0"]
