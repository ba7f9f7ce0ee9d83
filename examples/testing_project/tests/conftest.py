"""microfaas' pytest plugin is loaded by its entry point; here we only choose the backend and the ledger."""

from __future__ import annotations

import pytest
import shop


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # microfaas is tested on asyncio


@pytest.fixture(autouse=True)
def fresh_ledger(tmp_path, monkeypatch):
    """A ledger per test. Autouse fixtures run before `faas`, so the platform's workers
    (which import `shop` afresh) see the variable; this process sees the attribute."""
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("SHOP_LEDGER", str(path))
    monkeypatch.setattr(shop, "LEDGER", path)
