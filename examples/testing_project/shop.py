"""A tiny shop: orders are billed from a topic, clicks counted from a stream, quotes invoked.

The handlers run in other processes, so they write what they did to a ledger file
(named by SHOP_LEDGER), and the tests read it back.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import microfaas as mf

app = mf.App("shop")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)


def ledger_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SHOP_LEDGER") or pathlib.Path(tempfile.gettempdir()) / "shop-ledger.jsonl")


def record(entry: dict[str, object]) -> None:
    with open(ledger_path(), "a") as f:
        f.write(json.dumps(entry) + "\n")


def ledger() -> list[dict[str, object]]:
    path = ledger_path()
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@app.function(triggers=[orders.subscribe(max_retries=2)], retries=mf.Retries(2, initial_delay=0.01, jitter=False))
def bill(msg: mf.Message) -> None:
    if msg.data["amount"] <= 0:
        raise ValueError(f"order {msg.data['id']}: amount must be positive")
    record({"billed": msg.data["id"], "amount": msg.data["amount"], "attempt": msg.attempt})


@app.function(triggers=[clicks.consume(batch_size=10)])
def count_clicks(batch: mf.RecordBatch) -> None:
    for r in batch:
        record({"click": r.key, "page": r.value})


@app.function
def quote(amount: int) -> int:
    return amount * 120 // 100
