"""Streams: order per shard, stable sharding, bisection, dead letters, crashes, lag, start positions, parallelization."""

from __future__ import annotations

import collections
import os
import sys

import anyio
import pytest

import microfaas as mf
from conftest import HandlerLog
from microfaas.sources.streams import shard_for_key

pytestmark = pytest.mark.anyio

# Handlers run in other processes: they report what they did in this log.
LOG = HandlerLog("streams")
GATE = HandlerLog("streams-gate")
FAST = mf.Retries(0, initial_delay=0.01, jitter=False)
POISON = 13
KEYS = ["alice", "bob", "carol", "dave", "erin"]


def handled(prefix: str) -> list[tuple[str, int, int, int]]:
    """(key, shard, sequence, value) of each successful handling by ``prefix``, in log order."""
    out = []
    for line in LOG.lines():
        name, key, shard, sequence, value = line.split()
        if name == prefix:
            out.append((key, int(shard), int(sequence), int(value)))
    return out


def _log_batch(name: str, batch: mf.RecordBatch) -> None:
    LOG.write("\n".join(f"{name} {r.key} {r.shard} {r.sequence} {r.value}" for r in batch))


app = mf.App("streams")
clicks = app.stream("clicks", shards=3)
jobs = app.stream("jobs", shards=2)
plain = app.stream("plain")
audit = app.stream("audit")


@app.function(triggers=[clicks.consume(batch_size=4)])
def count(batch: mf.RecordBatch) -> None:
    _log_batch("count", batch)


@app.function(triggers=[jobs.consume(batch_size=8, max_retries=1)], retries=FAST)
def work(batch: mf.RecordBatch) -> None:
    for r in batch:
        if r.value == POISON:
            raise ValueError("poison")
        LOG.write(f"work {r.key} {r.shard} {r.sequence} {r.value}")  # partial progress, as real handlers make


@app.function(triggers=[plain.consume(batch_size=4, bisect_on_error=False, max_retries=1)], retries=FAST)
def strict(batch: mf.RecordBatch) -> None:
    for r in batch:
        if r.value == 5:
            raise ValueError("five")
        LOG.write(f"strict {r.key} {r.shard} {r.sequence} {r.value}")


@app.function(triggers=[audit.consume(batch_size=3, max_retries=2)], retries=FAST)
def dies_on_first_attempt(batch: mf.RecordBatch) -> None:
    if mf.context().attempt == 1:
        os._exit(9)
    _log_batch("audit", batch)


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


def assert_key_order(events: list[tuple[str, int, int, int]]) -> None:
    """Per key, the last handling of each record comes in put order."""
    last: dict[tuple[int, int], int] = {}  # (shard, sequence) -> index of its last handling
    record: dict[tuple[int, int], tuple[str, int]] = {}
    for i, (key, shard, sequence, value) in enumerate(events):
        last[shard, sequence] = i
        record[shard, sequence] = (key, value)
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for position in sorted(last, key=last.__getitem__):
        key, value = record[position]
        by_key[key].append(value)
    for key, values in by_key.items():
        assert values == sorted(values), f"key {key!r} handled out of order: {values}"


async def test_records_are_handled_in_put_order_per_shard():
    async with app.run() as faas:
        stream = faas.stream("clicks")
        put = collections.defaultdict(list)
        for i in range(60):
            record = await stream.put(i, key=KEYS[i % len(KEYS)])
            assert isinstance(record, mf.Record) and record.value == i
            assert record.shard == shard_for_key(KEYS[i % len(KEYS)], 3)
            put[record.shard].append(record.sequence)
        for sequences in put.values():
            assert sequences == list(range(len(sequences)))  # 0, 1, 2, ... per shard
        await faas.drain(timeout=60)
        assert stream.lag() == {0: 0, 1: 0, 2: 0}
        seen = collections.defaultdict(list)
        for _key, shard, sequence, _value in handled("count"):
            seen[shard].append(sequence)
        assert dict(seen) == {shard: sequences for shard, sequences in put.items()}  # complete, strictly increasing
        assert stream.checkpoints("count") == {shard: len(put.get(shard, [])) - 1 for shard in range(3)}
        assert faas.dead_letters("count") == []
        with pytest.raises(mf.UnknownSource, match="no stream 'nope'"):
            faas.stream("nope")
    with pytest.raises(mf.PlatformClosed):
        await stream.put(1, key="alice")


async def test_the_shard_of_a_key_is_stable_across_processes():
    keys = [*KEYS, "", "ünïcode", "x" * 100, *(f"user-{i}" for i in range(50))]
    here = [shard_for_key(k, 7) for k in keys]
    code = (
        "import sys, json; from microfaas.sources.streams import shard_for_key;"
        "print(json.dumps([shard_for_key(k, 7) for k in json.loads(sys.argv[1])]))"
    )
    import json

    for seed in ("0", "12345"):
        result = await anyio.run_process(
            [sys.executable, "-c", code, json.dumps(keys)], env={**os.environ, "PYTHONHASHSEED": seed}, check=True
        )
        assert json.loads(result.stdout) == here
    assert len(set(here)) > 1  # the keys do spread


async def test_a_poison_record_is_isolated_by_bisection_and_dead_lettered_alone():
    async with app.run() as faas:
        for i in range(40):
            await faas.stream("jobs").put(i, key=KEYS[i % 3])
        await faas.drain(timeout=60)
        [letter] = faas.dead_letters("work")
        assert isinstance(letter.event, mf.Record) and letter.event.value == POISON
        assert letter.source == f"stream:jobs/{letter.event.shard}"
        assert letter.attempts == 2  # the first try and max_retries=1
        assert isinstance(letter.error, mf.FunctionError)
        events = handled("work")
        assert {value for *_, value in events} == set(range(40)) - {POISON}  # every other record, once or more
        assert_key_order(events)
        assert faas.stream("jobs").lag() == {0: 0, 1: 0}


async def test_without_bisection_the_whole_failing_batch_is_dead_lettered():
    faas = app.run()
    for i in range(8):  # put before the consumers start, so the batches are [0..3] and [4..7]
        await faas.stream("plain").put(i, key="k")
    async with faas:
        await faas.drain(timeout=60)
        [letter] = faas.dead_letters("strict")
        assert isinstance(letter.event, mf.RecordBatch)
        assert [r.value for r in letter.event] == [4, 5, 6, 7]
        assert letter.source == "stream:plain/0" and letter.attempts == 2
        values = {value for *_, value in handled("strict")}
        assert values >= {0, 1, 2, 3} and not values & {5, 6, 7}
        assert faas.stream("plain").lag() == {0: 0}


async def test_a_container_dying_on_the_first_attempt_loses_no_record():
    async with app.run() as faas:
        for i in range(6):
            await faas.stream("audit").put(i, key=KEYS[i % 2])
        await faas.drain(timeout=60)
        assert sorted({value for *_, value in handled("audit")}) == list(range(6))
        assert_key_order(handled("audit"))
        assert faas.dead_letters("dies_on_first_attempt") == []
        assert faas.stats("dies_on_first_attempt").crashes >= 1


async def test_lag_counts_what_a_slow_consumer_has_not_checkpointed():
    slow = mf.App("slow-streams")
    events = slow.stream("events", shards=2)
    gate = GATE.path  # the handler holds its first record until the test opens the gate

    @slow.function(triggers=[events.consume(batch_size=1)])
    def sluggish(batch: mf.RecordBatch) -> None:
        import time

        _log_batch("sluggish", batch)
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    GATE.clear()
    try:
        async with slow.run() as faas:
            stream = faas.stream("events")
            for i in range(6):
                await stream.put(i, key=KEYS[i % 2])
            assert sum(stream.lag().values()) == 6  # nothing can be checkpointed before an invocation returns
            with anyio.fail_after(30):
                while not LOG.lines():
                    await anyio.sleep(0.01)
            assert sum(stream.lag().values()) > 0  # the consumer is behind: records are still in flight
            assert any("record(s) of stream 'events'" in item for item in stream.pending())
            GATE.write("open")
            await faas.drain(timeout=60)
            assert stream.lag() == {0: 0, 1: 0}
            assert stream.pending() == []
            assert sorted(value for *_, value in handled("sluggish")) == list(range(6))
    finally:
        GATE.clear()


async def test_latest_consumers_skip_records_put_before_they_started():
    starts = mf.App("stream-starts")
    feed = starts.stream("feed")

    @starts.function(triggers=[feed.consume(start="earliest")])
    def early(batch: mf.RecordBatch) -> None:
        _log_batch("early", batch)

    @starts.function(triggers=[feed.consume(start="latest")])
    def late(batch: mf.RecordBatch) -> None:
        _log_batch("late", batch)

    faas = starts.run()
    for i in range(3):  # the stream takes records before the platform (and its consumers) start
        await faas.stream("feed").put(i, key="k")
    async with faas:
        for i in range(3, 6):
            await faas.stream("feed").put(i, key="k")
        await faas.drain(timeout=60)
        assert [value for *_, value in handled("early")] == list(range(6))
        assert [value for *_, value in handled("late")] == [3, 4, 5]
        assert faas.stream("feed").checkpoints("late") == {0: 5}


async def test_parallelization_keeps_each_key_in_order():
    par = mf.App("stream-parallel")
    feed = par.stream("feed")

    @par.function(triggers=[feed.consume(batch_size=2, parallelization=3)], max_containers=3)
    def jittery(batch: mf.RecordBatch) -> None:
        import random
        import time

        time.sleep(random.uniform(0, 0.02))
        _log_batch("jittery", batch)

    async with par.run() as faas:
        for i in range(48):
            await faas.stream("feed").put(i, key=KEYS[i % len(KEYS)] if i % 7 else None)
        await faas.drain(timeout=60)
        events = handled("jittery")
        assert sorted(value for *_, value in events) == list(range(48))  # every record once: nothing failed
        by_key = collections.defaultdict(list)
        for key, _shard, _sequence, value in events:
            if key != "None":
                by_key[key].append(value)
        for key, values in by_key.items():
            assert values == sorted(values), f"key {key!r} out of order: {values}"
        assert faas.stream("feed").lag() == {0: 0}
        assert faas.stream("feed").checkpoints("jittery") == {0: 47}


def test_a_consumer_of_an_undeclared_stream_is_rejected():
    other = mf.App("other-streams")
    stray = other.stream("stray")
    lonely = mf.App("lonely-streams")

    @lonely.function(triggers=[stray.consume()])
    def orphan(batch: mf.RecordBatch) -> None:
        pass

    with pytest.raises(ValueError, match="orphan: consumes stream 'stray'"):
        lonely.run()
