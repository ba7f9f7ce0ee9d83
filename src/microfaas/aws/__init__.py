"""AWS Lambda handlers, unchanged: ``mf.lambda_handler(handler, event="sqs")``.

How this works. ``lambda_handler`` wraps a ``def handler(event, context)`` in a
plain callable that ``app.function(...)`` registers like any function. It is
pickled with the function and runs inside the container. On each call it turns the
microfaas envelope it receives into the AWS event of its kind (``shapes.py``), builds
the Lambda context from ``mf.context()`` and sets the Lambda runtime's environment
variables (``context.py``), calls the handler, and reads its reply with Lambda's
rules (``replies.py``):

============== ============================== =============================================
kind           the wrapper takes              the handler's reply means
============== ============================== =============================================
sqs            ``Message`` or a list of them  ``batchItemFailures`` -> ``BatchResult``:
                                              only those messages are retried
sns            ``Message`` (a list: the       nothing (a raise retries the message)
               handler runs once per message)
kinesis        ``RecordBatch``                ``batchItemFailures`` -> ``BatchResult`` of
dynamodb                                      sequence numbers: retry from the lowest
http           ``HttpRequest``                the payload 2.0 response -> ``HttpResponse``
function-url
schedule       ``Tick``                       nothing
raw            any JSON-able value            returned as is
============== ============================== =============================================

A ``dict`` given to any kind is taken to be an AWS event already (a test fixture, a
direct invoke): the handler gets it as is and its reply is returned as is.

A reply that breaks Lambda's rules, or an identifier that names no item of the
batch, raises in the container, so the whole batch fails (a ``FunctionError``), as
a raised exception does.

This package runs inside containers: it imports only the base layer (``events``).
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from typing import Any, Final

from .. import events
from .context import LambdaContext, Placement, apply_environment, lambda_context, lambda_environment
from .replies import BatchItemsFailed, LambdaReplyError, failed_items, http_response
from .shapes import dynamodb_event, http_event, kinesis_event, message_id, schedule_event, sns_event, sqs_event, to_dynamodb

__all__ = [
    "EVENT_KINDS",
    "BatchItemsFailed",
    "LambdaContext",
    "LambdaFunction",
    "LambdaReplyError",
    "Placement",
    "lambda_handler",
    "to_dynamodb",
]

EVENT_KINDS: Final = ("sqs", "sns", "kinesis", "dynamodb", "http", "function-url", "schedule", "raw")

# The kinds whose events Lambda polls for: each retry is a new invocation (a new request id).
_POLLED: Final = frozenset({"sqs", "kinesis", "dynamodb"})

# What each kind takes, for the message when it gets something else.
_TAKES: Final = {
    "sqs": "topic messages (a topic subscription)",
    "sns": "topic messages (a topic subscription)",
    "kinesis": "a RecordBatch (a stream consumer)",
    "dynamodb": "a RecordBatch (a stream consumer)",
    "http": "an HttpRequest (an mf.Http route)",
    "function-url": "an HttpRequest (an mf.Http route)",
    "schedule": "a Tick (mf.Every or mf.Cron)",
}


class LambdaFunction:
    """A Lambda handler wrapped to take microfaas envelopes (what ``mf.lambda_handler`` returns).

    It carries the handler's ``__name__``, ``__qualname__`` and ``__module__``, so it
    registers under the handler's name and ships with the handler's module.
    """

    def __init__(self, handler: Callable[[Any, Any], Any], kind: str, where: Placement) -> None:
        self.handler = handler
        self.kind = kind
        self.where = where
        self.__name__ = getattr(handler, "__name__", "handler")
        self.__qualname__ = getattr(handler, "__qualname__", self.__name__)
        self.__module__ = getattr(handler, "__module__", __name__)
        self.__doc__ = getattr(handler, "__doc__", None)

    def __repr__(self) -> str:
        return f"<lambda_handler({self.__qualname__}, event={self.kind!r})>"

    def __call__(self, event: Any) -> Any:
        """Run the handler on ``event`` (a microfaas envelope, or an AWS event as a dict)."""
        ctx = events.context()
        context = lambda_context(ctx, self.where, polled=self.kind in _POLLED)
        apply_environment(ctx, lambda_environment(context, self.where, f"{self.__module__}.{self.__qualname__}"))
        if isinstance(event, dict) or self.kind == "raw":
            return self.handler(event, context)
        name = ctx.function_name
        if self.kind == "sqs" and _is_messages(event):
            messages = [event] if isinstance(event, events.Message) else list(event)
            ids = {message_id(m): m.id for m in messages}
            failed = failed_items(self.handler(sqs_event(messages, self.where), context), ids, function=name, kind="sqs")
            return _batch_result(event, [ids[i] for i in failed or []], name)
        if self.kind == "sns" and _is_messages(event):
            if isinstance(event, events.Message):
                self.handler(sns_event(event, name, self.where), context)
                return None
            return self._sns_batch(list(event), context, name)
        if self.kind in ("kinesis", "dynamodb") and isinstance(event, events.RecordBatch):
            shaped = kinesis_event(event, name, self.where) if self.kind == "kinesis" else dynamodb_event(event, self.where)
            known = {str(r.sequence) for r in event.records}
            failed = failed_items(self.handler(shaped, context), known, function=name, kind=self.kind)
            return events.BatchResult(failed=failed) if failed else None
        if self.kind in ("http", "function-url") and isinstance(event, events.HttpRequest):
            return http_response(self.handler(http_event(event, name, ctx.invocation_id, self.kind, self.where), context), name)
        if self.kind == "schedule" and isinstance(event, events.Tick):
            self.handler(schedule_event(event, self.where), context)
            return None
        raise TypeError(
            f"{name}: lambda_handler(event={self.kind!r}) takes {_TAKES[self.kind]} or an AWS event as a dict, "
            f"got {type(event).__name__}; pick the event kind that matches the function's trigger"
        )

    def _sns_batch(self, messages: list[events.Message], context: LambdaContext, name: str) -> events.BatchResult | None:
        # SNS invokes once per message: a batching subscription runs the handler once per message, and only
        # the messages whose run raised are retried.
        failed = []
        for message in messages:
            try:
                self.handler(sns_event(message, name, self.where), context)
            except Exception:  # noqa: BLE001 - that message failed; the others stand
                traceback.print_exc()  # to the container's stderr, as Lambda logs an uncaught error
                failed.append(message.id)
        return events.BatchResult(failed=failed) if failed else None


def _is_messages(event: Any) -> bool:
    if isinstance(event, events.Message):
        return True
    return isinstance(event, list | tuple) and bool(event) and all(isinstance(m, events.Message) for m in event)


def _batch_result(event: Any, failed: list[str], function: str) -> events.BatchResult | None:
    if not failed:
        return None
    if isinstance(event, events.Message):
        # A subscription without batching gets one message, and retries it when the call fails.
        raise BatchItemsFailed(f"{function}: the handler reported message {event.id} as failed in batchItemFailures")
    return events.BatchResult(failed=failed)


def lambda_handler(
    handler: Callable[[Any, Any], Any], *, event: str, region: str = "us-east-1", account: str = "123456789012"
) -> Callable[[Any], Any]:
    """Wrap an AWS Lambda handler, unchanged, as a microfaas function.

    ``app.function(name="bill", triggers=[orders.subscribe(batch_size=10)])(mf.lambda_handler(handler, event="sqs"))``
    registers it; each call gives the handler the AWS event of kind ``event`` and a
    Lambda context, and reads its reply with Lambda's rules (see docs/lambda.md).

    :param handler: ``def handler(event, context)``, as Lambda's Python runtime calls it.
    :param event: the AWS event the handler expects: ``"sqs"``, ``"sns"``, ``"kinesis"``,
        ``"dynamodb"``, ``"http"`` (API Gateway HTTP API, payload 2.0), ``"function-url"``,
        ``"schedule"`` (EventBridge) or ``"raw"`` (the call's argument as is).
    :param region: the region ARNs, ``awsRegion`` and ``AWS_REGION`` name.
    :param account: the 12-digit account id ARNs and ``accountId`` name.
    :raises ValueError: an unknown event kind, region or account.
    :raises TypeError: ``handler`` is not a sync callable of ``(event, context)``.
    """
    if event not in EVENT_KINDS:
        raise ValueError(f"lambda_handler: event must be one of {', '.join(map(repr, EVENT_KINDS))}, got {event!r}")
    if not callable(handler):
        raise TypeError(f"lambda_handler: handler must be a callable (event, context), got {handler!r}")
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)):  # noqa: B004
        raise TypeError(f"lambda_handler: {handler!r} is async; Lambda's Python runtime calls handlers synchronously")
    return LambdaFunction(handler, event, Placement(region=region, account=account))
