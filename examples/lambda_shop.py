"""AWS Lambda handlers, unchanged, on microfaas: SQS with a partial batch response, Kinesis, an HTTP API.

python examples/lambda_shop.py
"""

from __future__ import annotations

import base64
import json

import anyio

import microfaas as mf

# -- three handlers as they would be deployed to AWS Lambda --------------------------------------


def bill(event, context):
    """SQS: bill each order; report the ones without a card, so only those are retried."""
    failures = []
    for record in event["Records"]:
        order = json.loads(record["body"])
        if "card" not in order:
            failures.append({"itemIdentifier": record["messageId"]})
        else:
            print(f"  billed order {order['id']} (receive #{record['attributes']['ApproximateReceiveCount']}, {context.aws_request_id})")
    return {"batchItemFailures": failures}


def count_clicks(event, context):
    """Kinesis: count clicks per page."""
    pages = [json.loads(base64.b64decode(r["kinesis"]["data"]))["page"] for r in event["Records"]]
    print(f"  {len(pages)} clicks on shard {event['Records'][0]['eventID'].split(':')[0]}: {sorted(set(pages))}")


def api(event, context):
    """API Gateway HTTP API (payload format 2.0), routing inside the handler as web frameworks do."""
    method, path = event["requestContext"]["http"]["method"], event["rawPath"]
    if method == "GET" and path.startswith("/items/"):
        return {"id": event["pathParameters"]["proxy"].removeprefix("items/"), "cookies": event.get("cookies", [])}
    if method == "POST" and path == "/items":
        return {"statusCode": 201, "body": event["body"], "headers": {"content-type": "application/json"}, "cookies": ["last=1; Path=/"]}
    return {"statusCode": 404, "body": "not found"}


# -- the microfaas app that runs them ------------------------------------------------------------

app = mf.App("lambda_shop")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)

app.function(name="bill", retries=mf.Retries(1, initial_delay=0.05), triggers=[orders.subscribe(batch_size=3, batch_window=0.2)])(
    mf.lambda_handler(bill, event="sqs")
)
app.function(name="count_clicks", triggers=[clicks.consume(batch_size=10, batch_window=0.05)])(
    mf.lambda_handler(count_clicks, event="kinesis")
)
app.function(name="api", triggers=[mf.Http("ANY", "/{proxy+}")])(mf.lambda_handler(api, event="http"))


async def main() -> None:
    async with app.run() as faas:
        print("== SQS: a partial batch response retries only the failed message")
        for order in ({"id": 1, "card": "visa"}, {"id": 2}, {"id": 3, "card": "amex"}):
            await faas.topic("orders").publish(order)
        print("== Kinesis")
        for i in range(6):
            await faas.stream("clicks").put({"page": f"/p{i % 3}"}, key=f"user-{i % 2}")
        await faas.drain(timeout=60)
        for letter in faas.dead_letters("bill"):
            print(f"  dead letter: order {letter.event.data['id']} after {letter.attempts} attempts")

        print("== HTTP (what the gateway sends for GET /items/42 and POST /items)")
        got = await faas.invoke(
            "api",
            mf.HttpRequest(
                method="GET", path="/items/42", headers={"cookie": "session=abc"}, route="ANY /{proxy+}", path_params={"proxy": "items/42"}
            ),
        )
        print(f"  {got.status} {got.body.decode()}")
        made = await faas.invoke(
            "api",
            mf.HttpRequest(
                method="POST",
                path="/items",
                body=b'{"id": 7}',
                headers={"content-type": "application/json"},
                path_params={"proxy": "items"},
            ),
        )
        print(f"  {made.status} {made.body.decode()} set-cookie: {list(made.cookies)}")
        print("  serve it for real with: await faas.serve_http(port=8000)")


if __name__ == "__main__":
    anyio.run(main)
