"""A Lambda handler's reply, read with Lambda's rules.

* Batch sources (SQS, Kinesis, DynamoDB): ``{"batchItemFailures": [{"itemIdentifier": id}, ...]}``
  names the items that failed. An empty or missing list (or no such key, or None) is a
  success. An item without a non-empty string ``itemIdentifier``, or one that names
  no item of the batch, fails the whole batch, as Lambda treats it
  (``failed_items`` raises ``LambdaReplyError``).
* HTTP (payload format 2.0): a dict with ``statusCode`` is a response (``headers``,
  ``body``, ``isBase64Encoded``, ``cookies``); any other reply is a 200 whose body is
  the reply as JSON, except a str, which is a 200 of text (``http_response``).

Runs inside the container: imports only ``events``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping
from typing import Any

from .. import events

__all__ = ["BatchItemsFailed", "LambdaReplyError", "failed_items", "http_response"]


class LambdaReplyError(ValueError):
    """The handler's reply breaks Lambda's rules; the whole batch (or the request) fails."""


class BatchItemsFailed(RuntimeError):
    """The handler reported the only item of its event as failed (``batchItemFailures``)."""


def failed_items(reply: Any, known: Collection[str], *, function: str, kind: str) -> list[str] | None:
    """The items a batch handler's reply reports as failed: None when it is no partial batch
    response (then the batch succeeded), else the identifiers listed (maybe none).

    :param known: the identifiers of the batch's items (message ids, or sequence numbers).
    :raises LambdaReplyError: a malformed ``batchItemFailures`` or an identifier not in the batch.
    """
    if not isinstance(reply, Mapping) or "batchItemFailures" not in reply:
        return None
    items = reply["batchItemFailures"]
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        raise LambdaReplyError(f"{function}: batchItemFailures must be a list, got {type(items).__name__}")
    failed = []
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(ident, str) or not ident:
            raise LambdaReplyError(f'{function}: each batchItemFailures entry must be {{"itemIdentifier": "<id>"}}, got {item!r}')
        if ident not in known:
            what = "message id" if kind == "sqs" else "sequence number"
            raise LambdaReplyError(f"{function}: batchItemFailures names {ident!r}, which is no {what} of this {kind} batch")
        failed.append(ident)
    return failed


def _text(value: Any, field: str, function: str) -> str:
    if not isinstance(value, str):
        raise LambdaReplyError(f"{function}: the response's {field} must be a str, got {type(value).__name__}")
    return value


def http_response(reply: Any, function: str) -> events.HttpResponse:
    """An HTTP handler's reply as the response API Gateway (payload format 2.0) would send.

    :raises LambdaReplyError: a response dict with a bad ``statusCode``, ``headers``, ``body`` or
        ``cookies``, or a body that is not valid base64 when ``isBase64Encoded`` says it is;
        a reply that is not JSON.
    """
    if isinstance(reply, str):
        return events.HttpResponse.text(reply)
    if not (isinstance(reply, Mapping) and "statusCode" in reply):
        try:
            return events.HttpResponse.json(reply)
        except (TypeError, ValueError) as exc:
            raise LambdaReplyError(f"{function}: the reply is not JSON: {exc}") from None
    status = reply["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise LambdaReplyError(f"{function}: statusCode must be an int from 100 to 599, got {status!r}")
    headers = reply.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise LambdaReplyError(f"{function}: the response's headers must be a dict, got {type(headers).__name__}")
    # API Gateway sends header values of any JSON scalar type as their text.
    fields = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in headers.items()}
    body = _text(reply.get("body") or "", "body", function)
    if reply.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise LambdaReplyError(f"{function}: isBase64Encoded is true but the body is not base64") from None
    else:
        raw = body.encode("utf-8")
    cookies = reply.get("cookies") or []
    if not isinstance(cookies, list | tuple) or not all(isinstance(c, str) for c in cookies):
        raise LambdaReplyError(f"{function}: the response's cookies must be a list of str, got {cookies!r}")
    try:
        return events.HttpResponse(status=status, body=raw, headers=fields, cookies=tuple(cookies))
    except ValueError as exc:
        raise LambdaReplyError(f"{function}: {exc}") from None
