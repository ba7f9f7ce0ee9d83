"""Batch jobs: ``job = await f.batch(items, max_parallel=8)`` runs one task per item in the background.

How this works. ``batch`` pickles every item first (a ``SerializationError`` names the
item and costs no container), then starts one runner in the platform's task group
and returns the ``BatchJob`` at once. The runner starts the tasks in input order, at
most ``max_parallel`` at a time. Each task is a spawned call run by the runtime's
``run_call``, through the one delivery loop (``runtime/delivery.py``): the function's
``retries`` apply (backoff, ``max_event_age``, only retryable errors), and a task that fails every attempt goes to the dead letters with
``source="batch:<job id>"`` and a ``BatchTask(job_id, index, item)`` event.

Task failures never raise from the job: ``await job.wait()`` returns once every task
has succeeded or failed for good, ``job.results()`` holds each task's value in input
order (a failed task's slot holds its ``FaaSError``) and ``job.failures()`` lists
``(index, error)``. Progress is reported after each task finishes, to the
``on_progress`` callback and to every ``job.progress_updates()`` iterator.

Accounting. Every task counts in ``runtime.in_flight`` from ``batch()`` until it
ends, so ``drain`` waits for the whole job. Tasks that never started because the job
was cancelled (``CallCancelled``) or the platform stopped (``PlatformClosed``) fail
with that error and are not dead-lettered: they were never attempted.

Durability. ``batch()`` returns once the job and every task are stored; each task
is a stored call (``<job id>.<index>``) whose outcome is written when it ends, and
the job is marked finished once every task has. A platform that starts on the store
resumes each unfinished job (``resume_batches``): finished tasks keep their
results, the others run (a task that had started goes on counting its attempts),
and ``faas.batch_job(id)`` finds the job, or a finished one from before, by id.
An ``on_progress`` callback does not survive a restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import anyio
import anyio.abc

from .. import payload
from ..errors import CallCancelled, FaaSError, PlatformClosed, SerializationError, UnknownFunction
from ..events import BatchTask
from ..runtime.call import Call, CallStatus
from ..runtime.delivery import CallDelivery
from ..runtime.shipping import dump_args
from ..store import StoredCall, StoredJob

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from ..runtime.delivery import SourceRuntime
    from ..spec import Retries

__all__ = ["BatchJob", "BatchProgress", "resume_batches", "start_batch"]

logger = logging.getLogger("microfaas.batch")

R = TypeVar("R")

_PENDING: Any = object()


class BatchProgress(NamedTuple):
    """How far a batch job has come: ``(done, failed, total)``.

    :param done: tasks finished, succeeded or failed.
    :param failed: of those, the tasks that failed (after their retries).
    :param total: tasks in the job.
    """

    done: int
    failed: int
    total: int

    @property
    def succeeded(self) -> int:
        return self.done - self.failed

    @property
    def finished(self) -> bool:
        """Whether every task has finished."""
        return self.done >= self.total

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty job)."""
        return self.done / self.total if self.total else 1.0


class BatchJob(Generic[R]):
    """A running batch job (made by ``f.batch(items)``): one task per item.

    ``job.id``, ``job.progress``, ``await job.wait()``, ``job.results()``,
    ``job.failures()``, ``async for p in job.progress_updates()``, ``job.cancel()``.
    """

    def __init__(
        self,
        job_id: str,
        function_name: str,
        items: list[Any],
        blobs: list[bytes | None],
        *,
        max_parallel: int,
        on_progress: Callable[[BatchProgress], Any] | None,
    ) -> None:
        self.id = job_id
        self.function_name = function_name
        self.max_parallel = max_parallel
        self._items = items
        self._blobs = blobs
        self._on_progress = on_progress
        self._results: list[Any] = [_PENDING] * len(items)
        self._failures: list[tuple[int, FaaSError]] = []
        self._done_count = 0
        self._unstarted = len(items)  # still counted in runtime.in_flight by the job itself
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        self._subscribers: set[MemoryObjectSendStream[BatchProgress]] = set()
        self._to_run = list(range(len(items)))  # indices of the tasks still to start
        self._attempts: dict[int, int] = {}  # attempts a resumed task made before the restart
        self._runtime: SourceRuntime | None = None

    @classmethod
    def from_stored(cls, stored: StoredJob) -> BatchJob[Any]:
        """The job as the store has it: finished tasks with their outcomes, the others still to run."""
        tasks = {task.index: task for task in stored.tasks if task.index is not None}
        blobs: list[bytes | None] = [tasks[i].args if i in tasks else None for i in range(stored.total)]
        job: BatchJob[Any] = cls(
            stored.id, stored.function, [_item(b) for b in blobs], blobs, max_parallel=stored.max_parallel, on_progress=None
        )
        job._to_run = []
        for index in range(stored.total):
            task = tasks.get(index)
            if task is None:  # pragma: no cover - a store never loses one task of a job
                job._record(index, None, CallCancelled(f"task {index} of batch job {stored.id} is missing from the store"))
            elif task.state == "succeeded":
                job._record(index, task.outcome, None)
            elif task.state == "failed":
                job._record(index, None, task.outcome)
            else:
                job._to_run.append(index)
                job._attempts[index] = task.attempt
        job._unstarted = len(job._to_run)
        if stored.finished_at is not None or not job._to_run:
            job._finish()
        return job

    def __repr__(self) -> str:
        done, failed, total = self.progress
        return f"<BatchJob {self.id} of {self.function_name}: {done}/{total} done, {failed} failed>"

    @property
    def progress(self) -> BatchProgress:
        """``(done, failed, total)`` now."""
        return BatchProgress(self._done_count, len(self._failures), len(self._results))

    def done(self) -> bool:
        """Whether every task has finished (succeeded, or failed for good)."""
        return self._done.is_set()

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the API asks for it
        """Wait until every task has finished. Task failures do not raise; see ``failures()``.

        :param timeout: seconds to wait (None: as long as it takes).
        :raises TimeoutError: the job did not finish in ``timeout`` seconds (it keeps running).
        """
        with anyio.fail_after(timeout):
            await self._done.wait()

    def results(self) -> list[R | FaaSError]:
        """Every task's result in input order; a failed task's slot holds its ``FaaSError``.

        :raises RuntimeError: the job has not finished (``await job.wait()`` first).
        """
        if not self.done():
            done, _, total = self.progress
            raise RuntimeError(f"batch job {self.id} has not finished ({done}/{total} tasks done); await job.wait() first")
        return list(self._results)

    def failures(self) -> list[tuple[int, FaaSError]]:
        """``(index, error)`` of each task that failed so far, by index."""
        return sorted(self._failures, key=lambda pair: pair[0])

    async def progress_updates(self) -> AsyncIterator[BatchProgress]:
        """Yield the progress now, then again after each task finishes; end when the job is done.

        Every step is delivered, however slowly the caller iterates::

            async for done, failed, total in job.progress_updates():
                bar.update(done)
        """
        current = self.progress
        if self.done():
            yield current
            return
        send, receive = anyio.create_memory_object_stream[BatchProgress](math.inf)
        self._subscribers.add(send)
        try:
            yield current
            async with receive:
                async for progress in receive:
                    yield progress
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    def cancel(self) -> None:
        """Stop the job: running tasks are abandoned, the others never start; all fail with ``CallCancelled``."""
        if not self.done():
            self._scope.cancel()

    # -- for start_batch -----------------------------------------------------------------

    async def _run(self, runtime: SourceRuntime, retries: Retries) -> None:
        self._runtime = runtime
        limiter = anyio.Semaphore(self.max_parallel)
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for index in self._to_run:
                        await limiter.acquire()
                        tg.start_soon(self._task, runtime, retries, limiter, index)
        finally:
            # Tasks that never started: the job was cancelled, or the platform stopped.
            if self._unstarted:
                runtime.in_flight.finished(self._unstarted)
                self._unstarted = 0
            for index, slot in enumerate(self._results):
                if slot is _PENDING:
                    if runtime.closed:
                        error: FaaSError = PlatformClosed(
                            f"app {runtime.app_name!r} stopped before task {index} of batch job {self.id} ran"
                        )
                    else:
                        error = CallCancelled(f"batch job {self.id} was cancelled before task {index} ran")
                    self._record(index, None, error)
            self._finish()

    async def _task(self, runtime: SourceRuntime, retries: Retries, limiter: anyio.Semaphore, index: int) -> None:
        call: Call[Any] = Call(f"{self.id}.{index}", self.function_name)
        blob = self._blobs[index]
        self._blobs[index] = None
        assert blob is not None
        event = BatchTask(job_id=self.id, index=index, item=self._items[index])
        delivery = CallDelivery(self.function_name, f"batch:{self.id}", call.id, blob, event, store=runtime.store)
        attempts = self._attempts.pop(index, 0)
        if attempts:
            delivery.attempts_made = call.attempts = attempts
        else:
            runtime.store.call_attempted(call.id, 1, time.time())  # from now on a restart counts this attempt
        # Hand the task's in-flight count over to run_call, which counts the call itself
        # (nothing awaits in between; drain re-checks the count after a checkpoint).
        self._unstarted -= 1
        runtime.in_flight.finished()
        try:
            await runtime.run_call(call, delivery, retries)
        finally:
            limiter.release()
            if call.done():
                if call.status is CallStatus.SUCCEEDED:
                    self._record(index, call._value, None)
                else:
                    error = call._error
                    if not isinstance(error, FaaSError):  # pragma: no cover - run_call only fails with FaaSErrors
                        error = CallCancelled(f"task {index} of batch job {self.id} failed: {error!r}")
                    self._record(index, None, error)

    def _record(self, index: int, value: Any, error: FaaSError | None) -> None:
        if self._results[index] is not _PENDING:
            return
        if error is not None:
            self._results[index] = error
            self._failures.append((index, error))
        else:
            self._results[index] = value
        self._done_count += 1
        progress = self.progress
        for send in list(self._subscribers):
            try:
                send.send_nowait(progress)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(send)
        if self._on_progress is not None:
            try:
                self._on_progress(progress)
            except Exception:
                logger.exception("on_progress callback of batch job %s raised; ignoring it", self.id)
        if progress.finished:
            self._finish()  # at once: drain may return as soon as the last task's call ends

    def _finish(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        runtime = self._runtime
        if runtime is not None and not runtime.closed:  # a job the stop cut short resumes on the next run
            runtime.store.job_finished(self.id, time.time())
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()


async def start_batch(
    runtime: SourceRuntime,
    name: str,
    items: Iterable[Any],
    *,
    max_parallel: int = 8,
    on_progress: Callable[[BatchProgress], Any] | None = None,
) -> BatchJob[Any]:
    """Validate, pickle every item, and start the job in the platform's task group.

    :raises ValueError: a bad ``items``, ``max_parallel`` or ``on_progress`` (the message names it).
    :raises SerializationError: an item would not pickle (the message gives its index).
    :raises UnknownFunction, PlatformClosed: as for ``invoke``.
    """
    spec = runtime.function(name)
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise ValueError(f"{name}: max_parallel must be an int >= 1, got {max_parallel!r}")
    if on_progress is not None and not callable(on_progress):
        raise ValueError(f"{name}: on_progress must be a callable taking a BatchProgress, or None, got {on_progress!r}")
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ValueError(f"{name}: items must be an iterable of task inputs (a list, a range, ...), got {items!r}")
    materialised = list(items)
    blobs: list[bytes | None] = []
    for index, item in enumerate(materialised):
        try:
            blobs.append(dump_args(name, (item,), {}))
        except SerializationError as exc:
            raise SerializationError(f"{name}: item {index} of the batch could not be pickled: {exc.__cause__!r}") from exc
    job: BatchJob[Any] = BatchJob(
        runtime.new_invocation_id(), name, materialised, blobs, max_parallel=max_parallel, on_progress=on_progress
    )
    now = time.time()
    stored = StoredJob(id=job.id, function=name, total=len(blobs), max_parallel=max_parallel, created_at=now)
    tasks = [
        StoredCall(
            id=f"{job.id}.{i}", function=name, source=f"batch:{job.id}", args=blob, accepted_at=now, attempt=0, job_id=job.id, index=i
        )
        for i, blob in enumerate(blobs)
        if blob is not None
    ]
    await runtime.store.put_job(stored, tasks)  # accepted once stored
    if not materialised:
        job._runtime = runtime
        job._finish()
        return job
    runtime.in_flight.started(len(materialised))
    runtime.start_soon(job._run, runtime, spec.retries)
    return job


def resume_batches(runtime: SourceRuntime) -> list[BatchJob[Any]]:
    """Start again every batch job the store held unfinished (``runtime.snapshot.jobs``).

    The tasks of a job whose function the app no longer has fail with ``UnknownFunction``.
    """
    jobs = []
    for stored in runtime.snapshot.jobs:
        job = BatchJob.from_stored(stored)
        job._runtime = runtime
        try:
            spec = runtime.function(stored.function)
        except UnknownFunction as exc:
            for index in job._to_run:
                runtime.store.call_finished(f"{job.id}.{index}", succeeded=False, outcome=exc, finished_at=time.time())
                job._record(index, None, exc)
            job._to_run = []
        if job._to_run:
            runtime.in_flight.started(len(job._to_run))
            runtime.start_soon(job._run, runtime, spec.retries)
        else:  # every task had finished (or cannot run): only the job's end was not written
            job._finish()
            runtime.store.job_finished(job.id, time.time())
        jobs.append(job)
    return jobs


def _item(blob: bytes | None) -> Any:
    """A task's item, from its pickled ``((item,), {})``."""
    if blob is None:
        return None
    try:
        return payload.loads(blob)[0][0]
    except Exception:  # noqa: BLE001 - the task runs with its blob as it is; only its dead letter would show it
        return blob
