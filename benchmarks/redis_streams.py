"""Redis Streams: entries per second through mf.RedisStream and a no-op handler, against a bare consumer loop.

    python -m benchmarks.redis_streams [--quick] [--json PATH]     (this figure alone; also part of python -m benchmarks)

Both read the same number of entries (each one small field), pre-filled in a stream of their
own on one redis-server started for the run (loopback, no persistence), through a consumer group,
100 entries at a time:
- bare: redis-py's asyncio client in a loop, ``XREADGROUP COUNT 100`` then ``XACK`` of the batch,
  in this process: the ceiling for any consumer written with that client.
- microfaas: ``mf.RedisStream(batch_size=100)`` feeding a no-op function in one warm container:
  each batch is read, pickled, run in the container, and acknowledged. Its clock starts at the
  first batch's call (a lifecycle event) and stops once the group has nothing pending and no lag.

Rounds alternate between the two; each figure is the median round. Skipped with a note when
redis-server or the ``connectors`` extra is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import microfaas as mf
from benchmarks.common import log, print_ratios_and_notes

BATCH = 100


def noop(batch: object) -> None:
    return None


def available() -> str | None:
    """None when the figure can be measured, else why not."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis (the client) is not installed: pip install 'microfaas[connectors]'"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return None


class Server:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tempfile.mkdtemp(prefix="mf-bench-redis-")
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", self.folder], stdout=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                with redis.Redis.from_url(self.url) as r:
                    r.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


async def fill(client: Any, stream: str, n: int) -> None:
    for start in range(0, n, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(stream, {"n": str(i)})
            await pipe.execute()


async def bare(client: Any, stream: str, n: int) -> float:
    await client.xgroup_create(stream, "bare", id="0")
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        reply = await client.xreadgroup("bare", "c", {stream: ">"}, count=BATCH, block=1000)
        for _, entries in reply:
            await client.xack(stream, "bare", *[entry_id for entry_id, _ in entries])
            seen += len(entries)
    return time.perf_counter() - t0


async def settled(client: Any, stream: str, group: str) -> bool:
    info = next(g for g in await client.xinfo_groups(stream) if g["name"] in (group, group.encode()))
    return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0


async def through_microfaas(url: str, client: Any, stream: str, n: int) -> float:
    app = mf.App("bench-redis")
    app.function(noop, name="noop", min_containers=1, triggers=[mf.RedisStream(url, stream=stream, batch_size=BATCH)])
    async with app.run() as faas:
        while not await settled(client, stream, "microfaas"):  # noqa: ASYNC110 - the state is on the server: polled
            await asyncio.sleep(0.002)
        done = time.monotonic()
        first = min(e.time for e in faas.events(kind=["cold_start", "warm_start"], function="noop"))
    return done - first


async def measure(quick: bool) -> dict[str, Any]:
    why_not = available()
    if why_not is not None:
        log(f"note: redis streams skipped ({why_not})")
        return {"skipped": why_not, "notes": [f"redis streams skipped: {why_not}"]}
    import redis.asyncio

    n, rounds = (20_000, 3) if quick else (50_000, 5)
    server = Server()
    seconds: dict[str, list[float]] = {"bare": [], "microfaas": []}
    try:
        server.wait_ready()
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            for r in range(rounds):
                log(f"redis streams: {n} entries, round {r + 1}/{rounds}")
                await fill(client, f"bare-{r}", n)
                await fill(client, f"mf-{r}", n)
                seconds["bare"].append(await bare(client, f"bare-{r}", n))
                seconds["microfaas"].append(await through_microfaas(server.url, client, f"mf-{r}", n))
        finally:
            await client.aclose()
    finally:
        server.close()
    out: dict[str, Any] = {"n": n, "rounds": rounds, "batch_size": BATCH, "notes": []}
    for name, times in seconds.items():
        out[name] = {"entries_per_s": n / statistics.median(times), "best_entries_per_s": n / min(times)}
    return out


def ratios(figures: dict[str, Any]) -> dict[str, float]:
    if figures.get("skipped"):
        return {}
    return {"redis_stream_vs_bare": figures["microfaas"]["entries_per_s"] / figures["bare"]["entries_per_s"]}


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_streams", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer entries and rounds")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args()
    result = asyncio.run(measure(args.quick))
    result["ratios"] = ratios(result)
    for name in ("bare", "microfaas"):
        if name in result:
            print(f"{name:>9}: {result[name]['entries_per_s']:8.0f} entries/s (best {result[name]['best_entries_per_s']:.0f})")
    print_ratios_and_notes(result, args.json)


if __name__ == "__main__":
    cli()
