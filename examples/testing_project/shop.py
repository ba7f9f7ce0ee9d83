"""A tiny shop on microfaas: orders are billed from a topic, clicks counted from a stream.

The handlers write what they did to a ledger file (they run in other processes,
so a file is how the tests see their effects). ``tests/test_shop.py`` tests it
with the microfaas pytest plugin.
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

LEDGER = pathlib.Path(os.environ.get("SHOP_LEDGER", pathlib.Path(tempfile.gettempdir()) / "shop-ledger.jsonl"))


def _record(entry: dict[str, object]) -> None:
    with open(LEDGER, "a") as f:
        f.write(json.dumps(entry) + "\n")


def ledger() -> list[dict[str, object]]:
    return [json.loads(line) for line in LEDGER.read_text().splitlines()] if LEDGER.exists() else []


@app.function(triggers=[orders.subscribe(max_retries=2)], retries=mf.Retries(2, initial_delay=0.01, jitter=False))
def bill(msg: mf.Message) -> None:
    if msg.data["amount"] <= 0:
        raise ValueError(f"order {msg.data['id']}: amount must be positive")
    _record({"billed": msg.data["id"], "amount": msg.data["amount"], "attempt": msg.attempt})


@app.function(triggers=[clicks.consume(batch_size=10)])
def count_clicks(batch: mf.RecordBatch) -> None:
    for record in batch:
        _record({"click": record.key, "page": record.value})


@app.function
def quote(amount: int) -> int:
    return amount * 120 // 100
