"""Trigger declarations: what ``@app.function(triggers=[...])`` accepts.

These are plain validated records (no I/O): ``app.topic(name)`` and
``app.stream(name, shards=N)`` declare where events come from, ``subscribe`` and
``consume`` make the triggers, and ``Every`` / ``Cron`` are timers. The sources in
this package turn them into running deliveries when the platform starts.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from ..events import Trigger
from ..validation import is_int, is_number

__all__ = ["Cron", "Every", "Stream", "StreamConsumer", "Topic", "TopicSubscription"]

_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Per-subscription buffer of messages waiting for delivery; publish waits when it is full.
DEFAULT_BUFFER: Final = 1000


def _check(owner: str, field: str, ok: bool, expectation: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{owner}: {field} must be {expectation}, got {value!r}")


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} name must start with a letter or _ and hold only letters, digits, '_', '.' or '-', got {name!r}")


@attrs.frozen
class TopicSubscription(Trigger):
    """A function's subscription to a topic (make it with ``topic.subscribe(...)``)."""

    topic: str
    batch_size: int = 1
    batch_window: float = 0.0
    max_retries: int = 2
    max_concurrency: int | None = None
    buffer_size: int = DEFAULT_BUFFER

    def __attrs_post_init__(self) -> None:
        owner = f"topic {self.topic!r} subscription"
        _check(owner, "batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an int >= 1", self.batch_size)
        ok = is_number(self.batch_window) and self.batch_window >= 0
        _check(owner, "batch_window", ok, "a number >= 0 (seconds)", self.batch_window)
        _check(owner, "max_retries", is_int(self.max_retries) and self.max_retries >= 0, "an int >= 0", self.max_retries)
        ok = self.max_concurrency is None or (is_int(self.max_concurrency) and self.max_concurrency >= 1)
        _check(owner, "max_concurrency", ok, "an int >= 1 or None", self.max_concurrency)
        _check(owner, "buffer_size", is_int(self.buffer_size) and self.buffer_size >= 1, "an int >= 1", self.buffer_size)


@attrs.frozen
class Topic:
    """A pub/sub topic declared with ``app.topic(name)``; every subscription gets every message."""

    name: str

    def __attrs_post_init__(self) -> None:
        _check_name("topic", self.name)

    def subscribe(
        self,
        batch_size: int = 1,
        batch_window: float = 0.0,
        max_retries: int = 2,
        max_concurrency: int | None = None,
        buffer_size: int = DEFAULT_BUFFER,
    ) -> TopicSubscription:
        """A trigger delivering this topic's messages.

        :param batch_size: messages per invocation; above 1 the handler gets ``list[Message]``
            and may return ``mf.BatchResult(failed=[ids])`` so only those are retried.
        :param batch_window: seconds to wait for a batch to fill before delivering it.
        :param max_retries: retries of a failed message before it is dead-lettered.
        :param max_concurrency: deliveries in flight at once (None: no limit).
        :param buffer_size: messages buffered for this subscription; ``publish`` waits
            when the buffer is full (backpressure), it never drops.
        """
        return TopicSubscription(self.name, batch_size, batch_window, max_retries, max_concurrency, buffer_size)


_STARTS: Final = ("earliest", "latest")


@attrs.frozen
class StreamConsumer(Trigger):
    """A function consuming a stream, one batch per shard at a time (make it with ``stream.consume(...)``)."""

    stream: str
    batch_size: int = 100
    batch_window: float = 0.0
    start: str = "earliest"
    bisect_on_error: bool = True
    max_retries: int = 3
    parallelization: int = 1

    def __attrs_post_init__(self) -> None:
        owner = f"stream {self.stream!r} consumer"
        _check(owner, "batch_size", is_int(self.batch_size) and self.batch_size >= 1, "an int >= 1", self.batch_size)
        ok = is_number(self.batch_window) and self.batch_window >= 0
        _check(owner, "batch_window", ok, "a number >= 0 (seconds)", self.batch_window)
        _check(owner, "start", self.start in _STARTS, "'earliest' or 'latest'", self.start)
        _check(owner, "bisect_on_error", isinstance(self.bisect_on_error, bool), "a bool", self.bisect_on_error)
        _check(owner, "max_retries", is_int(self.max_retries) and self.max_retries >= 0, "an int >= 0", self.max_retries)
        ok = is_int(self.parallelization) and self.parallelization >= 1
        _check(owner, "parallelization", ok, "an int >= 1", self.parallelization)


@attrs.frozen
class Stream:
    """An ordered, partitioned stream declared with ``app.stream(name, shards=N)``."""

    name: str
    shards: int = 1

    def __attrs_post_init__(self) -> None:
        _check_name("stream", self.name)
        _check(f"stream {self.name!r}", "shards", is_int(self.shards) and self.shards >= 1, "an int >= 1", self.shards)

    def consume(
        self,
        batch_size: int = 100,
        batch_window: float = 0.0,
        start: str = "earliest",
        bisect_on_error: bool = True,
        max_retries: int = 3,
        parallelization: int = 1,
    ) -> StreamConsumer:
        """A trigger delivering this stream's records as ``RecordBatch``es, in order per shard.

        :param batch_size: records per batch, at most.
        :param batch_window: seconds to wait for a batch to fill.
        :param start: ``"earliest"`` (every record put) or ``"latest"`` (records put after the platform started).
        :param bisect_on_error: split a failing batch in halves to isolate the bad record.
        :param max_retries: retries of a failing batch (or half) before its records are dead-lettered.
        :param parallelization: batches in flight per shard; records of one key stay in order.
        """
        return StreamConsumer(self.name, batch_size, batch_window, start, bisect_on_error, max_retries, parallelization)


@attrs.frozen
class Every(Trigger):
    """A timer firing every ``seconds`` seconds."""

    seconds: float
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        _check("Every", "seconds", is_number(self.seconds) and self.seconds > 0, "a number > 0", self.seconds)


@attrs.frozen
class Cron(Trigger):
    """A timer on a cron schedule (``"*/5 * * * *"``), read by croniter, in time zone ``tz``."""

    expr: str
    tz: str = "UTC"
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        import croniter

        if not isinstance(self.expr, str) or not croniter.croniter.is_valid(self.expr):
            raise ValueError(f"Cron: expr must be a valid cron expression, got {self.expr!r}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"Cron: tz must be an IANA time zone name, got {self.tz!r}") from None

    def next_after(self, timestamp: float) -> float:
        """The first firing time strictly after ``timestamp`` (both wall-clock seconds)."""
        from datetime import datetime
        from zoneinfo import ZoneInfo

        import croniter

        start = datetime.fromtimestamp(timestamp, ZoneInfo(self.tz))
        return float(croniter.croniter(self.expr, start).get_next(float))
