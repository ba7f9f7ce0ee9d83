"""Busy polling: a container that just answered polls for its next call before it sleeps,
but only while calls come back to back, and it never misses a frame either way."""

from __future__ import annotations

import socket
import threading
import time

import anyio
import psutil
import pytest

import microfaas as mf
from microfaas import protocol
from microfaas.worker import Channel

FRAME = protocol.encode(("call", "inv-1", 1, None, False), b"args")


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
        frame = Channel(container_end).recv(poll_s)
        sender.join()
    assert frame is not None
    meta, blob = frame
    assert meta == ("call", "inv-1", 1, None, False)
    assert bytes(blob) == b"args"


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


def test_busy_poll_us_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="busy_poll_us must be an int >= 0"):
        mf.LocalNodes(busy_poll_us=-1)
