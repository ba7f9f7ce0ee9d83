"""Ordered batches of records: one delivery, bisected on error, partial failure by ``BatchResult``.

How this works. Every ordered source -- microfaas's own streams, a Redis stream, files
read as records (and a Kafka partition, were it added) -- reads a *shard* (a stream
shard, a Redis stream, a file) in order, takes a batch of consecutive records, and
hands it to ``runtime.deliver`` as a ``RecordsDelivery``. The delivery is the same for
all of them; what differs is the ``ShardReader`` behind it, which says where the
records came from (``source``), whether a failing batch is split, what id a
``BatchResult`` may name a record by, and what to do once records are done
(``done``: move a checkpoint, XACK, write a file offset).

A failing batch is, with ``bisect_on_error``, split in halves that are delivered one
after the other, recursively, as AWS Lambda's BisectBatchOnFunctionError does (each
half is a new delivery whose attempts start at 1); a single record that still fails
is dead-lettered alone. Without bisection the whole batch is retried and then
dead-lettered as one ``RecordBatch``. A handler that returns
``BatchResult(failed=[ids])`` reports a partial failure, as Lambda's
ReportBatchItemFailures does for Kinesis: the records before the first one listed are
done, and the batch is retried from it (a retry, not a bisection); an id that is not
in the batch fails the whole batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import FaaSError, FunctionError
from ..events import BatchResult, Record, RecordBatch
from ..runtime.delivery import Delivery
from ..runtime.shipping import dump_args

if TYPE_CHECKING:
    from ..runtime.delivery import SourceRuntime

__all__ = ["RecordsDelivery", "ShardReader"]


class ShardReader(Protocol):
    """What a ``RecordsDelivery`` asks of the reader of one shard."""

    @property
    def function(self) -> str:
        """The function the records go to."""
        ...

    @property
    def source(self) -> str:
        """Where the records come from, as dead letters say (``"stream:clicks/0"``)."""
        ...

    @property
    def bisect_on_error(self) -> bool: ...

    def record_id(self, record: Record) -> str:
        """The id a ``BatchResult`` names ``record`` by, besides ``str(record.sequence)``."""
        ...

    def done(self, records: list[Record]) -> None:
        """These records were handled or dead-lettered (in order: earlier ones are done already)."""
        ...


class RecordsDelivery(Delivery):
    """Consecutive records of one shard, delivered as one ``RecordBatch``.

    :param reader: the shard's reader (see ``ShardReader``).
    :param runtime: the runtime (for invocation ids).
    :param stream: the ``RecordBatch.stream`` handlers see.
    :param shard: the ``RecordBatch.shard`` handlers see.
    :param records: the records, in order.
    """

    def __init__(self, reader: ShardReader, runtime: SourceRuntime, stream: str, shard: int, records: list[Record]) -> None:
        super().__init__(reader.function, reader.source, runtime.new_invocation_id())
        self.reader = reader
        self.runtime = runtime
        self.stream = stream
        self.shard = shard
        self.records = records
        self.batch = RecordBatch(stream=stream, shard=shard, records=records)
        self._reported = False  # the last attempt reported a partial failure: retry from it, do not bisect

    def payload(self, attempt: int) -> bytes:
        return dump_args(self.function, (self.batch,), {})

    def settle(self, value: Any) -> FaaSError | None:
        if not (isinstance(value, BatchResult) and value.failed):
            return None
        index: dict[str, int] = {}
        for i, record in enumerate(self.records):
            index[str(record.sequence)] = i
            index[self.reader.record_id(record)] = i
        try:
            first = min(index[s] for s in value.failed)
        except KeyError:
            return self._reported_error(f"its BatchResult names records not in the batch: {', '.join(value.failed)}")
        done, self.records = self.records[:first], self.records[first:]
        if done:
            self.batch = RecordBatch(stream=self.stream, shard=self.shard, records=self.records)
            self.reader.done(done)
        self._reported = True
        return self._reported_error(f"its BatchResult reports record {self.reader.record_id(self.records[0])} as failed")

    def _reported_error(self, what: str) -> FunctionError:
        return FunctionError(
            f"{self.function}: {what}",
            remote_type="microfaas.BatchResult",
            remote_message=what,
            remote_traceback="",
            function_name=self.function,
            invocation_id=self.invocation_id,
        )

    def split(self) -> list[Delivery]:
        reported, self._reported = self._reported, False
        if reported or not (self.reader.bisect_on_error and len(self.records) > 1):
            return []
        half = len(self.records) // 2
        return [
            RecordsDelivery(self.reader, self.runtime, self.stream, self.shard, part) for part in (self.records[:half], self.records[half:])
        ]

    def dead_events(self) -> list[Any]:
        # Bisected batches dead-letter record by record (more than one only when a partial failure ran out of retries).
        return list(self.records) if self.reader.bisect_on_error else [self.batch]

    def settled(self) -> None:
        self.reader.done(self.records)
