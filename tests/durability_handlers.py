"""The handlers of tests/test_durability.py, in a module that imports nothing heavy.

A node's zygote imports the module that defines an app's functions before it forks
(docs/lifecycle.md, "Preloading"), and every platform start waits for it. Defined in the
test module, the handlers made each zygote import pytest and conftest: about a second
per platform, and these tests start two or three platforms each. Here the zygote imports
only this module (and what the handlers use when they run).
"""

from __future__ import annotations

import time

import microfaas as mf
from handlerlog import HandlerLog

LOG = HandlerLog("durability")
FIXED = HandlerLog("durability-fixed")  # a line here makes `flaky` succeed


def slow_first(x: int) -> dict[str, int]:
    """Hangs on its first attempt (the test stops the platform under it); returns on the next."""
    ctx = mf.context()
    LOG.write(f"slow_first {x} attempt {ctx.attempt}")
    if ctx.attempt == 1:
        time.sleep(60)
    return {"x": x, "attempt": ctx.attempt}


def double(x: int) -> int:
    return 2 * x


def flaky(x: int) -> int:
    LOG.write(f"flaky {x}")
    if not FIXED.lines():
        raise RuntimeError(f"cannot handle {x} yet")
    return x


def short_lived(x: int) -> None:
    time.sleep(60)


def ship(batch: list[mf.Message]) -> None:
    """Hangs on attempt 1 of a batch holding message 0 (the test stops the platform under it)."""
    for msg in batch:
        LOG.write(f"ship {msg.data} attempt {msg.attempt}")
    if any(msg.data == 0 and msg.attempt == 1 for msg in batch):
        time.sleep(60)


def bill(msg: mf.Message) -> None:
    LOG.write(f"bill {msg.data}")
    if not FIXED.lines():
        raise RuntimeError(f"cannot bill {msg.data} yet")


def count(batch: mf.RecordBatch) -> None:
    """Hangs on value 5 until FIXED has a line (the test stops the platform under it first)."""
    for r in batch:
        LOG.write(f"count {r.key} {r.shard} {r.sequence} {r.value}")
        if r.value == 5 and not FIXED.lines():
            time.sleep(60)


def square(x: int) -> int:
    """Hangs on 3 until FIXED has a line."""
    LOG.write(f"square {x}")
    if x == 3 and not FIXED.lines():
        time.sleep(60)
    return x * x
