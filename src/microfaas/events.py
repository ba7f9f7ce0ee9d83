"""Typed envelopes that carry events to handlers, and the invocation context.

Everything here is a frozen attrs record: it pickles, compares and prints well,
and crosses the process boundary unchanged. The worker imports this module, so it
imports nothing from microfaas but ``errors``.
"""

from __future__ import annotations

import contextvars
import time

import attrs

__all__ = ["Context", "Trigger", "context"]


@attrs.frozen(kw_only=True)
class Context:
    """What a handler knows about the invocation it is running.

    :param invocation_id: unique id of this invocation (retries keep it).
    :param function_name: the function's registered name.
    :param attempt: 1 for the first attempt, 2 for the first retry, ...
    :param cold_start: True when this invocation paid for its container's start.
    :param deadline: wall-clock time (``time.time()``) by which it must finish, or None.
    :param memory_mb: the container's memory limit.
    :param container_id: the container running it (``"local"`` for ``f.local()``).
    """

    invocation_id: str
    function_name: str
    attempt: int = 1
    cold_start: bool = False
    deadline: float | None = None
    memory_mb: int | None = None
    container_id: str = "local"

    def remaining_time(self) -> float:
        """Seconds left before the deadline (``inf`` when there is none); never negative."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.time())


class Trigger:
    """Base of every trigger (topic subscription, stream consumer, timer, HTTP route).

    Pass triggers to ``@app.function(triggers=[...])``; the platform starts a
    source for each when it runs.
    """

    __slots__ = ()


_current: contextvars.ContextVar[Context] = contextvars.ContextVar("microfaas_context")


def context() -> Context:
    """The context of the invocation being run; call it inside a handler.

    :raises RuntimeError: outside an invocation.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "mf.context() was called outside an invocation; call it inside a function run by the platform (or by f.local())"
        ) from None


def set_context(ctx: Context) -> contextvars.Token[Context]:
    return _current.set(ctx)


def reset_context(token: contextvars.Token[Context]) -> None:
    _current.reset(token)
