"""Testing the shop's handlers with the `faas` fixture: publish or put, drain, then assert. No sleeps."""

from __future__ import annotations

import pytest
import shop

import microfaas as mf

pytestmark = [pytest.mark.anyio, pytest.mark.microfaas(app=shop.app)]


async def test_orders_are_billed_and_bad_ones_dead_lettered(faas: mf.Platform) -> None:
    await faas.topic("orders").publish({"id": 1, "amount": 30})
    await faas.topic("orders").publish({"id": 2, "amount": 0})
    await faas.drain(timeout=60)
    assert shop.ledger() == [{"billed": 1, "amount": 30, "attempt": 1}]
    [letter] = faas.dead_letters("bill")
    assert letter.event.data["id"] == 2 and letter.attempts == 3


async def test_clicks_are_counted_in_order_per_user(faas: mf.Platform) -> None:
    for page in ["home", "cart", "pay"]:
        await faas.stream("clicks").put(page, key="ada")
    await faas.drain(timeout=60)
    assert [e["page"] for e in shop.ledger() if e["click"] == "ada"] == ["home", "cart", "pay"]


async def test_the_second_call_is_warm(faas: mf.Platform) -> None:
    assert await shop.quote.invoke(100) == 120
    assert await shop.quote.invoke(10) == 12
    assert [e.kind for e in faas.events(["cold_start", "warm_start"], function="quote")] == ["cold_start", "warm_start"]


async def test_a_crash_while_billing_loses_no_order(faas: mf.Platform) -> None:
    faas.inject("bill", crash=1)
    await faas.topic("orders").publish({"id": 3, "amount": 5})
    await faas.drain(timeout=60)
    assert shop.ledger() == [{"billed": 3, "amount": 5, "attempt": 2}]
    assert [e.kind for e in faas.events(["crash", "retry"], function="bill")] == ["crash", "retry"]
