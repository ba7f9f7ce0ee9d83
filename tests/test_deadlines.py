"""deadlines.Deadlines: one loop timer per container reports each overdue call once."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from microfaas.runtime.deadlines import Deadlines

pytestmark = pytest.mark.anyio


async def test_overdue_calls_are_reported_once_in_deadline_order_and_finished_ones_never() -> None:
    overdue: list[str] = []
    deadlines = Deadlines(asyncio.get_running_loop(), overdue.append)
    deadlines.add("late", 0.15)
    deadlines.add("early", 0.05)  # earlier than the timer set: the timer moves
    deadlines.add("done", 0.01)
    deadlines.discard("done")
    await anyio.sleep(0.1)
    assert overdue == ["early"]
    await anyio.sleep(0.1)  # re-armed for "late" when "early" fired
    assert overdue == ["early", "late"]
    await anyio.sleep(0.05)
    assert overdue == ["early", "late"]


async def test_close_drops_every_deadline() -> None:
    overdue: list[str] = []
    deadlines = Deadlines(asyncio.get_running_loop(), overdue.append)
    deadlines.add("a", 0.02)
    deadlines.close()
    await anyio.sleep(0.05)
    assert overdue == []
