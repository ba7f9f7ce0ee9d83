"""Busy polling, on both ends of a container's socket.

A container that just answered polls for its next call before it sleeps, but only while
calls come back to back; the platform polls for the reply of a short call that is the only
one in flight, for a bounded time. Neither ever misses a frame. The tests count polls
(``worker.polls_begun`` inside a container, ``reply_polls`` on the platform's side); what
polling costs in CPU time and event-loop stalls is measured in benchmarks/poll_windows.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import anyio
import pytest

import microfaas as mf
from microfaas import protocol, worker
from microfaas.nodes import container
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


@app.function(max_containers=1, idle_timeout=None)
def polls_so_far() -> int:
    """How many times this container began to poll for a call before this one."""
    from microfaas import worker

    return worker.polls_begun


@app.function(max_containers=2, idle_timeout=None)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.anyio
async def test_a_container_polls_after_back_to_back_calls() -> None:
    # A window far longer than any round trip here: every call but the first two comes back to back.
    async with app.run(nodes=mf.LocalNodes(busy_poll_us=10_000_000)):
        # After the first call it sleeps (no call came before it); from the second on, it polls.
        assert [await polls_so_far.invoke() for _ in range(5)] == [0, 0, 1, 2, 3]


@pytest.mark.anyio
async def test_a_container_does_not_poll_after_calls_further_apart_than_its_window() -> None:
    async with app.run(nodes=mf.LocalNodes(busy_poll_us=20_000)):
        counts = []
        for _ in range(4):
            counts.append(await polls_so_far.invoke())
            await anyio.sleep(0.05)  # more than the window between a reply and the next call
    assert counts == [0, 0, 0, 0]


@pytest.mark.anyio
async def test_a_container_never_polls_with_no_window() -> None:
    async with app.run(nodes=mf.LocalNodes(busy_poll_us=0)):
        assert [await polls_so_far.invoke() for _ in range(4)] == [0, 0, 0, 0]


@pytest.mark.parametrize("option", ["busy_poll_us", "reply_poll_us"])
def test_poll_windows_must_not_be_negative(option: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be an int >= 0"):
        mf.LocalNodes(**{option: -1})


@app.function(min_containers=2, max_containers=2)
def pair(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def _two_at_once(seconds: float) -> None:
    """One call on each of ``pair``'s two containers."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(pair.invoke, seconds)
        tg.start_soon(pair.invoke, seconds)


class ReplyPolls:
    """Counts the platform's polls for a reply (on this thread's event loop) since the last look."""

    def __init__(self) -> None:
        self._seen = container._local.reply_polls

    def since(self) -> int:
        now = container._local.reply_polls
        new, self._seen = now - self._seen, now
        return new


WINDOW_US = 500_000  # a call "answers quickly" when it ran under twice this


@pytest.mark.anyio
async def test_the_platform_polls_for_the_reply_of_a_lone_call_after_short_ones() -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=WINDOW_US)):
        await nap.invoke(0.0)  # the first call: nothing known of its duration, so no poll
        polls = ReplyPolls()
        for _ in range(3):
            assert await nap.invoke(0.0) == 0.0
        assert polls.since() == 3
        # Longer than the window: the poll gives up, and the reply still arrives (through the loop's reader).
        assert await nap.invoke(1.2) == 1.2
        assert polls.since() == 1
        # The last call ran longer than twice the window: the next is not polled for; the one after is.
        assert await nap.invoke(0.0) == 0.0
        assert polls.since() == 0
        assert await nap.invoke(0.0) == 0.0
        assert polls.since() == 1
        # Two calls in flight: nobody polls, however short their calls were.
        for seconds in (0.0, 0.0, 0.2):
            await _two_at_once(seconds)
        assert polls.since() == 0
        # The only one in flight again: polled for.
        assert await nap.invoke(0.0) == 0.0
        assert polls.since() == 1


@pytest.mark.anyio
async def test_the_platform_never_polls_for_a_reply_with_no_window() -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=0)):
        polls = ReplyPolls()
        for _ in range(5):
            assert await nap.invoke(0.0) == 0.0
        assert polls.since() == 0


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


def _busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``sched_yield`` in this process gives the CPU away for 2 ms, as on a machine whose
    other processes want every CPU."""
    monkeypatch.setattr(os, "sched_yield", lambda: time.sleep(0.002))


def test_a_poll_whose_yield_gave_the_cpu_away_ends_and_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    _busy_machine(monkeypatch)
    platform_end, container_end = socket.socketpair()
    with platform_end, container_end:
        container_end.setblocking(False)
        started = time.monotonic()
        assert worker._poll(container_end, 5.0) is None  # nothing came: it gave up, not ran out its 5 s
        assert time.monotonic() - started < 2.5

        def yield_while_the_frame_arrives() -> None:
            platform_end.sendall(b"".join(FRAME))  # arrives while the first yield is away
            time.sleep(0.002)

        monkeypatch.setattr(os, "sched_yield", yield_while_the_frame_arrives)
        assert worker._poll(container_end, 5.0) is not None  # the one more look after the yield finds it


@pytest.mark.anyio
async def test_the_platform_stops_polling_for_a_reply_when_its_yield_gave_the_cpu_away(monkeypatch: pytest.MonkeyPatch) -> None:
    async with app.run(nodes=mf.LocalNodes(reply_poll_us=WINDOW_US)):
        await nap.invoke(0.0)
        await nap.invoke(0.0)
        _busy_machine(monkeypatch)
        contended = container._local.polls_contended
        for _ in range(3):
            assert await nap.invoke(0.05) == 0.05  # longer than a yield: the reply comes after the poll ended
        assert container._local.polls_contended - contended == 3
