"""microfaas envelopes as the events AWS Lambda hands its handlers, field by field.

Each builder takes what a microfaas source delivers and returns the JSON-shaped
``dict`` AWS documents for that event source, with AWS's types (timestamps in
milliseconds as strings for SQS, seconds as numbers for Kinesis, ISO strings for SNS
and EventBridge; bodies as strings; binary data in base64):

* ``sqs_event``: topic messages as an SQS batch (``Records`` with ``messageId``, ...).
* ``sns_event``: one topic message as an SNS notification (one record).
* ``kinesis_event``: a stream batch as Kinesis records (``kinesis.data`` in base64).
* ``dynamodb_event``: a stream batch as DynamoDB stream records (``dynamodb.NewImage``
  in DynamoDB's attribute-value JSON; ``to_dynamodb`` marshals one value).
* ``http_event``: an HTTP request as API Gateway's HTTP API payload format 2.0, or a
  Lambda function URL's (the same format).
* ``schedule_event``: a timer tick as EventBridge's "Scheduled Event".

Identifiers AWS derives from its own state (receipt handles, subscription ARNs,
event ids) are derived here from the envelope, so they are stable across retries
where AWS keeps them stable. Runs inside the container: imports only ``events``.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .. import events
from .context import Placement

__all__ = [
    "TEXT_TYPES",
    "dynamodb_event",
    "http_event",
    "kinesis_event",
    "message_body",
    "message_id",
    "schedule_event",
    "sns_event",
    "sqs_event",
    "to_dynamodb",
]

# Content types whose bodies an HTTP event carries as text; others are base64 (isBase64Encoded).
TEXT_TYPES: Final = (
    "application/json",
    "application/javascript",
    "application/xml",
    "application/yaml",
    "application/x-www-form-urlencoded",
    "application/graphql",
)


def _iso_ms(timestamp: float) -> str:
    """``2019-08-20T18:47:13.322Z``: SNS's timestamps."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _uuid(*parts: object) -> str:
    """A UUID derived from ``parts``: stable, so a retry carries the same one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=size).hexdigest()


def _payload_bytes(value: Any) -> bytes:
    """A record's payload as bytes: bytes as they are, a str in UTF-8, anything else as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")


def message_body(data: Any) -> str:
    """A message's ``data`` as an SQS body or SNS message: a str as is, bytes decoded as UTF-8
    (base64 when they are not text), anything else JSON-encoded."""
    if isinstance(data, str):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(data)).decode("ascii")
    return json.dumps(data, default=str)


def message_id(message: events.Message) -> str:
    """The ``messageId`` of a message: its id, written as a UUID when it is 32 hex digits (as microfaas makes them)."""
    try:
        return str(uuid.UUID(hex=message.id)) if len(message.id) == 32 else message.id
    except ValueError:
        return message.id


# -- SQS ---------------------------------------------------------------------------------------


def _sqs_attribute_md5(attributes: Mapping[str, str]) -> str:
    """SQS's MD5OfMessageAttributes: per attribute, sorted by name, the length-prefixed name,
    data type and value, with transport type 1 (string) before the value."""
    digest = hashlib.md5(usedforsecurity=False)
    for name in sorted(attributes):
        for part in (name, "String"):
            raw = part.encode("utf-8")
            digest.update(len(raw).to_bytes(4, "big") + raw)
        raw = attributes[name].encode("utf-8")
        digest.update(b"\x01" + len(raw).to_bytes(4, "big") + raw)
    return digest.hexdigest()


def sqs_record(message: events.Message, where: Placement) -> dict[str, Any]:
    """One SQS record of an SQS event."""
    body = message_body(message.data)
    sent = str(int(message.published_at * 1000))
    record: dict[str, Any] = {
        "messageId": message_id(message),
        # Opaque, and new for every receive, as SQS's are.
        "receiptHandle": base64.b64encode(f"{message.topic}/{message.id}/{message.attempt}".encode()).decode("ascii"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(message.attempt),
            "SentTimestamp": sent,
            "SenderId": where.account,
            # The first receive is not recorded across attempts; the send time stands in for it.
            "ApproximateFirstReceiveTimestamp": sent,
        },
        "messageAttributes": {
            name: {"stringValue": value, "stringListValues": [], "binaryListValues": [], "dataType": "String"}
            for name, value in message.attributes.items()
        },
        "md5OfBody": hashlib.md5(body.encode("utf-8"), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": where.arn("sqs", message.topic),
        "awsRegion": where.region,
    }
    if message.attributes:
        record["md5OfMessageAttributes"] = _sqs_attribute_md5(message.attributes)
    return record


def sqs_event(messages: list[events.Message], where: Placement) -> dict[str, Any]:
    """Topic messages as the SQS event of one batch (never an empty ``Records`` list).

    :raises ValueError: no messages.
    """
    if not messages:
        raise ValueError("an SQS event needs at least one message")
    return {"Records": [sqs_record(m, where) for m in messages]}


# -- SNS ---------------------------------------------------------------------------------------

SUBJECT_ATTRIBUTE: Final = "Subject"


def sns_event(message: events.Message, function: str, where: Placement) -> dict[str, Any]:
    """One topic message as the SNS notification Lambda delivers (exactly one record).

    The message attribute ``"Subject"``, when given, is the notification's ``Subject``
    (None otherwise) rather than a message attribute.
    """
    topic_arn = where.arn("sns", message.topic)
    subscription_arn = f"{topic_arn}:{_uuid('sns', message.topic, function)}"
    endpoint = f"https://sns.{where.region}.amazonaws.com"
    attributes = {k: v for k, v in message.attributes.items() if k != SUBJECT_ATTRIBUTE}
    # Shaped like SNS's signature (base64 of 256 bytes) but not a real one: nothing can verify it.
    signature = base64.b64encode(hashlib.shake_256(f"{topic_arn}/{message.id}".encode()).digest(256)).decode("ascii")
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription_arn,
                "Sns": {
                    "Type": "Notification",
                    "MessageId": message_id(message),
                    "TopicArn": topic_arn,
                    "Subject": message.attributes.get(SUBJECT_ATTRIBUTE),
                    "Message": message_body(message.data),
                    "Timestamp": _iso_ms(message.published_at),
                    "SignatureVersion": "1",
                    "Signature": signature,
                    "SigningCertUrl": f"{endpoint}/SimpleNotificationService-{_digest(topic_arn, 16)}.pem",
                    "UnsubscribeUrl": f"{endpoint}/?Action=Unsubscribe&SubscriptionArn={subscription_arn}",
                    "MessageAttributes": {name: {"Type": "String", "Value": value} for name, value in attributes.items()},
                },
            }
        ]
    }


# -- Kinesis and DynamoDB streams --------------------------------------------------------------


def _shard_id(shard: int) -> str:
    return f"shardId-{shard:012d}"


def _partition_key(record: events.Record) -> str:
    # Kinesis requires a partition key; a keyless record is put under its sequence number.
    return record.key if record.key is not None else str(record.sequence)


def kinesis_event(batch: events.RecordBatch, function: str, where: Placement) -> dict[str, Any]:
    """A stream batch as the Kinesis event Lambda delivers: sequence numbers as decimal strings,
    ``data`` in base64 (bytes as they are, a str in UTF-8, other values as JSON).

    :raises ValueError: an empty batch.
    """
    if not batch.records:
        raise ValueError("a Kinesis event needs at least one record")
    source = where.arn("kinesis", f"stream/{batch.stream}")
    role = f"arn:aws:iam::{where.account}:role/{function}-role"
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": _partition_key(r),
                    "sequenceNumber": str(r.sequence),
                    "data": base64.b64encode(_payload_bytes(r.value)).decode("ascii"),
                    "approximateArrivalTimestamp": round(r.put_at, 3),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{_shard_id(r.shard)}:{r.sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": role,
                "awsRegion": where.region,
                "eventSourceARN": source,
            }
            for r in batch.records
        ]
    }


def to_dynamodb(value: Any) -> dict[str, Any]:
    """``value`` as a DynamoDB attribute value: ``{"S": ...}``, ``{"N": "1.5"}``, ``{"M": {...}}``, ...

    :raises ValueError: a value DynamoDB cannot hold (NaN, infinity, an empty set, an unknown type).
    """
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | decimal.Decimal):
        return {"N": str(value)}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"DynamoDB numbers are finite, got {value!r}")
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"M": {str(k): to_dynamodb(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_dynamodb(v) for v in value]}
    if isinstance(value, set | frozenset):
        if not value:
            raise ValueError("DynamoDB sets are never empty")
        if all(isinstance(v, str) for v in value):
            return {"SS": sorted(value)}
        if all(isinstance(v, bytes) for v in value):
            return {"BS": sorted(base64.b64encode(v).decode("ascii") for v in value)}
        if all(isinstance(v, int | float | decimal.Decimal) and not isinstance(v, bool) for v in value):
            return {"NS": sorted((next(iter(to_dynamodb(v).values())) for v in value), key=decimal.Decimal)}
    raise ValueError(f"no DynamoDB type holds {type(value).__name__} value {value!r}")


def _item(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"a DynamoDB image is a dict of attributes, got {type(value).__name__}")
    return {str(k): to_dynamodb(v) for k, v in value.items()}


CHANGE_FIELDS: Final = frozenset({"eventName", "Keys", "NewImage", "OldImage"})
DEFAULT_KEY: Final = "pk"


def _change(record: events.Record) -> tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """``(eventName, Keys, NewImage, OldImage)`` of a record, marshalled."""
    value = record.value
    keys: Any = {DEFAULT_KEY: _partition_key(record)}
    if isinstance(value, Mapping) and value and set(value) <= CHANGE_FIELDS:
        new, old = value.get("NewImage"), value.get("OldImage")
        name = value.get("eventName") or ("INSERT" if old is None else "REMOVE" if new is None else "MODIFY")
        if name not in ("INSERT", "MODIFY", "REMOVE"):
            raise ValueError(f"a DynamoDB eventName is INSERT, MODIFY or REMOVE, got {name!r}")
        keys = value.get("Keys") or keys
        return name, _item(keys), None if new is None else _item(new), None if old is None else _item(old)
    new = value if isinstance(value, Mapping) else {"value": value}
    return "INSERT", _item(keys), _item(new), None


def dynamodb_event(batch: events.RecordBatch, where: Placement) -> dict[str, Any]:
    """A stream batch as DynamoDB stream records.

    A record whose value is a dict of only ``eventName``, ``Keys``, ``NewImage`` and
    ``OldImage`` (plain Python values) describes a change: the images and keys are
    marshalled, and ``eventName`` defaults to INSERT (no old image), REMOVE (no new
    image) or MODIFY. Any other value is an inserted item: ``NewImage`` is the dict
    (a value that is not a dict is the attribute ``"value"``) and ``Keys`` is
    ``{"pk": the record's key}``.

    :raises ValueError: an empty batch, or a value DynamoDB cannot hold.
    """
    if not batch.records:
        raise ValueError("a DynamoDB stream event needs at least one record")
    source = where.arn("dynamodb", f"table/{batch.stream}/stream/1970-01-01T00:00:00.000")
    out = []
    for r in batch.records:
        name, keys, new, old = _change(r)
        change: dict[str, Any] = {"ApproximateCreationDateTime": float(int(r.put_at)), "Keys": keys}
        if new is not None:
            change["NewImage"] = new
        if old is not None:
            change["OldImage"] = old
        # SizeBytes approximates DynamoDB's item size by the keys' and images' JSON size.
        change["SequenceNumber"] = str(r.sequence)
        change["SizeBytes"] = len(json.dumps([keys, new, old], separators=(",", ":")).encode("utf-8"))
        change["StreamViewType"] = "NEW_AND_OLD_IMAGES"
        out.append(
            {
                "eventID": _digest(f"{batch.stream}/{r.shard}/{r.sequence}", 16),
                "eventName": name,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": where.region,
                "dynamodb": change,
                "eventSourceARN": source,
            }
        )
    return {"Records": out}


# -- HTTP: payload format 2.0 ------------------------------------------------------------------


def _is_text(content_type: str, body: bytes) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    if not kind:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return kind.startswith("text/") or kind in TEXT_TYPES or kind.endswith(("+json", "+xml"))


def _api_id(function: str, kind: str, where: Placement) -> str:
    # API ids are 10 lower-case letters and digits; function URL ids 32.
    size = 16 if kind == "function-url" else 5
    return _digest(f"{kind}/{where.account}/{function}", size)


def http_event(request: events.HttpRequest, function: str, request_id: str, kind: str, where: Placement) -> dict[str, Any]:
    """An HTTP request as payload format 2.0: API Gateway's HTTP API (``kind="http"``) or a
    function URL (``kind="function-url"``, routeKey ``$default`` and no path parameters).

    ``cookie`` headers become ``cookies`` (and leave ``headers``); a body whose content
    type is not text is base64 with ``isBase64Encoded``; ``body``,
    ``queryStringParameters`` and ``pathParameters`` are left out when empty, as AWS does.
    """
    headers = {k: v for k, v in request.headers.items() if k != "cookie"}
    cookies = [c.strip() for c in request.headers.get("cookie", "").split(";") if c.strip()]
    api = _api_id(function, kind, where)
    if kind == "function-url":
        route, domain = "$default", f"{api}.lambda-url.{where.region}.on.aws"
    else:
        route, domain = request.route or "$default", f"{api}.execute-api.{where.region}.amazonaws.com"
    received = request.received_at or datetime.datetime.now(datetime.UTC).timestamp()
    moment = datetime.datetime.fromtimestamp(received, datetime.UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": request.path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if request.query:
        event["queryStringParameters"] = dict(request.query)
    event["requestContext"] = {
        "accountId": where.account,
        "apiId": api,
        "domainName": domain,
        "domainPrefix": api,
        "http": {
            "method": request.method,
            "path": request.path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": request.headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route,
        "stage": "$default",
        "time": moment.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(received * 1000),
    }
    if request.body:
        if _is_text(request.headers.get("content-type", ""), request.body):
            event["body"], event["isBase64Encoded"] = request.body.decode("utf-8", errors="replace"), False
        else:
            event["body"], event["isBase64Encoded"] = base64.b64encode(request.body).decode("ascii"), True
    else:
        event["isBase64Encoded"] = False
    if request.path_params and kind != "function-url":
        event["pathParameters"] = dict(request.path_params)
    return event


# -- EventBridge -------------------------------------------------------------------------------


def schedule_event(tick: events.Tick, where: Placement) -> dict[str, Any]:
    """A timer tick as EventBridge's "Scheduled Event" (``time`` is the due time, to the second)."""
    rule = "".join(c if c.isalnum() or c in "-_." else "-" for c in tick.name)
    due = datetime.datetime.fromtimestamp(tick.scheduled_at, datetime.UTC)
    return {
        "version": "0",
        "id": _uuid("schedule", tick.name, tick.scheduled_at),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": where.account,
        "time": due.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": where.region,
        "resources": [where.arn("events", f"rule/{rule}")],
        "detail": {},
    }
