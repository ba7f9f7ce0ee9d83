"""A 10 MiB bytes argument echoed back as the result; contenders interleaved per call."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .common import Contender, pct

SIZE = 10 * 2**20


async def measure(contenders: Sequence[Contender], n: int, size: int = SIZE) -> dict[str, dict[str, Any]]:
    payload = os.urandom(size)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for c in contenders:  # warm-up, and check that the bytes come back intact
        result = await c.call(payload)
        assert result == payload, f"{c.name} did not echo the payload"
    for _ in range(n):
        for c in contenders:
            t0 = time.perf_counter()
            await c.call(payload)
            samples[c.name].append(time.perf_counter() - t0)
    return {
        name: {"p50_ms": statistics.median(s) * 1e3, "p99_ms": pct(s, 0.99) * 1e3, "min_ms": min(s) * 1e3, "n": len(s), "bytes": size}
        for name, s in samples.items()
    }
