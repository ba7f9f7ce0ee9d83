"""What asynchronous delivery needs, shared by spawned calls and event sources.

* ``DeadLetter``: an event that failed every attempt, kept with its last error.
* ``retry_delay``: the backoff before a retry (``Retries``, with full jitter).
* ``InFlight``: a count of work accepted but not finished, which ``drain`` waits on.
* ``Source``: what the platform asks of an event source (topics, streams, timers,
  batch jobs): run in the platform's task group, and say what is still pending.

The platform imports this module, never the sources themselves (they sit above it).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from ..errors import FaaSError

if TYPE_CHECKING:
    from ..platform import Platform
    from ..spec import Retries

__all__ = ["DeadLetter", "InFlight", "Source", "retry_delay"]


@attrs.frozen(kw_only=True)
class DeadLetter:
    """An event that exhausted its attempts.

    :param function: the function that could not handle it.
    :param source: where it came from: ``"spawn"``, ``"topic:orders"``, ``"stream:clicks/0"``, ...
    :param event: what the handler was given (the envelope, or ``(args, kwargs)`` for spawn).
    :param error: the last attempt's error.
    :param attempts: how many attempts were made.
    :param invocation_id: the id every attempt shared.
    :param first_attempt_at: wall-clock time (``time.time()``) of the first attempt.
    :param failed_at: wall-clock time it was given up.
    """

    function: str
    source: str
    event: Any
    error: FaaSError
    attempts: int
    invocation_id: str
    first_attempt_at: float
    failed_at: float


def retry_delay(retries: Retries, retry: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1-based), jittered when asked."""
    delay = retries.delay(retry)
    if retries.jitter:
        return (rng or random).uniform(0.0, delay)
    return delay


class InFlight:
    """Counts work in flight; ``wait_idle`` returns once the count is back to zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = anyio.Event()
        self._idle.set()

    def started(self, n: int = 1) -> None:
        if n <= 0:
            return
        if self.count == 0:
            self._idle = anyio.Event()
        self.count += n

    def finished(self, n: int = 1) -> None:
        self.count -= n
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            await self._idle.wait()


class Source(Protocol):
    """An event source run by the platform (see ``sources/``)."""

    key: str  # e.g. "topic:orders"; unique per platform

    async def run(self, platform: Platform, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve until cancelled; call ``task_status.started()`` once ready."""
        ...

    def pending(self) -> list[str]:
        """What is accepted but not yet handled or dead-lettered, described for people."""
        ...
