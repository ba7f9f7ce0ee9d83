"""The same kind of tests for unittest: `python -m unittest discover tests` runs them (and so does pytest)."""

from __future__ import annotations

import os
import tempfile
import unittest
from unittest import mock

import shop

from microfaas.testing import running


class ShopTest(unittest.IsolatedAsyncioTestCase):
    def setUp(self) -> None:
        ledger_dir = self.enterContext(tempfile.TemporaryDirectory())
        self.enterContext(mock.patch.dict(os.environ, {"SHOP_LEDGER": os.path.join(ledger_dir, "ledger.jsonl")}))

    async def test_orders_are_billed(self) -> None:
        async with running(shop.app) as faas:  # entered and left in the test's own task
            await faas.topic("orders").publish({"id": 1, "amount": 30})
            await faas.drain(timeout=60)
        self.assertEqual(shop.ledger(), [{"billed": 1, "amount": 30, "attempt": 1}])

    async def test_the_second_call_is_warm(self) -> None:
        async with running(shop.app) as faas:
            self.assertEqual(await shop.quote.invoke(100), 120)
            self.assertEqual(await shop.quote.invoke(10), 12)
            kinds = [e.kind for e in faas.events(["cold_start", "warm_start"], function="quote")]
        self.assertEqual(kinds, ["cold_start", "warm_start"])


if __name__ == "__main__":
    unittest.main()
