"""What the poll windows cost and bound, in time: the figures tests/test_busy_poll.py leaves out.

    python -m benchmarks.poll_windows

- a container's CPU time after calls spaced wider than its busy-poll window (it sleeps:
  near zero) and after back-to-back calls (it polls for the whole window);
- the longest the platform's event loop stalls while one call runs, with the reply poll
  window off and on (on: about the window, never much more), and with two calls in flight
  (nobody polls: no stall).

The tests assert the same behaviour by counting polls; these are the timings, which only a
quiet machine measures well.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable

import anyio
import psutil

import microfaas as mf

app = mf.App("poll-windows")


@app.function(max_containers=1, idle_timeout=None)
def echo(x: int) -> int:
    return x


@app.function(max_containers=1, idle_timeout=None)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(min_containers=2, max_containers=2)
def pair(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


BUSY_POLL_US = 300_000
REPLY_POLL_US = 200_000


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def container_cpu() -> tuple[float, float]:
    """CPU seconds a container used after three spaced calls, and after three back-to-back ones."""
    async with app.run(nodes=mf.LocalNodes(busy_poll_us=BUSY_POLL_US)) as faas:
        await echo.invoke(0)
        (info,) = faas.containers("echo")
        assert info.pid is not None
        await anyio.sleep(0.5)
        before = _cpu_s(info.pid)
        for i in range(3):
            await anyio.sleep(BUSY_POLL_US / 1e6 + 0.1)
            await echo.invoke(i)
        await anyio.sleep(0.5)
        spaced = _cpu_s(info.pid) - before
        before = _cpu_s(info.pid)
        for i in range(3):
            await echo.invoke(i)
        await anyio.sleep(BUSY_POLL_US / 1e6 + 0.5)
        back_to_back = _cpu_s(info.pid) - before
    return spaced, back_to_back


async def _longest_stall(call: Awaitable[object]) -> float:
    """The longest the event loop went without running a 5 ms ticker while ``call`` ran."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.02)
        await call
        tg.cancel_scope.cancel()
    return max(b - a for a, b in itertools.pairwise(ticks))


async def _two_at_once(seconds: float) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(pair.invoke, seconds)
        tg.start_soon(pair.invoke, seconds)


async def loop_stalls(reply_poll_us: int) -> tuple[float, float]:
    """The longest loop stall during a lone 0.4 s call after short ones, and during two 0.3 s calls at once."""
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=reply_poll_us)):
        for _ in range(3):
            await nap.invoke(0.0)
        lone = await _longest_stall(nap.invoke(0.4))
        for _ in range(3):
            await _two_at_once(0.0)
        concurrent = await _longest_stall(_two_at_once(0.3))
    return lone, concurrent


async def main() -> None:
    spaced, back_to_back = await container_cpu()
    print(f"container CPU after spaced calls:        {spaced:.3f} s (busy_poll_us={BUSY_POLL_US})")
    print(f"container CPU after back-to-back calls:  {back_to_back:.3f} s")
    for window in (0, REPLY_POLL_US):
        lone, concurrent = await loop_stalls(window)
        print(f"reply_poll_us={window}: longest loop stall, lone call {lone:.3f} s, two calls in flight {concurrent:.3f} s")


if __name__ == "__main__":
    anyio.run(main)
