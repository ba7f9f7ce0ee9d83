"""CallTasks: the tasks that run spawned and mapped calls, one plain asyncio task each.

A new call's first attempt needs no task (``firstattempt.py``); a call gets one here
when that attempt failed and is to be retried, or when it resumes after a restart.

Why not the platform's anyio task group. A call task can be the platform's busiest: one
per ``spawn``, per ``map`` item. An anyio task (a handle, a cancel scope and an event
around a wrapper coroutine) costs several times what an asyncio task does, which is
much of what a spawned no-op costs. So calls run as plain asyncio tasks (DESIGN.md
allows asyncio on the hot path), and one task of the platform's task group, ``tend``,
stands for all of them there:

- a call task that fails with an unexpected error (a bug: ``run_call`` settles every
  ``FaaSError``) makes ``tend`` raise it, so the platform fails as it would have;
- when the platform stops, ``tend`` is cancelled with the rest of the task group and
  cancels the call tasks, then waits for them (shielded) so that each settles its
  call before the store is closed. A task that has not taken its first step is left
  to take it (its call then fails at once, the platform being closed), because an
  asyncio task cancelled before it starts never runs its ``finally``. Then the calls
  whose first attempt is still out are settled too (``tend``'s ``settle_rest``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

__all__ = ["CallTasks"]


class CallTasks:
    """Runs coroutines as asyncio tasks on behalf of the platform's task group."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[BaseException] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task of its own (on the running loop; ``tend`` stands for it)."""
        task = self._on_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _on_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._failed = self._loop.create_future()
        return self._loop

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failed(error)

    def failed(self, error: BaseException) -> None:
        """A call failed unexpectedly (a bug), in a task or out of one: ``tend`` raises ``error``."""
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(error)

    async def tend(self, settle_rest: Callable[[], None] | None = None) -> None:
        """Stand for the call tasks in the platform's task group, until cancelled (see the module's doc).

        :param settle_rest: run once the tasks have ended, to settle the calls run without one.
        :raises BaseException: what a call task failed with unexpectedly.
        """
        self._on_loop()
        assert self._failed is not None
        try:
            raise await self._failed
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_all()
            if settle_rest is not None:
                settle_rest()

    async def _stop_all(self) -> None:
        cancelled: set[asyncio.Task[None]] = set()
        while self._tasks:
            for task in list(self._tasks):
                if task not in cancelled and inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED:  # type: ignore[arg-type]
                    task.cancel()
                    cancelled.add(task)
            await asyncio.wait(set(self._tasks), timeout=0.01)
