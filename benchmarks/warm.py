"""Warm no-op round trip: sequential calls, contenders interleaved per round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import Contender, pct, time_calls


async def measure(contenders: Sequence[Contender], rounds: int, per_round: int, warmup: int = 200) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for c in contenders:
        await time_calls(lambda c=c: c.call(None), warmup)
    for _ in range(rounds):
        for c in contenders:
            samples[c.name] += await time_calls(lambda c=c: c.call(None), per_round)
    return {name: {"p50_us": pct(s, 0.5) * 1e6, "p99_us": pct(s, 0.99) * 1e6, "n": len(s)} for name, s in samples.items()}
