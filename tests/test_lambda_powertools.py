"""Lambda handlers written with Powertools for AWS Lambda, the way its users write them, run on microfaas.

BatchProcessor with process_partial_response (SQS and Kinesis), an
APIGatewayHttpResolver app behind the catch-all route, the event source data
classes and Logger.inject_lambda_context: each sees what it would see on AWS, and
partial failures retry what Lambda would retry.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.shared.cookies import Cookie
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import (
    DynamoDBStreamEvent,
    EventBridgeEvent,
    KinesisStreamEvent,
    LambdaFunctionUrlEvent,
    SNSEvent,
    event_source,
)
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecordEventName
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

import microfaas as mf
from conftest import HandlerLog
from microfaas.http import make_asgi_app

pytestmark = pytest.mark.anyio

LOG = HandlerLog("lambda-powertools")
FAST = mf.Retries(0, initial_delay=0.01, jitter=False)


def note(name: str, **fields: Any) -> None:
    LOG.write(json.dumps({"name": name, **fields}, default=str))


def notes(name: str) -> list[dict[str, Any]]:
    return [entry for entry in map(json.loads, LOG.lines()) if entry["name"] == name]


@pytest.fixture(autouse=True)
def clear_log() -> None:
    LOG.clear()


class _ToLog(logging.Handler):
    """Powertools' JSON log lines, into the test's log (the containers' stdout is not the test's)."""

    def emit(self, record: logging.LogRecord) -> None:
        note("logger", line=json.loads(self.format(record)))


logger = Logger(service="shop", logger_handler=_ToLog())


# -- batch processing ----------------------------------------------------------------------------

sqs_processor = BatchProcessor(event_type=EventType.SQS)
kinesis_processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def order_record(record: SQSRecord) -> None:
    order = record.json_body
    note("order", id=order["id"], receive=record.attributes.approximate_receive_count, message=record.message_id)
    if order.get("flaky") and record.attributes.approximate_receive_count == "1":
        raise ValueError(f"order {order['id']} failed")


@logger.inject_lambda_context
def orders_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.info("processing", extra={"records": len(event["Records"])})
    return process_partial_response(event=event, record_handler=order_record, processor=sqs_processor, context=context)


def click_record(record: KinesisStreamRecord) -> None:
    value = record.kinesis.data_as_json()
    tries = 1 + sum(1 for n in notes("click") if n["sequence"] == record.kinesis.sequence_number)
    note("click", value=value, sequence=record.kinesis.sequence_number, key=record.kinesis.partition_key)
    if value in (1, 3) and tries == 1:
        raise ValueError(f"click {value} failed")


def clicks_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=click_record, processor=kinesis_processor, context=context)


# -- an API with several routes ------------------------------------------------------------------

api = APIGatewayHttpResolver()


@api.get("/hello/<name>")
def hello(name: str) -> dict[str, Any]:
    event = api.current_event
    logger.info("hello", extra={"who": name})
    return {
        "hello": name,
        "lang": event.get_query_string_value("lang", "en"),
        "cookies": event.cookies,
        "ip": event.request_context.http.source_ip,
    }


@api.post("/items")
def create_item() -> Response[str]:
    item = api.current_event.json_body
    cookies = [Cookie(name="item", value=str(item["id"]), path="/"), Cookie(name="seen", value="yes", http_only=True)]
    return Response(status_code=201, content_type="application/json", body=json.dumps({"created": item}), cookies=cookies)


@api.get("/logo")
def logo() -> Response[bytes]:
    return Response(status_code=200, content_type="image/png", body=b"\x89PNG\r\n\x1a\n\x00\xff")


@api.put("/blobs/<blob_id>")
def put_blob(blob_id: str) -> dict[str, Any]:
    event = api.current_event
    raw = base64.b64decode(event.body) if event.is_base64_encoded else (event.body or "").encode()
    return {"id": blob_id, "size": len(raw), "base64": event.is_base64_encoded, "first": raw[0]}


@logger.inject_lambda_context
def api_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return api.resolve(event, context)


# -- event source data classes -------------------------------------------------------------------


@event_source(data_class=SNSEvent)
def alerts_handler(event: SNSEvent, context: Any) -> None:
    sns = event.record.sns
    level = sns.message_attributes["level"].value if "level" in sns.message_attributes else None
    note(
        "alert",
        message=sns.message,
        subject=sns.subject,
        topic=sns.topic_arn,
        level=level,
        id=sns.message_id,
        count=len(list(event.records)),
    )


@event_source(data_class=DynamoDBStreamEvent)
def table_handler(event: DynamoDBStreamEvent, context: Any) -> None:
    for record in event.records:
        change = record.dynamodb
        assert change is not None
        note(
            "change",
            kind=record.event_name.name if record.event_name else None,
            is_insert=record.event_name == DynamoDBRecordEventName.INSERT,
            keys=change.keys,
            new=change.new_image,
            old=change.old_image,
            sequence=change.sequence_number,
            price_is_decimal=isinstance(change.new_image.get("price"), Decimal),
        )


@event_source(data_class=KinesisStreamEvent)
def texts_handler(event: KinesisStreamEvent, context: Any) -> None:
    for record in event.records:
        note("text", text=record.kinesis.data_as_text(), sequence=record.kinesis.sequence_number, id=record.event_id)


@event_source(data_class=EventBridgeEvent)
def nightly_handler(event: EventBridgeEvent, context: Any) -> None:
    note("nightly", detail_type=event.detail_type, source=event.source, time=event.time, resources=event.resources, region=event.region)


@event_source(data_class=LambdaFunctionUrlEvent)
def url_handler(event: LambdaFunctionUrlEvent, context: Any) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(
            {
                "method": event.request_context.http.method,
                "path": event.path,
                "body": event.decoded_body,
                "q": event.query_string_parameters,
            }
        ),
    }


app = mf.App("powertools")
orders = app.topic("orders")
alerts = app.topic("alerts")
clicks = app.stream("clicks")
table = app.stream("table")
texts = app.stream("texts")

app.function(name="orders", retries=FAST, triggers=[orders.subscribe(batch_size=4, batch_window=5.0, max_retries=2)])(
    mf.lambda_handler(orders_handler, event="sqs")
)
app.function(name="clicks", retries=FAST, triggers=[clicks.consume(batch_size=5, max_retries=2)])(
    mf.lambda_handler(clicks_handler, event="kinesis")
)
app.function(name="api", memory_mb=192, triggers=[mf.Http("ANY", "/{proxy+}")])(mf.lambda_handler(api_handler, event="http"))
app.function(name="alerts", triggers=[alerts.subscribe()])(mf.lambda_handler(alerts_handler, event="sns"))
app.function(name="table", triggers=[table.consume(batch_size=10)])(mf.lambda_handler(table_handler, event="dynamodb"))
app.function(name="texts", triggers=[texts.consume(batch_size=10)])(mf.lambda_handler(texts_handler, event="kinesis"))
app.function(name="nightly")(mf.lambda_handler(nightly_handler, event="schedule"))
app.function(name="url", triggers=[mf.Http("ANY", "/url/{proxy+}")])(mf.lambda_handler(url_handler, event="function-url"))


@pytest.fixture
async def faas() -> AsyncIterator[mf.Platform]:
    async with app.run() as platform:
        yield platform


async def test_sqs_batch_processor_retries_only_the_failed_records(faas: mf.Platform) -> None:
    for i in range(4):
        await faas.topic("orders").publish({"id": i, "flaky": i in (1, 2)})
    await faas.drain(timeout=60)
    handled = [(n["id"], n["receive"]) for n in notes("order")]
    assert sorted(handled) == [(0, "1"), (1, "1"), (1, "2"), (2, "1"), (2, "2"), (3, "1")]
    assert faas.dead_letters("orders") == []
    # Logger.inject_lambda_context saw Lambda's context: one cold start, then a warm one.
    lines = [n["line"] for n in notes("logger")]
    assert [line["records"] for line in lines] == [4, 2]
    assert [line["cold_start"] for line in lines] == [True, False]
    first = lines[0]
    assert first["service"] == "shop" and first["message"] == "processing"
    assert first["function_name"] == "orders"
    assert first["function_memory_size"] == "128"
    assert first["function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:orders"
    assert lines[1]["function_request_id"] == first["function_request_id"] + "/2"


async def test_kinesis_batch_processor_restarts_at_the_lowest_failure() -> None:
    faas = app.run()
    for i in range(5):  # put before the consumer starts: one batch of 0..4
        await faas.stream("clicks").put(i, key="user-1")
    async with faas:
        await faas.drain(timeout=60)
        # 1 and 3 failed and were both reported; Lambda restarts the shard at 1 and sends everything after it again.
        assert [n["value"] for n in notes("click")] == [0, 1, 2, 3, 4, 1, 2, 3, 4]
        assert {n["key"] for n in notes("click")} == {"user-1"}
        assert faas.stream("clicks").checkpoints("clicks") == {0: 4}
        assert faas.dead_letters("clicks") == []


def client(faas: mf.Platform) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_asgi_app(faas)), base_url="http://gateway")


async def test_an_http_resolver_app_behind_the_catch_all_route(faas: mf.Platform) -> None:
    async with client(faas) as http:
        hello = await http.get("/hello/ada?lang=fr", headers={"cookie": "session=s1; theme=dark"})
        assert hello.status_code == 200
        assert hello.json() == {"hello": "ada", "lang": "fr", "cookies": ["session=s1", "theme=dark"], "ip": "127.0.0.1"}
        created = await http.post("/items", json={"id": 7, "name": "lamp"})
        assert created.status_code == 201
        assert created.json() == {"created": {"id": 7, "name": "lamp"}}
        assert created.headers.get_list("set-cookie") == ["item=7; Path=/; Secure", "seen=yes; HttpOnly; Secure"]
        logo = await http.get("/logo")
        assert (logo.status_code, logo.headers["content-type"], logo.content) == (200, "image/png", b"\x89PNG\r\n\x1a\n\x00\xff")
        blob = await http.put("/blobs/b1", content=bytes([200, 0, 1, 2]), headers={"content-type": "application/octet-stream"})
        assert blob.json() == {"id": "b1", "size": 4, "base64": True, "first": 200}
        missing = await http.get("/nowhere/at/all")
        assert missing.status_code == 404
        assert missing.json() == {"statusCode": 404, "message": "Not found"}
        wrong_method = await http.delete("/logo")
        assert wrong_method.status_code == 404  # the resolver's answer: it has no DELETE /logo
    [line] = [n["line"] for n in notes("logger")]
    assert (line["message"], line["who"], line["function_name"], line["function_memory_size"]) == ("hello", "ada", "api", "192")


async def test_event_source_data_classes_read_the_events(faas: mf.Platform) -> None:
    message = await faas.topic("alerts").publish({"disk": 93}, attributes={"level": "high", "Subject": "Disk"})
    await faas.stream("table").put({"id": 1, "name": "lamp", "price": 9.5}, key="1")
    await faas.stream("table").put({"Keys": {"id": 1}, "OldImage": {"id": 1, "name": "lamp"}}, key="1")
    await faas.stream("texts").put("héllo", key="k")
    await faas.stream("texts").put(b"raw bytes", key="k")
    await faas.invoke("nightly", mf.Tick(name="nightly", scheduled_at=1_700_000_000.0, fired_at=1_700_000_000.5))
    await faas.drain(timeout=60)

    [alert] = notes("alert")
    assert alert["message"] == '{"disk": 93}' and alert["subject"] == "Disk" and alert["level"] == "high"
    assert alert["topic"] == "arn:aws:sns:us-east-1:123456789012:alerts" and alert["count"] == 1
    assert alert["id"].replace("-", "") == message

    inserted, removed = notes("change")
    assert (inserted["kind"], inserted["is_insert"], removed["kind"]) == ("INSERT", True, "REMOVE")
    assert inserted["keys"] == {"pk": "1"} and removed["keys"] == {"id": "1"}
    assert inserted["new"] == {"id": "1", "name": "lamp", "price": "9.5"} and inserted["price_is_decimal"]
    assert removed["old"] == {"id": "1", "name": "lamp"} and removed["new"] == {}
    assert [inserted["sequence"], removed["sequence"]] == ["0", "1"]

    assert [(n["text"], n["sequence"], n["id"]) for n in notes("text")] == [
        ("héllo", "0", "shardId-000000000000:0"),
        ("raw bytes", "1", "shardId-000000000000:1"),
    ]

    [nightly] = notes("nightly")
    assert nightly == {
        "name": "nightly",
        "detail_type": "Scheduled Event",
        "source": "aws.events",
        "time": "2023-11-14T22:13:20Z",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/nightly"],
        "region": "us-east-1",
    }

    async with client(faas) as http:
        url = await http.post("/url/do/it?x=1", content="payload", headers={"content-type": "text/plain"})
    assert url.json() == {"method": "POST", "path": "/url/do/it", "body": "payload", "q": {"x": "1"}}
