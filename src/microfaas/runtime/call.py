"""Call: a spawned invocation running in the background.

The platform runs it: its first attempt from a loop callback (``firstattempt.py``),
what follows a failed one in an asyncio task (``calltasks.py``); the ``Call`` is the
caller's view of it: ``id``, ``status``, ``await result()`` and ``cancel()``, which
withdraws that attempt or cancels that task (``Runtime.run_call`` turns it into the
call's ``CallCancelled``).

A call is made for every ``spawn`` and ``map`` item, so it is kept cheap (the hot
path may use asyncio directly: DESIGN.md): it holds no event of its own; a caller
that waits for an unfinished call gets an asyncio future of its own (so cancelling
one waiter leaves the others waiting), and ``result()`` of a finished call returns
at once, as awaiting a finished asyncio future does.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Generic, Protocol, TypeVar

import anyio

__all__ = ["Call", "CallStatus"]

R = TypeVar("R")


class Cancellable(Protocol):
    """What runs a call for the platform: its task, or its first attempt made with no task (``FirstAttempt``)."""

    def cancel(self) -> Any: ...


class CallStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Call(Generic[R]):
    """A spawned invocation. ``await call.result()`` gives its value or raises its error."""

    __slots__ = (
        "_cancel_requested",
        "_done",
        "_error",
        "_source",
        "_task",
        "_value",
        "_waiters",
        "attempts",
        "function_name",
        "id",
        "status",
    )

    def __init__(self, call_id: str, function_name: str) -> None:
        self.id = call_id
        self.function_name = function_name
        self.status = CallStatus.PENDING
        self.attempts = 0
        self._done = False
        self._waiters: list[asyncio.Future[None]] | None = None  # callers waiting for it to finish
        self._value: R | None = None
        self._error: BaseException | None = None
        # What runs it (its ``FirstAttempt``, or the task of ``Runtime.run_call``, set by that task),
        # and whether ``cancel()`` was called; a task that sees the flag before it starts never attempts the call.
        self._task: Cancellable | None = None
        self._cancel_requested = False
        self._source = ""  # where it came from ("spawn", "map", a source's name), once it runs

    def __repr__(self) -> str:
        return f"<Call {self.id} of {self.function_name}: {self.status}>"

    def done(self) -> bool:
        return self._done

    async def result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109 - the API asks for it
        """Wait for the call to finish and return its value (at once, once it has finished).

        :param timeout: seconds to wait (None: as long as it takes).
        :raises TimeoutError: it did not finish in ``timeout`` seconds (it keeps running).
        :raises FaaSError: the invocation failed (the same error ``invoke`` would raise);
            ``CallCancelled`` after ``cancel()``.
        """
        if not self._done:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                if timeout is None:
                    await waiter
                else:
                    with anyio.fail_after(timeout):
                        await waiter
            finally:
                if not self._done:
                    self._waiters.remove(waiter)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop waiting for a container, or abandon the running invocation."""
        if self._done or self._cancel_requested:
            return
        self._cancel_requested = True
        if self._task is not None:
            self._task.cancel()

    # -- for the platform ----------------------------------------------------------------

    def _succeed(self, value: R) -> None:
        self._value = value
        self.status = CallStatus.SUCCEEDED
        self._finish()

    def _fail(self, error: BaseException, *, cancelled: bool = False) -> None:
        self._error = error
        self.status = CallStatus.CANCELLED if cancelled else CallStatus.FAILED
        self._finish()

    def _finish(self) -> None:
        self._done = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
