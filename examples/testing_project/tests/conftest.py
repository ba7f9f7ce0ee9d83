"""The plugin comes with microfaas; this file picks the backend and gives each test its own ledger."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # microfaas runs on asyncio


@pytest.fixture(autouse=True)
def fresh_ledger(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Autouse fixtures run before `faas`, so the workers it starts inherit the variable.
    monkeypatch.setenv("SHOP_LEDGER", str(tmp_path / "ledger.jsonl"))
