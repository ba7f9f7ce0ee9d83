"""MemoryStore: the default store, in this process's memory.

Nothing in it outlives the process, but it outlives a platform: open the same
``MemoryStore`` in a second ``app.run(store=store)`` and that platform resumes
what the first left, exactly as a ``SqliteStore`` would after a restart (tests
use this to check resuming without a subprocess). Every write is applied at once,
so the awaitable it returns is already complete and awaiting it never suspends.

It keeps objects as they are (no pickling), and at most ``results_kept`` finished
calls besides the ``result_ttl``: it lives in RAM, where a day of results would not fit.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Sequence
from typing import Any

import attrs

from ..errors import StoreLocked
from ..events import Message, Record
from .base import (
    DONE,
    RESULT_TTL,
    STREAM_RETENTION,
    DeadLetter,
    PendingMessage,
    Snapshot,
    StoredCall,
    StoredDeployment,
    StoredJob,
    StoredStream,
    check_retention,
)

__all__ = ["MemoryStore"]


class _Call:
    """A call as the memory store keeps it: mutable, so an update is not a copy."""

    __slots__ = (
        "accepted_at",
        "args",
        "attempt",
        "finished_at",
        "function",
        "id",
        "index",
        "job_id",
        "not_before",
        "outcome",
        "source",
        "state",
    )

    def __init__(self, call: StoredCall) -> None:
        self.id = call.id
        self.function = call.function
        self.source = call.source
        self.args = call.args
        self.accepted_at = call.accepted_at
        self.attempt = call.attempt
        self.not_before = call.not_before
        self.job_id = call.job_id
        self.index = call.index
        self.state = call.state
        self.outcome = call.outcome
        self.finished_at = call.finished_at

    def stored(self) -> StoredCall:
        return StoredCall(
            id=self.id,
            function=self.function,
            source=self.source,
            args=self.args,
            accepted_at=self.accepted_at,
            attempt=self.attempt,
            not_before=self.not_before,
            job_id=self.job_id,
            index=self.index,
            state=self.state,  # type: ignore[arg-type]
            outcome=self.outcome,
            finished_at=self.finished_at,
        )


class MemoryStore:
    """Keeps a platform's accepted work in this process (the default ``app.run(store=...)``).

    :param result_ttl: seconds a finished call's result (and a finished batch job) is kept.
    :param stream_retention: seconds a stream record is kept, handled or not.
    :param results_kept: at most this many finished calls are kept (the oldest go first).
    :raises ValueError: a bad setting (the message names it).
    """

    durable = False

    def __init__(self, *, result_ttl: float = RESULT_TTL, stream_retention: float = STREAM_RETENTION, results_kept: int = 100_000) -> None:
        check_retention("MemoryStore", result_ttl=result_ttl, stream_retention=stream_retention)
        if not isinstance(results_kept, int) or isinstance(results_kept, bool) or results_kept < 0:
            raise ValueError(f"MemoryStore: results_kept must be an int >= 0, got {results_kept!r}")
        self.result_ttl = float(result_ttl)
        self.stream_retention = float(stream_retention)
        self.results_kept = results_kept
        self.is_open = False
        self._calls: dict[str, _Call] = {}
        self._finished: collections.deque[str] = collections.deque()  # finished call ids, oldest first
        self._jobs: dict[str, StoredJob] = {}  # tasks are in _calls
        self._job_tasks: dict[str, list[str]] = {}
        # (topic, function) -> {message id: [message, attempt]}, in publish order
        self._messages: dict[tuple[str, str], dict[str, list[Any]]] = {}
        self._records: dict[tuple[str, int], collections.deque[Record]] = {}
        self._next_sequence: dict[tuple[str, int], int] = {}
        self._checkpoints: dict[tuple[str, str, int], int] = {}
        self._offsets: dict[tuple[str, str], dict[str, int]] = {}
        self._letters: dict[str, DeadLetter] = {}
        self._deployments: dict[tuple[str, int], StoredDeployment] = {}

    def __repr__(self) -> str:
        return f"<MemoryStore: {len(self._calls)} calls, {len(self._letters)} dead letters{', open' if self.is_open else ''}>"

    # -- opening -----------------------------------------------------------------------------

    async def open(self) -> Snapshot:
        if self.is_open:
            raise StoreLocked("this MemoryStore is already open in a running platform; stop that one first, or give each its own store")
        self.is_open = True
        return self.snapshot()

    async def close(self) -> None:
        self.is_open = False

    def snapshot(self) -> Snapshot:
        """What ``open`` returns: everything unfinished, and every dead letter and deployment."""
        calls = tuple(c.stored() for c in self._calls.values() if c.state == "pending" and c.job_id is None)
        jobs = tuple(job for job_id in self._jobs if (job := self.get_job(job_id)) is not None and job.finished_at is None)
        messages = tuple(
            PendingMessage(topic=topic, function=function, message=message, attempt=attempt)
            for (topic, function), pending in self._messages.items()
            for message, attempt in pending.values()
        )
        streams: dict[str, dict[str, dict[Any, Any]]] = collections.defaultdict(lambda: {"n": {}, "r": {}, "c": {}})
        for (stream, shard), n in self._next_sequence.items():
            streams[stream]["n"][shard] = n
            if self._records.get((stream, shard)):
                streams[stream]["r"][shard] = tuple(self._records[(stream, shard)])
        for (stream, function, shard), sequence in self._checkpoints.items():
            streams[stream]["c"][(function, shard)] = sequence
            marks = streams[stream]["n"]
            marks[shard] = max(marks.get(shard, 0), sequence + 1)
        return Snapshot(
            calls=calls,
            jobs=jobs,
            messages=messages,
            streams={name: StoredStream(next_sequence=s["n"], records=s["r"], checkpoints=s["c"]) for name, s in streams.items()},
            dead_letters=tuple(self._letters.values()),
            deployments=tuple(sorted(self._deployments.values(), key=lambda d: (d.name, d.version))),
            offsets={where: dict(parts) for where, parts in self._offsets.items() if parts},
        )

    # -- calls and batch jobs ------------------------------------------------------------------

    def put_call(self, call: StoredCall) -> Awaitable[None]:
        self._calls[call.id] = _Call(call)
        return DONE

    def call_attempted(self, call_id: str, attempt: int, not_before: float) -> Awaitable[None]:
        row = self._calls.get(call_id)
        if row is not None:
            row.attempt = attempt
            row.not_before = not_before
        return DONE

    def call_finished(self, call_id: str, *, succeeded: bool, outcome: Any, finished_at: float) -> Awaitable[None]:
        row = self._calls.get(call_id)
        if row is None or row.state != "pending":
            return DONE
        row.state = "succeeded" if succeeded else "failed"
        row.outcome = outcome
        row.finished_at = finished_at
        if row.job_id is None:
            finished = self._finished
            finished.append(call_id)
            while len(finished) > self.results_kept:
                self._calls.pop(finished.popleft(), None)
        return DONE

    def put_job(self, job: StoredJob, tasks: Sequence[StoredCall]) -> Awaitable[None]:
        self._jobs[job.id] = attrs.evolve(job, tasks=())
        self._job_tasks[job.id] = [task.id for task in tasks]
        for task in tasks:
            self._calls[task.id] = _Call(task)
        return DONE

    def job_finished(self, job_id: str, finished_at: float) -> Awaitable[None]:
        job = self._jobs.get(job_id)
        if job is not None and job.finished_at is None:
            self._jobs[job_id] = attrs.evolve(job, finished_at=finished_at)
        return DONE

    # -- topics and streams --------------------------------------------------------------------

    def put_message(self, message: Message, functions: Sequence[str]) -> Awaitable[None]:
        for function in functions:
            self._messages.setdefault((message.topic, function), {})[message.id] = [message, 1]
        return DONE

    def messages_attempted(self, topic: str, function: str, ids: Sequence[str], attempt: int) -> Awaitable[None]:
        pending = self._messages.get((topic, function), {})
        for message_id in ids:
            entry = pending.get(message_id)
            if entry is not None:
                entry[1] = attempt
        return DONE

    def messages_done(self, topic: str, function: str, ids: Sequence[str]) -> Awaitable[None]:
        pending = self._messages.get((topic, function))
        if pending is not None:
            for message_id in ids:
                pending.pop(message_id, None)
        return DONE

    def put_record(self, stream: str, record: Record) -> Awaitable[None]:
        where = (stream, record.shard)
        self._records.setdefault(where, collections.deque()).append(record)
        self._next_sequence[where] = max(self._next_sequence.get(where, 0), record.sequence + 1)
        return DONE

    def set_checkpoint(self, stream: str, function: str, shard: int, sequence: int) -> Awaitable[None]:
        self._checkpoints[(stream, function, shard)] = sequence
        return DONE

    def set_offset(self, source: str, function: str, part: str, offset: int) -> Awaitable[None]:
        self._offsets.setdefault((source, function), {})[part] = offset
        return DONE

    def forget_offsets(self, source: str, function: str, parts: Sequence[str]) -> Awaitable[None]:
        offsets = self._offsets.get((source, function), {})
        for part in parts:
            offsets.pop(part, None)
        return DONE

    def trim_records(self, stream: str, shard: int, below: int) -> Awaitable[None]:
        records = self._records.get((stream, shard))
        while records and records[0].sequence < below:
            records.popleft()
        return DONE

    # -- dead letters and deployments ----------------------------------------------------------

    def put_dead_letter(self, letter: DeadLetter) -> Awaitable[None]:
        self._letters[letter.id] = letter
        return DONE

    def remove_dead_letters(self, ids: Sequence[str]) -> Awaitable[None]:
        for letter_id in ids:
            self._letters.pop(letter_id, None)
        return DONE

    def put_deployment(self, deployment: StoredDeployment) -> Awaitable[None]:
        self.undeploy(deployment.name)
        self._deployments[(deployment.name, deployment.version)] = attrs.evolve(deployment, active=True)
        return DONE

    def undeploy(self, name: str) -> Awaitable[None]:
        for key, deployment in self._deployments.items():
            if deployment.name == name and deployment.active:
                self._deployments[key] = attrs.evolve(deployment, active=False)
        return DONE

    # -- housekeeping and reads ----------------------------------------------------------------

    def prune(self, now: float) -> Awaitable[None]:
        results_before = now - self.result_ttl
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and job.finished_at < results_before:
                del self._jobs[job_id]
                for task_id in self._job_tasks.pop(job_id, ()):
                    self._calls.pop(task_id, None)
        finished = self._finished
        while finished and ((row := self._calls.get(finished[0])) is None or (row.finished_at or 0.0) < results_before):
            self._calls.pop(finished.popleft(), None)
        records_before = now - self.stream_retention
        for records in self._records.values():
            while records and records[0].put_at < records_before:
                records.popleft()
        return DONE

    def get_call(self, call_id: str) -> StoredCall | None:
        row = self._calls.get(call_id)
        return row.stored() if row is not None else None

    def get_offsets(self, source: str, function: str) -> dict[str, int]:
        return dict(self._offsets.get((source, function), {}))

    def get_job(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        tasks = (self._calls[task_id].stored() for task_id in self._job_tasks.get(job_id, ()) if task_id in self._calls)
        return attrs.evolve(job, tasks=tuple(sorted(tasks, key=lambda t: t.index or 0)))
