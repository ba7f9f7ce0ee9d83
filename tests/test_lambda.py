"""AWS Lambda handlers run unchanged: the events they see, field by field, and Lambda's reply rules.

Handlers here use no library: they read ``event["Records"]`` themselves and write
what they saw to a log (they run in containers). The shapes are checked against the
ones AWS documents for each source; partial failures are checked to retry exactly
what Lambda would retry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import microfaas as mf
from conftest import HandlerLog
from microfaas.aws import LambdaFunction, LambdaReplyError, to_dynamodb
from microfaas.http import make_asgi_app

pytestmark = pytest.mark.anyio

LOG = HandlerLog("lambda")
FAST = mf.Retries(0, initial_delay=0.01, jitter=False)
ENV_NAMES = (
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "_HANDLER",
)


def seen(name: str) -> list[dict[str, Any]]:
    """What handler ``name`` logged, one entry per call, in call order."""
    return [entry for entry in map(json.loads, LOG.lines()) if entry["name"] == name]


def log(name: str, event: Any, context: Any) -> None:
    LOG.write(
        json.dumps(
            {
                "name": name,
                "event": event,
                "request_id": context.aws_request_id,
                "context": {
                    "function_name": context.function_name,
                    "function_version": context.function_version,
                    "invoked_function_arn": context.invoked_function_arn,
                    "memory_limit_in_mb": context.memory_limit_in_mb,
                    "log_group_name": context.log_group_name,
                    "log_stream_name": context.log_stream_name,
                    "remaining_ms": context.get_remaining_time_in_millis(),
                    "identity": context.identity,
                    "client_context": context.client_context,
                },
                "env": {k: os.environ.get(k) for k in ENV_NAMES},
            }
        )
    )


@pytest.fixture(autouse=True)
def clear_log() -> None:
    LOG.clear()


app = mf.App("lambda")
orders = app.topic("orders")
alerts = app.topic("alerts")
queue = app.topic("queue")
clicks = app.stream("clicks")
table = app.stream("table")
ledger = app.stream("ledger")


# -- handlers, written as for AWS ----------------------------------------------------------------


def bill(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fails the messages whose body says so, on their first receive only; "always" never succeeds."""
    log("bill", event, context)
    failures = []
    for record in event["Records"]:
        body = json.loads(record["body"]) if record["body"].startswith("{") else {}
        if body.get("fail") == "always" or (body.get("fail") == "once" and record["attributes"]["ApproximateReceiveCount"] == "1"):
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def bad_reply(event: dict[str, Any], context: Any) -> dict[str, Any]:
    log("bad_reply", event, context)
    return {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-this-batch"}]}


def notify(event: dict[str, Any], context: Any) -> None:
    log("notify", event, context)
    if event["Records"][0]["Sns"]["Message"] == "flaky" and len(seen("notify")) == 1:
        raise RuntimeError("the first delivery fails")


def on_clicks(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Reports records 2 and 3 as failed the first time it sees them."""
    log("on_clicks", event, context)
    failures = []
    for record in event["Records"]:
        value = json.loads(base64.b64decode(record["kinesis"]["data"]))
        first_time = sum(
            1
            for e in seen("on_clicks")
            for r in e["event"]["Records"]
            if r["kinesis"]["sequenceNumber"] == record["kinesis"]["sequenceNumber"]
        )
        if value in (2, 3) and first_time == 1:
            failures.append({"itemIdentifier": record["kinesis"]["sequenceNumber"]})
    return {"batchItemFailures": failures}


def on_table(event: dict[str, Any], context: Any) -> None:
    log("on_table", event, context)


def tick(event: dict[str, Any], context: Any) -> None:
    log("tick", event, context)


def raw(event: Any, context: Any) -> dict[str, Any]:
    log("raw", event, context)
    if event.get("fail_first") and len(seen("raw")) == 1:
        raise RuntimeError("first attempt")
    return {"got": event, "request_id": context.aws_request_id}


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers with the event it got, as JSON (a 200 with no statusCode)."""
    return event


def answers(event: dict[str, Any], context: Any) -> Any:
    path = event["rawPath"]
    if path == "/answers/cookies":
        return {"statusCode": 201, "headers": {"x-kind": "cookies"}, "body": "set", "cookies": ["a=1; Path=/", "b=2; HttpOnly"]}
    if path == "/answers/binary":
        body = base64.b64encode(b"\x89PNG\x00\x01").decode()
        return {"statusCode": 200, "headers": {"content-type": "image/png"}, "body": body, "isBase64Encoded": True}
    if path == "/answers/text":
        return "plain words"
    if path == "/answers/boom":
        raise ValueError("handler failed")
    if path == "/answers/malformed":
        return {"statusCode": "teapot"}
    return {"no": "statusCode"}


def pinned(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": "the specific route"}


app.function(name="bill", memory_mb=256, retries=FAST, triggers=[orders.subscribe(batch_size=3, batch_window=5.0, max_retries=2)])(
    mf.lambda_handler(bill, event="sqs", region="eu-west-1", account="111122223333")
)
app.function(name="bad_reply", retries=FAST, triggers=[queue.subscribe(batch_size=2, batch_window=5.0, max_retries=1)])(
    mf.lambda_handler(bad_reply, event="sqs")
)
app.function(name="notify", retries=FAST, triggers=[alerts.subscribe(max_retries=2)])(mf.lambda_handler(notify, event="sns"))
app.function(name="on_clicks", retries=FAST, triggers=[clicks.consume(batch_size=5, max_retries=2)])(
    mf.lambda_handler(on_clicks, event="kinesis")
)
app.function(name="on_table", triggers=[table.consume(batch_size=10)])(mf.lambda_handler(on_table, event="dynamodb"))
app.function(name="tick")(mf.lambda_handler(tick, event="schedule"))
raw_fn = app.function(name="raw", timeout=20, retries=mf.Retries(1, initial_delay=0.01))(mf.lambda_handler(raw, event="raw"))
app.function(name="echo", triggers=[mf.Http("ANY", "/echo/{proxy+}")])(mf.lambda_handler(echo, event="http"))
app.function(name="url", triggers=[mf.Http("ANY", "/url/{proxy+}")])(mf.lambda_handler(echo, event="function-url"))
app.function(name="answers", triggers=[mf.Http("ANY", "/{proxy+}")])(mf.lambda_handler(answers, event="http"))
app.function(name="pinned", triggers=[mf.Http("GET", "/answers/pinned")])(mf.lambda_handler(pinned, event="http"))


@app.function(triggers=[ledger.consume(batch_size=6, bisect_on_error=True, max_retries=1)], retries=FAST)
def settle(batch: mf.RecordBatch) -> mf.BatchResult | None:
    """A plain microfaas stream handler reporting a partial failure: 3 fails once, 9 always."""
    LOG.write(json.dumps({"name": "settle", "sequences": [r.sequence for r in batch]}))
    tries = [e["sequences"] for e in seen("settle")]
    failed = [r.sequence for r in batch if r.value == 9 or (r.value == 3 and sum(3 in s for s in tries) == 1)]
    return mf.BatchResult(failed=[str(s) for s in failed]) if failed else None


@pytest.fixture
async def faas() -> AsyncIterator[mf.Platform]:
    async with app.run() as platform:
        yield platform


def check_context(entry: dict[str, Any], function: str, *, region: str = "us-east-1", account: str = "123456789012") -> None:
    context = entry["context"]
    assert context["function_name"] == function
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == f"arn:aws:lambda:{region}:{account}:function:{function}"
    assert context["log_group_name"] == f"/aws/lambda/{function}"
    assert "/[$LATEST]" in context["log_stream_name"]
    assert context["identity"] is None and context["client_context"] is None
    assert 0 < context["remaining_ms"] <= 30_000
    env = entry["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == function
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == context["memory_limit_in_mb"]
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == context["log_group_name"]
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == context["log_stream_name"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == region
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert env["_HANDLER"].startswith(__name__ + ".")


# -- SQS -----------------------------------------------------------------------------------------


async def test_sqs_records_and_partial_batch_failures(faas: mf.Platform) -> None:
    ids = [
        await faas.topic("orders").publish({"n": 1}, attributes={"source": "web"}),
        await faas.topic("orders").publish({"n": 2, "fail": "once"}),
        await faas.topic("orders").publish("plain text"),
    ]
    await faas.drain(timeout=60)
    first, retry = seen("bill")
    assert [r["messageId"] for r in first["event"]["Records"]] == [str(uuid.UUID(i)) for i in ids]
    # Only the failed message came back, with the same messageId and one more receive.
    [again] = retry["event"]["Records"]
    assert again["messageId"] == str(uuid.UUID(ids[1]))
    assert again["attributes"]["ApproximateReceiveCount"] == "2"
    assert again["receiptHandle"] != first["event"]["Records"][1]["receiptHandle"]
    assert retry["request_id"] == first["request_id"] + "/2"  # Lambda polls SQS: a retry is a new invocation
    assert faas.dead_letters("bill") == []

    record = first["event"]["Records"][0]
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "md5OfMessageAttributes",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["body"] == '{"n": 1}'
    assert first["event"]["Records"][2]["body"] == "plain text"
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    attributes = record["attributes"]
    assert set(attributes) == {"ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"}
    assert attributes["ApproximateReceiveCount"] == "1"
    assert attributes["SentTimestamp"].isdigit() and len(attributes["SentTimestamp"]) == 13  # milliseconds
    assert attributes["SenderId"] == "111122223333"
    assert record["messageAttributes"] == {
        "source": {"stringValue": "web", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
    }
    assert len(record["md5OfMessageAttributes"]) == 32
    assert "md5OfMessageAttributes" not in first["event"]["Records"][2]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:eu-west-1:111122223333:orders"
    assert record["awsRegion"] == "eu-west-1"
    check_context(first, "bill", region="eu-west-1", account="111122223333")
    assert first["context"]["memory_limit_in_mb"] == "256"


async def test_sqs_a_message_that_always_fails_is_dead_lettered_alone(faas: mf.Platform) -> None:
    ok = await faas.topic("orders").publish({"n": 1})
    bad = await faas.topic("orders").publish({"n": 2, "fail": "always"})
    await faas.topic("orders").publish({"n": 3})
    await faas.drain(timeout=60)
    calls = seen("bill")
    assert [len(c["event"]["Records"]) for c in calls] == [3, 1, 1]  # max_retries=2
    [letter] = faas.dead_letters("bill")
    assert letter.event.id == bad and letter.attempts == 3
    assert ok not in {r["messageId"].replace("-", "") for c in calls[1:] for r in c["event"]["Records"]}


async def test_sqs_an_unknown_item_identifier_fails_the_whole_batch(faas: mf.Platform) -> None:
    await faas.topic("queue").publish("one")
    await faas.topic("queue").publish("two")
    await faas.drain(timeout=60)
    letters = faas.dead_letters("bad_reply")
    assert sorted(letter.event.data for letter in letters) == ["one", "two"]
    assert all(letter.error.remote_type == "microfaas.aws.replies.LambdaReplyError" for letter in letters)
    assert "not-a-message-of-this-batch" in letters[0].error.remote_message
    assert [len(c["event"]["Records"]) for c in seen("bad_reply")] == [2, 2]  # the whole batch, retried once


# -- SNS -----------------------------------------------------------------------------------------


async def test_sns_one_record_per_invocation_retried_on_error(faas: mf.Platform) -> None:
    message = await faas.topic("alerts").publish("flaky", attributes={"Subject": "Heads up", "level": "high"})
    await faas.drain(timeout=60)
    first, retry = seen("notify")
    [record] = first["event"]["Records"]
    assert retry["event"]["Records"][0]["Sns"]["MessageId"] == record["Sns"]["MessageId"] == str(uuid.UUID(message))
    assert record["EventSource"] == "aws:sns" and record["EventVersion"] == "1.0"
    assert record["EventSubscriptionArn"].startswith("arn:aws:sns:us-east-1:123456789012:alerts:")
    sns = record["Sns"]
    assert sns["Type"] == "Notification"
    assert sns["TopicArn"] == "arn:aws:sns:us-east-1:123456789012:alerts"
    assert sns["Subject"] == "Heads up"
    assert sns["Message"] == "flaky"
    assert sns["MessageAttributes"] == {"level": {"Type": "String", "Value": "high"}}
    assert sns["Timestamp"].endswith("Z") and len(sns["Timestamp"]) == len("2019-08-20T18:47:13.322Z")
    assert sns["SignatureVersion"] == "1"
    assert {"Signature", "SigningCertUrl", "UnsubscribeUrl"} <= set(sns)
    check_context(first, "notify")


# -- Kinesis and DynamoDB streams ----------------------------------------------------------------


async def test_kinesis_restarts_at_the_lowest_failed_sequence_number() -> None:
    faas = app.run()
    for i in range(5):  # put before the consumers start: one batch of 0..4
        await faas.stream("clicks").put(i, key="user-1")
    async with faas:
        await faas.drain(timeout=60)
        first, retry = seen("on_clicks")
        numbers = [[r["kinesis"]["sequenceNumber"] for r in e["event"]["Records"]] for e in (first, retry)]
        # 2 and 3 were reported: Lambda restarts the shard at 2 and delivers everything after it again.
        assert numbers == [["0", "1", "2", "3", "4"], ["2", "3", "4"]]
        assert faas.stream("clicks").checkpoints("on_clicks") == {0: 4}
        assert faas.dead_letters("on_clicks") == []
    record = first["event"]["Records"][1]
    assert set(record) == {
        "kinesis",
        "eventSource",
        "eventVersion",
        "eventID",
        "eventName",
        "invokeIdentityArn",
        "awsRegion",
        "eventSourceARN",
    }
    kinesis = record["kinesis"]
    assert kinesis["kinesisSchemaVersion"] == "1.0"
    assert kinesis["partitionKey"] == "user-1"
    assert json.loads(base64.b64decode(kinesis["data"])) == 1
    assert isinstance(kinesis["approximateArrivalTimestamp"], float)
    assert record["eventID"] == "shardId-000000000000:1"
    assert record["eventName"] == "aws:kinesis:record" and record["eventSource"] == "aws:kinesis"
    assert record["eventSourceARN"] == "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
    check_context(first, "on_clicks")


async def test_a_stream_batch_result_checkpoints_before_the_lowest_failure() -> None:
    faas = app.run()
    for i in range(12):  # batches 0..5 and 6..11
        await faas.stream("ledger").put(i, key="k")
    async with faas:
        await faas.drain(timeout=60)
        tries = [e["sequences"] for e in seen("settle")]
        # 3 fails once: retried from 3 (not bisected). 9 always fails: retried from 9, then dead-lettered
        # record by record with what came after it, as Lambda gives up on the rest of the batch.
        assert tries == [[0, 1, 2, 3, 4, 5], [3, 4, 5], [6, 7, 8, 9, 10, 11], [9, 10, 11]]
        letters = faas.dead_letters("settle")
        assert [letter.event.sequence for letter in letters] == [9, 10, 11]
        assert {letter.attempts for letter in letters} == {2}
        assert faas.stream("ledger").checkpoints("settle") == {0: 11}


async def test_dynamodb_stream_records_in_dynamodbs_json() -> None:
    faas = app.run()
    await faas.stream("table").put({"id": 7, "name": "lamp", "tags": {"b", "a"}, "price": 9.5, "gone": None}, key="7")
    await faas.stream("table").put(
        {"Keys": {"id": 7}, "OldImage": {"id": 7, "name": "lamp"}, "NewImage": {"id": 7, "name": "desk"}}, key="7"
    )
    await faas.stream("table").put({"Keys": {"id": 7}, "OldImage": {"id": 7, "name": "desk"}}, key="7")
    async with faas:
        await faas.drain(timeout=60)
    [entry] = seen("on_table")
    inserted, modified, removed = entry["event"]["Records"]
    assert [r["eventName"] for r in (inserted, modified, removed)] == ["INSERT", "MODIFY", "REMOVE"]
    assert inserted["dynamodb"]["Keys"] == {"pk": {"S": "7"}}
    assert inserted["dynamodb"]["NewImage"] == {
        "id": {"N": "7"},
        "name": {"S": "lamp"},
        "tags": {"SS": ["a", "b"]},
        "price": {"N": "9.5"},
        "gone": {"NULL": True},
    }
    assert "OldImage" not in inserted["dynamodb"]
    assert modified["dynamodb"]["Keys"] == {"id": {"N": "7"}}
    assert modified["dynamodb"]["OldImage"]["name"] == {"S": "lamp"} and modified["dynamodb"]["NewImage"]["name"] == {"S": "desk"}
    assert "NewImage" not in removed["dynamodb"]
    assert [r["dynamodb"]["SequenceNumber"] for r in (inserted, modified, removed)] == ["0", "1", "2"]
    for record in (inserted, modified, removed):
        assert record["eventSource"] == "aws:dynamodb" and record["eventVersion"] == "1.1"
        assert record["eventSourceARN"].startswith("arn:aws:dynamodb:us-east-1:123456789012:table/table/stream/")
        assert record["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(record["dynamodb"]["SizeBytes"], int) and record["dynamodb"]["SizeBytes"] > 0
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], float)


def test_values_marshal_to_dynamodb_attribute_values() -> None:
    assert to_dynamodb({"a": [1, True, b"\x00"], "n": {1, 2.5}}) == {
        "M": {"a": {"L": [{"N": "1"}, {"BOOL": True}, {"B": "AA=="}]}, "n": {"NS": ["1", "2.5"]}}
    }
    with pytest.raises(ValueError, match="finite"):
        to_dynamodb(float("nan"))
    with pytest.raises(ValueError, match="no DynamoDB type"):
        to_dynamodb(object())


# -- EventBridge, raw invokes, the context -------------------------------------------------------


async def test_schedule_raw_and_the_context(faas: mf.Platform) -> None:
    due = 1_700_000_000.25
    assert await faas.invoke("tick", mf.Tick(name="nightly#0", scheduled_at=due, fired_at=due + 0.01)) is None
    [entry] = seen("tick")
    event = entry["event"]
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["time"] == "2023-11-14T22:13:20Z"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/nightly-0"]
    assert event["version"] == "0" and event["detail"] == {} and event["account"] == "123456789012"
    assert str(uuid.UUID(event["id"])) == event["id"]

    # A direct invoke passes its JSON event as is, and returns the reply as is.
    reply = await faas.invoke("raw", {"k": [1, 2]})
    [entry] = seen("raw")
    assert reply == {"got": {"k": [1, 2]}, "request_id": entry["request_id"]}
    assert entry["context"]["memory_limit_in_mb"] == "128"
    assert entry["context"]["remaining_ms"] <= 20_000
    check_context(entry, "raw")
    # A new request id for each invocation; the same across the retries of one asynchronous event.
    LOG.clear()
    call = await raw_fn.spawn({"fail_first": True})
    assert (await call.result())["request_id"] == call.id
    assert [e["request_id"] for e in seen("raw")] == [call.id, call.id]
    assert call.id != reply["request_id"]


async def test_an_envelope_of_another_kind_is_a_clear_error(faas: mf.Platform) -> None:
    with pytest.raises(mf.FunctionError, match=r"lambda_handler\(event='schedule'\) takes a Tick"):
        await faas.invoke("tick", [1, 2])


def test_lambda_handler_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="event must be one of"):
        mf.lambda_handler(raw, event="s3")
    with pytest.raises(ValueError, match="account must be a 12-digit"):
        mf.lambda_handler(raw, event="raw", account="42")

    async def handler(event: Any, context: Any) -> None: ...

    with pytest.raises(TypeError, match="async"):
        mf.lambda_handler(handler, event="raw")
    wrapped = mf.lambda_handler(raw, event="raw")
    assert isinstance(wrapped, LambdaFunction)
    assert (wrapped.__name__, wrapped.__module__) == ("raw", raw.__module__)
    assert mf.App("names").function(wrapped).name == "raw"  # registered under the handler's name
    assert issubclass(LambdaReplyError, ValueError)


async def test_local_calls_leave_the_callers_environment_alone() -> None:
    os.environ.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    assert raw_fn.local({"k": 1})["got"] == {"k": 1}
    assert "AWS_LAMBDA_FUNCTION_NAME" not in os.environ
    [entry] = seen("raw")
    assert entry["context"]["function_name"] == "raw"


# -- HTTP ----------------------------------------------------------------------------------------


def client(faas: mf.Platform) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_asgi_app(faas)), base_url="http://gateway")


async def test_http_events_are_payload_format_2(faas: mf.Platform) -> None:
    async with client(faas) as http:
        response = await http.get(
            "/echo/a/b?x=1&x=2&y=",
            headers={"Cookie": "session=abc; theme=dark", "User-Agent": "tests/1.0", "X-Thing": "t"},
        )
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        event = response.json()
        posted = (await http.post("/echo/upload", content=b"\x00\xffbinary", headers={"content-type": "application/octet-stream"})).json()
        texted = (await http.put("/echo/notes", json={"note": "é"})).json()
        url = (await http.delete("/url/things/1")).json()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "ANY /echo/{proxy+}"
    assert event["rawPath"] == "/echo/a/b"
    assert event["rawQueryString"] == "x=1&x=2&y="
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-thing"] == "t" and event["headers"]["user-agent"] == "tests/1.0"
    assert all(name == name.lower() for name in event["headers"])
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert event["isBase64Encoded"] is False and "body" not in event
    ctx = event["requestContext"]
    assert ctx["http"] == {"method": "GET", "path": "/echo/a/b", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "tests/1.0"}
    assert ctx["stage"] == "$default" and ctx["routeKey"] == "ANY /echo/{proxy+}"
    assert ctx["accountId"] == "123456789012"
    assert ctx["domainName"] == f"{ctx['apiId']}.execute-api.us-east-1.amazonaws.com" and len(ctx["apiId"]) == 10
    assert isinstance(ctx["timeEpoch"], int) and ctx["time"].endswith(" +0000")
    assert ctx["requestId"]

    assert posted["isBase64Encoded"] is True
    assert base64.b64decode(posted["body"]) == b"\x00\xffbinary"
    assert posted["requestContext"]["http"]["method"] == "POST"
    assert texted["isBase64Encoded"] is False and json.loads(texted["body"]) == {"note": "é"}

    assert url["routeKey"] == url["requestContext"]["routeKey"] == "$default"
    assert url["requestContext"]["domainName"].endswith(".lambda-url.us-east-1.on.aws")
    assert "pathParameters" not in url
    assert url["requestContext"]["http"]["method"] == "DELETE"


async def test_http_replies_follow_the_payload_2_response_rules(faas: mf.Platform) -> None:
    async with client(faas) as http:
        cookies = await http.post("/answers/cookies")
        assert (cookies.status_code, cookies.text, cookies.headers["x-kind"]) == (201, "set", "cookies")
        assert cookies.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
        binary = await http.get("/answers/binary")
        assert (binary.headers["content-type"], binary.content) == ("image/png", b"\x89PNG\x00\x01")
        text = await http.get("/answers/text")
        assert (text.status_code, text.headers["content-type"], text.text) == (200, "text/plain; charset=utf-8", "plain words")
        inferred = await http.patch("/answers/anything/else")
        assert (inferred.status_code, inferred.headers["content-type"], inferred.json()) == (200, "application/json", {"no": "statusCode"})
        boom = await http.get("/answers/boom")
        assert boom.status_code == 500 and boom.json()["remote_type"] == "builtins.ValueError"
        malformed = await http.get("/answers/malformed")
        assert malformed.status_code == 500 and malformed.json()["remote_type"] == "microfaas.aws.replies.LambdaReplyError"
        # A more specific route wins over the catch-all; the catch-all does not match the root.
        assert (await http.get("/answers/pinned")).text == "the specific route"
        assert (await http.post("/answers/pinned")).json() == {"no": "statusCode"}
        assert (await http.get("/")).status_code == 404


# -- the catch-all route -------------------------------------------------------------------------


def test_http_accepts_any_and_a_greedy_last_segment() -> None:
    assert mf.Http("any", "/{proxy+}").method == "ANY"
    assert mf.Http("GET", "/files/{path+}").param_names == ("path",)
    with pytest.raises(ValueError, match="only the last segment"):
        mf.Http("GET", "/{rest+}/tail")
    with pytest.raises(ValueError, match="method must be one of"):
        mf.Http("FETCH", "/x")


def test_routes_prefer_the_more_specific_one() -> None:
    from microfaas.http.routes import build_routes

    def spec(name: str, *triggers: mf.Http) -> mf.FunctionSpec:
        return mf.FunctionSpec(name=name, fn=raw, triggers=triggers)

    routes = build_routes(
        {
            "catch_all": spec("catch_all", mf.Http("ANY", "/{proxy+}")),
            "files": spec("files", mf.Http("GET", "/files/{path+}")),
            "one": spec("one", mf.Http("GET", "/files/{name}"), mf.Http("ANY", "/files/{name}")),
            "readme": spec("readme", mf.Http("GET", "/files/readme")),
        }
    )

    def route(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
        segments = path[1:].split("/")
        for r in routes:
            params = r.match(segments)
            if params is not None and r.allows(method):
                return r.function, r.key, params
        return None

    assert route("GET", "/files/readme") == ("readme", "GET /files/readme", {})
    assert route("GET", "/files/a.txt") == ("one", "GET /files/{name}", {"name": "a.txt"})
    assert route("HEAD", "/files/a.txt") == ("one", "GET /files/{name}", {"name": "a.txt"})
    assert route("POST", "/files/a.txt") == ("one", "ANY /files/{name}", {"name": "a.txt"})
    assert route("GET", "/files/a/b/c.txt") == ("files", "GET /files/{path+}", {"path": "a/b/c.txt"})
    assert route("DELETE", "/files/a/b") == ("catch_all", "ANY /{proxy+}", {"proxy": "files/a/b"})
    assert route("GET", "/files/") == ("catch_all", "ANY /{proxy+}", {"proxy": "files/"})  # a greedy segment is never empty
    assert route("GET", "/") is None
    with pytest.raises(ValueError, match="collides"):
        build_routes({"a": spec("a", mf.Http("ANY", "/{x+}")), "b": spec("b", mf.Http("ANY", "/{y+}"))})
