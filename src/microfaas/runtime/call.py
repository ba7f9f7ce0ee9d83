"""Call: a spawned invocation running in the background.

The platform owns the task that runs it (an asyncio task: ``calltasks.py``); the
``Call`` is the caller's view of it: ``id``, ``status``, ``await result()`` and
``cancel()``, which cancels that task (``Runtime.run_call`` turns it into the
call's ``CallCancelled``).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Call", "CallStatus"]

R = TypeVar("R")


class CallStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Call(Generic[R]):
    """A spawned invocation. ``await call.result()`` gives its value or raises its error."""

    def __init__(self, call_id: str, function_name: str) -> None:
        self.id = call_id
        self.function_name = function_name
        self.status = CallStatus.PENDING
        self.attempts = 0
        self._done = anyio.Event()
        self._value: R | None = None
        self._error: BaseException | None = None
        # The platform's task running it (set by that task: ``Runtime.run_call``), and whether
        # ``cancel()`` was called; a task that sees the flag before it starts never attempts the call.
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False

    def __repr__(self) -> str:
        return f"<Call {self.id} of {self.function_name}: {self.status}>"

    def done(self) -> bool:
        return self._done.is_set()

    async def result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109 - the API asks for it
        """Wait for the call to finish and return its value.

        :param timeout: seconds to wait (None: as long as it takes).
        :raises TimeoutError: it did not finish in ``timeout`` seconds (it keeps running).
        :raises FaaSError: the invocation failed (the same error ``invoke`` would raise);
            ``CallCancelled`` after ``cancel()``.
        """
        if timeout is None:
            await self._done.wait()
        else:
            with anyio.fail_after(timeout):
                await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop waiting for a container, or abandon the running invocation."""
        if self.done() or self._cancel_requested:
            return
        self._cancel_requested = True
        if self._task is not None:
            self._task.cancel()

    # -- for the platform ----------------------------------------------------------------

    def _succeed(self, value: R) -> None:
        self._value = value
        self.status = CallStatus.SUCCEEDED
        self._done.set()

    def _fail(self, error: BaseException, *, cancelled: bool = False) -> None:
        self._error = error
        self.status = CallStatus.CANCELLED if cancelled else CallStatus.FAILED
        self._done.set()
