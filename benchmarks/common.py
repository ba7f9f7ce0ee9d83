"""Small helpers shared by the figure modules."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio


class Contender(Protocol):
    name: str

    async def start(self) -> None: ...
    async def call(self, x: object) -> object: ...
    async def many(self, n: int) -> None: ...
    def worker_pids(self) -> list[int]: ...
    async def close(self) -> None: ...


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def time_calls(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


def settle_allocator() -> None:
    """Free one large block, so that glibc serves the 256 KiB reads of asyncio's transports
    (the floor's and anyio's streams) from its heap rather than mapping and unmapping each.

    glibc raises its mmap threshold the first time a mapped block is freed; until then every
    such read costs a map and an unmap (~12 us here). Whether some earlier code freed one
    would otherwise decide how fast the peers look; microfaas reads 64 KiB and is unaffected.
    """
    block = bytearray(8 << 20)
    del block


# A benchmark module run by ``measure_alone`` logs on the suite's clock (perf_counter's is system-wide).
_T0 = float(os.environ.get("MF_BENCH_T0") or time.perf_counter())


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


async def measure_alone(module: str, quick: bool) -> dict[str, Any]:
    """Run ``python -m <module> [--quick] --json <file>`` in a fresh interpreter and return its figures
    (without the ``ratios`` its CLI adds: ``report.ratios`` computes them from the figures).

    As pyperf runs each benchmark in a worker process of its own: what the phases before
    left in this process (a bigger heap for the cyclic collector to walk, threads, child
    processes) does not weigh on the figure. Its output goes to this process's.

    :raises RuntimeError: the module exited with an error (its traceback is in the output above).
    """
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as folder:
        path = Path(folder) / "figures.json"
        command = [sys.executable, "-m", module, *(["--quick"] if quick else []), "--json", str(path)]
        process = await anyio.run_process(command, stdout=None, stderr=None, check=False, env={**os.environ, "MF_BENCH_T0": repr(_T0)})
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited with status {process.returncode}; its output is above")
        figures: dict[str, Any] = json.loads(path.read_text())
    figures.pop("ratios", None)
    return figures


def print_ratios_and_notes(result: dict[str, Any], json_path: str | None) -> None:
    """The end of a benchmark module run on its own: its ratios and notes, and its JSON if asked."""
    for key, value in result["ratios"].items():
        print(f"{key} = {value:.3g}")
    for note in result["notes"]:
        print(f"note: {note}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")
