"""The store protocol, as a property: any sequence of writes, on either store, reads back as a
plain model of it says -- before and after the store is closed and opened again."""

from __future__ import annotations

import asyncio
import pickle
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microfaas as mf
from microfaas.events import Message, Record
from microfaas.store import DeadLetter, MemoryStore, SqliteStore, StoredCall, StoredDeployment, StoredJob

FUNCTIONS = ("f", "g")
TOPICS = ("orders",)
STREAMS = ("clicks",)


def error(text: str) -> mf.FaaSError:
    return mf.FunctionError(text, remote_type="builtins.ValueError", remote_message=text, remote_traceback="", function_name="f")


# One operation is a tuple: its name, then its arguments (drawn small, so they meet each other).
# The operations are grouped by what they touch, so that each example works one part hard.
REOPEN = st.tuples(st.just("reopen"))
AREAS = {
    "calls": st.one_of(
        st.tuples(st.just("spawn"), st.sampled_from(FUNCTIONS), st.integers(0, 5)),
        st.tuples(st.just("attempt"), st.integers(0, 6), st.integers(1, 5), st.floats(0, 100)),
        st.tuples(st.just("finish"), st.integers(0, 6), st.booleans(), st.integers(-3, 3)),
        st.tuples(st.just("job"), st.sampled_from(FUNCTIONS), st.integers(0, 3)),
        st.tuples(st.just("finish_task"), st.integers(0, 2), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("job_finished"), st.integers(0, 2)),
        REOPEN,
    ),
    "topics": st.one_of(
        st.tuples(st.just("publish"), st.lists(st.sampled_from(FUNCTIONS), min_size=1, max_size=2, unique=True), st.text(max_size=3)),
        st.tuples(st.just("msg_attempt"), st.sampled_from(FUNCTIONS), st.integers(0, 9), st.integers(2, 4)),
        st.tuples(st.just("msg_done"), st.sampled_from(FUNCTIONS), st.integers(0, 9)),
        REOPEN,
    ),
    "streams": st.one_of(
        st.tuples(st.just("put"), st.integers(0, 1), st.one_of(st.none(), st.text(max_size=2)), st.integers()),
        st.tuples(st.just("checkpoint"), st.sampled_from(FUNCTIONS), st.integers(0, 1), st.integers(0, 9)),
        st.tuples(st.just("trim"), st.integers(0, 1), st.integers(1, 9)),
        st.tuples(st.just("offset"), st.sampled_from(FUNCTIONS), st.sampled_from(("a.csv", "b.csv")), st.integers(0, 9)),
        st.tuples(st.just("forget"), st.sampled_from(FUNCTIONS), st.lists(st.sampled_from(("a.csv", "b.csv", "c.csv")), max_size=2)),
        REOPEN,
    ),
    "letters": st.one_of(
        st.tuples(st.just("letter"), st.sampled_from(FUNCTIONS), st.text(max_size=3)),
        st.tuples(st.just("unletter"), st.integers(0, 5)),
        st.tuples(st.just("deploy"), st.sampled_from(("a", "b"))),
        st.tuples(st.just("undeploy"), st.sampled_from(("a", "b"))),
        REOPEN,
    ),
}


@attrs.define
class Model:
    """What a store must hold after the writes so far: plain dicts and lists."""

    calls: dict[str, StoredCall] = attrs.Factory(dict)
    jobs: dict[str, StoredJob] = attrs.Factory(dict)
    messages: dict[tuple[str, str], dict[str, tuple[Message, int]]] = attrs.Factory(dict)
    records: dict[int, list[Record]] = attrs.Factory(dict)
    next_sequence: dict[int, int] = attrs.Factory(dict)
    checkpoints: dict[tuple[str, int], int] = attrs.Factory(dict)
    offsets: dict[tuple[str, str], dict[str, int]] = attrs.Factory(dict)
    letters: dict[str, DeadLetter] = attrs.Factory(dict)
    deployments: dict[tuple[str, int], StoredDeployment] = attrs.Factory(dict)
    clock: float = 1000.0

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock


async def apply(store: Any, model: Model, op: tuple[Any, ...]) -> Any:
    """Apply ``op`` to the store (returning the store, which ``reopen`` replaces) and to the model."""
    name, *args = op
    now = model.tick()
    if name == "spawn":
        function, x = args
        call = StoredCall(id=f"c{len(model.calls)}", function=function, source="spawn", args=pickle.dumps(((x,), {})), accepted_at=now)
        model.calls[call.id] = call
        await store.put_call(call)
    elif name == "attempt":
        call_id, attempt, not_before = f"c{args[0]}", args[1], args[2]
        if call_id in model.calls:
            model.calls[call_id] = attrs.evolve(model.calls[call_id], attempt=attempt, not_before=not_before)
        await store.call_attempted(call_id, attempt, not_before)
    elif name == "finish":
        call_id, ok, value = f"c{args[0]}", args[1], args[2]
        outcome = value if ok else error(str(value))
        if call_id in model.calls and model.calls[call_id].state == "pending":
            model.calls[call_id] = attrs.evolve(
                model.calls[call_id], state="succeeded" if ok else "failed", outcome=outcome, finished_at=now
            )
        await store.call_finished(call_id, succeeded=ok, outcome=outcome, finished_at=now)
    elif name == "job":
        function, n = args
        job_id = f"j{len(model.jobs)}"
        tasks = [
            StoredCall(
                id=f"{job_id}.{i}",
                function=function,
                source=f"batch:{job_id}",
                args=pickle.dumps(((i,), {})),
                accepted_at=now,
                job_id=job_id,
                index=i,
            )
            for i in range(n)
        ]
        job = StoredJob(id=job_id, function=function, total=n, max_parallel=2, created_at=now)
        model.jobs[job_id] = job
        model.calls.update((t.id, t) for t in tasks)
        await store.put_job(job, tasks)
    elif name == "finish_task":
        task_id, ok = f"j{args[0]}.{args[1]}", args[2]
        if task_id in model.calls and model.calls[task_id].state == "pending":
            model.calls[task_id] = attrs.evolve(model.calls[task_id], state="succeeded" if ok else "failed", outcome=ok, finished_at=now)
        await store.call_finished(task_id, succeeded=ok, outcome=ok, finished_at=now)
    elif name == "job_finished":
        job_id = f"j{args[0]}"
        if job_id in model.jobs and model.jobs[job_id].finished_at is None:
            model.jobs[job_id] = attrs.evolve(model.jobs[job_id], finished_at=now)
        await store.job_finished(job_id, now)
    elif name == "publish":
        functions, data = args
        message = Message(id=f"m{int(now)}", topic="orders", data=data, published_at=now)
        for function in functions:
            model.messages.setdefault(("orders", function), {})[message.id] = (message, 1)
        await store.put_message(message, functions)
    elif name in ("msg_attempt", "msg_done"):
        function, index = args[0], args[1]
        pending = model.messages.get(("orders", function), {})
        ids = [list(pending)[index % len(pending)]] if pending else ["m-none"]
        if name == "msg_attempt":
            for message_id in ids:
                if message_id in pending:
                    pending[message_id] = (pending[message_id][0], args[2])
            await store.messages_attempted("orders", function, ids, args[2])
        else:
            for message_id in ids:
                pending.pop(message_id, None)
            await store.messages_done("orders", function, ids)
    elif name == "put":
        shard, key, value = args
        sequence = model.next_sequence.get(shard, 0)
        record = Record(key=key, value=value, sequence=sequence, shard=shard, put_at=now)
        model.records.setdefault(shard, []).append(record)
        model.next_sequence[shard] = sequence + 1
        await store.put_record("clicks", record)
    elif name == "checkpoint":
        function, shard, upto = args
        sequence = min(upto, model.next_sequence.get(shard, 0) - 1)
        if sequence >= 0:
            model.checkpoints[(function, shard)] = sequence
            await store.set_checkpoint("clicks", function, shard, sequence)
    elif name == "trim":
        shard, below = args
        below = min(below, model.next_sequence.get(shard, 0))
        model.records[shard] = [r for r in model.records.get(shard, []) if r.sequence >= below]
        await store.trim_records("clicks", shard, below)
    elif name == "offset":
        function, part, offset = args
        model.offsets.setdefault(("files:*.csv", function), {})[part] = offset
        await store.set_offset("files:*.csv", function, part, offset)
        assert store.get_offsets("files:*.csv", function) == model.offsets[("files:*.csv", function)]  # committed: read back
    elif name == "forget":
        function, parts = args
        for part in parts:
            model.offsets.get(("files:*.csv", function), {}).pop(part, None)
        await store.forget_offsets("files:*.csv", function, parts)
        assert store.get_offsets("files:*.csv", function) == model.offsets.get(("files:*.csv", function), {})
    elif name == "letter":
        function, event = args
        letter = DeadLetter(
            function=function,
            source="spawn",
            event=event,
            error=error(event),
            attempts=2,
            invocation_id="i",
            first_attempt_at=now - 1,
            failed_at=now,
            id=f"d{int(now)}",
        )
        model.letters[letter.id] = letter
        await store.put_dead_letter(letter)
    elif name == "unletter":
        ids = list(model.letters)[args[0] : args[0] + 2]
        for letter_id in ids:
            del model.letters[letter_id]
        await store.remove_dead_letters(ids)
    elif name == "deploy":
        version = 1 + max((v for n, v in model.deployments if n == args[0]), default=0)
        for key, d in model.deployments.items():
            if d.name == args[0]:
                model.deployments[key] = attrs.evolve(d, active=False)
        deployment = StoredDeployment(name=args[0], version=version, code=pickle.dumps(version), deployed_at=now)
        model.deployments[(args[0], version)] = deployment
        await store.put_deployment(deployment)
    elif name == "undeploy":
        for key, d in model.deployments.items():
            if d.name == args[0]:
                model.deployments[key] = attrs.evolve(d, active=False)
        await store.undeploy(args[0])
    elif name == "reopen":
        await store.close()
        store = type(store)(store.path) if isinstance(store, SqliteStore) else store
        check_snapshot(await store.open(), model)
    return store


def check_snapshot(snapshot: Any, model: Model) -> None:
    pending = [c for c in model.calls.values() if c.state == "pending" and c.job_id is None]
    assert [_comparable(c) for c in snapshot.calls] == [_comparable(c) for c in pending]
    open_jobs = [j for j in model.jobs.values() if j.finished_at is None]
    assert [(j.id, j.total, [_comparable(t) for t in j.tasks]) for j in snapshot.jobs] == [
        (j.id, j.total, [_comparable(t) for t in model.calls.values() if t.job_id == j.id]) for j in open_jobs
    ]
    got: dict[tuple[str, str], list[tuple[Message, int]]] = {}
    for m in snapshot.messages:
        got.setdefault((m.topic, m.function), []).append((m.message, m.attempt))
    assert got == {key: list(p.values()) for key, p in model.messages.items() if p}
    stream = snapshot.streams.get("clicks")
    if model.next_sequence:
        assert stream is not None
        assert dict(stream.next_sequence) == model.next_sequence
        assert {s: list(rs) for s, rs in stream.records.items()} == {s: rs for s, rs in model.records.items() if rs}
        assert dict(stream.checkpoints) == model.checkpoints
    else:
        assert stream is None
    assert [(d.id, d.event, str(d.error)) for d in snapshot.dead_letters] == [(d.id, d.event, str(d.error)) for d in model.letters.values()]
    offsets = {where: parts for where, parts in model.offsets.items() if parts}
    assert {where: dict(parts) for where, parts in snapshot.offsets.items()} == offsets
    assert list(snapshot.deployments) == sorted(model.deployments.values(), key=lambda d: (d.name, d.version))


def _comparable(call: StoredCall) -> tuple[Any, ...]:
    outcome = str(call.outcome) if isinstance(call.outcome, BaseException) else call.outcome
    return (call.id, call.function, call.source, call.args, call.attempt, call.not_before, call.index, call.state, outcome)


def check_reads(store: Any, model: Model) -> None:
    for call in model.calls.values():
        stored = store.get_call(call.id)
        assert stored is not None and _comparable(stored) == _comparable(call)
    for job in model.jobs.values():
        stored_job = store.get_job(job.id)
        assert stored_job is not None and stored_job.finished_at == job.finished_at
        assert [t.id for t in stored_job.tasks] == [t.id for t in model.calls.values() if t.job_id == job.id]
    assert store.get_call("never") is None and store.get_job("never") is None


async def run_ops(make: Any, operations: list[tuple[Any, ...]]) -> None:
    store = make()
    model = Model()
    check_snapshot(await store.open(), model)
    try:
        for op in operations:
            store = await apply(store, model, op)
        check_reads(store, model)
        await store.close()
        store = make() if isinstance(store, SqliteStore) else store
        check_snapshot(await store.open(), model)
        check_reads(store, model)
    finally:
        await store.close()


@pytest.mark.parametrize("area", sorted(AREAS))
def test_the_memory_store_reads_back_what_was_written(area: str) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(AREAS[area], min_size=3, max_size=30))
    def check(operations: list[tuple[Any, ...]]) -> None:
        asyncio.run(run_ops(MemoryStore, operations))

    check()


def check_sqlite_store(area: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(AREAS[area], min_size=3, max_size=30))
    def check(operations: list[tuple[Any, ...]]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "faas.db"
            asyncio.run(run_ops(lambda: SqliteStore(path), operations))

    check()


# Every example opens the file twice or more, and each open's writer process takes about
# 40 ms to start and end: the default run tries 25 examples per area, the slow run 100.
@pytest.mark.parametrize("area", sorted(AREAS))
def test_the_sqlite_store_reads_back_what_was_written(area: str) -> None:
    check_sqlite_store(area, examples=25)


@pytest.mark.slow
@pytest.mark.parametrize("area", sorted(AREAS))
def test_the_sqlite_store_reads_back_what_was_written_in_more_cases(area: str) -> None:
    check_sqlite_store(area, examples=100)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_prune_drops_finished_calls_jobs_and_records_past_their_time(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        options = {"result_ttl": 10, "stream_retention": 5}
        store = MemoryStore(**options) if kind == "memory" else SqliteStore(tmp_path / "s.db", **options)
        await store.open()
        args = pickle.dumps(((), {}))
        for i, finished_at in enumerate((100.0, 120.0)):
            await store.put_call(StoredCall(id=f"c{i}", function="f", source="spawn", args=args, accepted_at=finished_at))
            await store.call_finished(f"c{i}", succeeded=True, outcome=i, finished_at=finished_at)
        await store.put_call(StoredCall(id="running", function="f", source="spawn", args=args, accepted_at=50.0))
        task = StoredCall(id="j.0", function="f", source="batch:j", args=args, accepted_at=90.0, job_id="j", index=0)
        await store.put_job(StoredJob(id="j", function="f", total=1, max_parallel=1, created_at=90.0), [task])
        await store.call_finished("j.0", succeeded=True, outcome=0, finished_at=95.0)
        await store.job_finished("j", 105.0)
        for sequence, put_at in enumerate((100.0, 114.0)):
            await store.put_record("clicks", Record(key=None, value=sequence, sequence=sequence, shard=0, put_at=put_at))
        await store.prune(now=116.0)
        assert store.get_call("c0") is None  # finished 16 s ago, kept for 10
        assert store.get_call("c1") is not None and store.get_call("running") is not None  # unfinished calls are never pruned
        assert store.get_job("j") is None and store.get_call("j.0") is None
        await store.close()
        if kind == "sqlite":
            store = SqliteStore(tmp_path / "s.db", **options)
        snapshot = await store.open()
        [stream] = snapshot.streams.values()
        assert [r.sequence for r in stream.records[0]] == [1]  # put 2 s ago, kept for 5; the other one expired
        assert stream.next_sequence[0] == 2
        await store.close()

    asyncio.run(main())
