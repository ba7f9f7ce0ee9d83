"""Busy polling, on both ends of a container's socket.

A container that just answered polls for its next call before it sleeps, but only while
calls come back to back; the platform polls for the reply of a short call that is the only
one in flight, for a bounded time. Neither ever misses a frame.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time

import anyio
import psutil
import pytest

import microfaas as mf
from microfaas import protocol
from microfaas.worker import Channel

CALL = protocol.CallRequest(invocation_id="inv-1", attempt=1, timeout_s=None, cold_start=False, args=b"args")
FRAME = protocol.encode(CALL)


def _send_later(sock: socket.socket, delay: float, buffers: list[bytes | bytearray | memoryview] | None) -> threading.Thread:
    def send() -> None:
        time.sleep(delay)
        if buffers is None:
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendmsg(buffers)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("poll_s", "delay"),
    [(5.0, 0.05), (0.01, 0.2), (0.0, 0.05)],
    ids=["arrives-while-polling", "arrives-after-the-poll-gave-up", "no-polling"],
)
def test_a_frame_is_received_whether_it_comes_during_the_poll_or_after(poll_s: float, delay: float) -> None:
    platform_end, container_end = socket.socketpair()
    with platform_end, container_end:
        sender = _send_later(platform_end, delay, FRAME)
        message = Channel(container_end).recv(poll_s)
        sender.join()
    assert message == CALL


def test_a_channel_closed_while_polling_ends_the_container() -> None:
    platform_end, container_end = socket.socketpair()
    with platform_end, container_end:
        sender = _send_later(platform_end, 0.05, None)
        assert Channel(container_end).recv(5.0) is None
        sender.join()


app = mf.App("busy-poll")


@app.function(max_containers=1, idle_timeout=None)
def echo(x: int) -> int:
    return x


@app.function(max_containers=2, idle_timeout=None)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


POLL_US = 300_000  # long enough to see in the container's CPU time


@pytest.mark.anyio
async def test_a_container_polls_after_back_to_back_calls_and_not_after_spaced_ones() -> None:
    async with app.run(nodes=mf.LocalNodes(busy_poll_us=POLL_US)) as faas:
        await echo.invoke(0)
        (info,) = faas.containers("echo")
        assert info.pid is not None
        await anyio.sleep(0.5)  # whatever it polled after its first call is over

        # Calls further apart than the polling window: it sleeps between them.
        before = _cpu_s(info.pid)
        for i in range(3):
            await anyio.sleep(POLL_US / 1e6 + 0.1)
            assert await echo.invoke(i) == i
        await anyio.sleep(0.5)
        spaced = _cpu_s(info.pid) - before

        # Back to back: after the last one it polls for the whole window, then sleeps.
        before = _cpu_s(info.pid)
        for i in range(3):
            assert await echo.invoke(i) == i
        await anyio.sleep(POLL_US / 1e6 + 0.5)
        back_to_back = _cpu_s(info.pid) - before

    assert spaced < 0.1, f"the container used {spaced:.3f} s of CPU between spaced calls"
    assert back_to_back > 0.1, f"the container used only {back_to_back:.3f} s of CPU after back-to-back calls"


@pytest.mark.parametrize("option", ["busy_poll_us", "reply_poll_us"])
def test_poll_windows_must_not_be_negative(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be an int >= 0"):
        mf.LocalNodes(**{option: -1})


async def _longest_stall(call: object) -> float:
    """The longest the event loop went without running a 5 ms ticker while ``call`` ran."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.02)
        await call  # type: ignore[misc]
        tg.cancel_scope.cancel()
    return max(b - a for a, b in itertools.pairwise(ticks))


async def _two_at_once(seconds: float) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(nap.invoke, seconds)
        tg.start_soon(nap.invoke, seconds)


REPLY_POLL_US = 200_000


@pytest.mark.anyio
@pytest.mark.parametrize("reply_poll_us", [0, REPLY_POLL_US])
async def test_the_platform_polls_for_a_lone_short_calls_reply_for_at_most_its_window(reply_poll_us: int) -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=reply_poll_us)):
        for _ in range(3):
            assert await nap.invoke(0.0) == 0.0  # short calls: the next one is polled for
        stall = await _longest_stall(nap.invoke(0.4))
        await _two_at_once(0.0)  # both containers up
        for _ in range(3):
            await nap.invoke(0.0)
        concurrent = await _longest_stall(_two_at_once(0.3))  # two calls in flight: nobody polls
    if reply_poll_us:
        # The loop was held while it polled, and no longer than the window.
        assert 0.18 <= stall < 0.35, stall
    else:
        assert stall < 0.1, stall
    assert concurrent < 0.1, concurrent


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.02])
async def test_replies_before_during_and_after_the_poll_window_all_arrive(seconds: float) -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=5_000)):
        for _ in range(5):
            assert await nap.invoke(seconds) == seconds
            assert await echo.invoke(7) == 7


@app.function(max_containers=1, idle_timeout=None)
def blob_or_crash(kind: str) -> bytes:
    if kind == "crash":
        os._exit(3)
    return b"x" * (2 << 20) if kind == "big" else b"small"


@pytest.mark.anyio
async def test_a_large_reply_or_a_crash_after_polled_short_calls_is_handled() -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=50_000)):
        for kind in ["small", "small", "small", "big", "small", "small", "small"]:
            assert await blob_or_crash.invoke(kind) == (b"x" * (2 << 20) if kind == "big" else b"small")
        with pytest.raises(mf.ContainerCrashed):
            await blob_or_crash.invoke("crash")
        assert await blob_or_crash.invoke("small") == b"small"
