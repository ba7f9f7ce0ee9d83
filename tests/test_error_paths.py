"""Error paths: containers and zygotes that misbehave, payloads past the socket buffer or the
frame limit, callers that leave, and a platform run twice. Each ends in a precise error or a
clean recovery, never a hang or an internal exception reaching the caller.
"""

from __future__ import annotations

import gc
import os
import pathlib
import select
import signal
import socket
import threading
import time

import anyio
import anyio.lowlevel
import cloudpickle
import psutil
import pytest

import microfaas as mf
import misbehaving
from conftest import Gate, HandlerLog, pid_alive, wait_until
from microfaas import functions, pool, protocol, worker
from microfaas import lifecycle as ev
from microfaas.nodes.container import LocalContainer

pytestmark = pytest.mark.anyio

app = mf.App("error-paths")


def _channel() -> worker.Channel:
    """The channel of the container this runs in."""
    return next(o for o in gc.get_objects() if isinstance(o, worker.Channel))


def _send_garbage() -> None:
    _channel().sock.sendall(b"\xff" * 64)  # a header of an unknown protocol version


def _send_unknown_kind() -> None:
    # A well-formed message, but not the Ready the platform waits for.
    _channel().send(protocol.ResultReply(invocation_id="none", value=b""))


@app.function(timeout=60)
def garbage() -> None:
    _send_garbage()
    time.sleep(30)


@app.function(timeout=60)
def unknown_kind() -> None:
    # A well-formed message that is no answer to a call.
    _channel().send(protocol.Ready(pid=os.getpid(), load_s=0.0, init_s=0.0))
    time.sleep(30)


@app.function(init=_send_garbage)
def garbage_before_ready() -> None:
    pass


@app.function(init=_send_unknown_kind)
def unknown_kind_before_ready() -> None:
    pass


def _exit_3() -> None:
    os._exit(3)


@app.function(init=_exit_3)
def dies_before_ready() -> None:
    pass


@app.function
def echo(x: object) -> object:
    return x


@app.function(concurrency=4, max_containers=1)
def size(blob: bytes) -> int:
    return len(blob)


# -- containers that break the protocol or die early ------------------------------------------


async def test_a_container_that_sends_garbage_is_killed_and_its_call_is_a_crash() -> None:
    async with app.run() as faas:
        with anyio.fail_after(30), pytest.raises(mf.ContainerCrashed, match="garbage: container c-1"):
            await garbage.invoke()
        [exited] = faas.events(kind=ev.CONTAINER_EXITED, function="garbage")
        assert exited.detail["reason"] == "protocol_error"
        assert await echo.invoke(1) == 1


async def test_a_reply_of_an_unknown_kind_is_a_crash_not_a_hang() -> None:
    async with app.run() as faas:
        with anyio.fail_after(30), pytest.raises(mf.ContainerCrashed):
            await unknown_kind.invoke()
        [exited] = faas.events(kind=ev.CONTAINER_EXITED, function="unknown_kind")
        assert exited.detail["reason"] == "protocol_error"


@pytest.mark.parametrize(
    ("handle", "message"),
    [
        (garbage_before_ready, "the container spoke garbage before it was ready"),
        (unknown_kind_before_ready, "the container sent ResultReply before it was ready"),
        (dies_before_ready, "the container process exited with code 3 before it was ready"),
    ],
    ids=["garbage", "unknown-kind", "dies"],
)
async def test_a_container_that_is_not_ready_properly_is_a_cold_start_failure(handle: mf.FunctionHandle, message: str) -> None:
    async with app.run() as faas:
        with anyio.fail_after(30), pytest.raises(mf.ColdStartFailed, match=message):
            await handle.invoke()
        assert faas.containers() == []
        assert await echo.invoke(1) == 1


def test_a_container_refuses_a_frame_of_an_unknown_kind() -> None:
    platform_end, container_end = socket.socketpair()
    bundle = worker.Bundle(name="echo", fn=lambda x: x, init=None, memory_mb=128, concurrency=1)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            worker.serve(container_end, "c-9", cloudpickle.dumps(bundle))
        except BaseException as exc:
            failures.append(exc)

    with platform_end, container_end:
        server = threading.Thread(target=serve)
        server.start()
        decoder = protocol.FrameDecoder()
        decoder.feed(platform_end.recv(protocol.READ_SIZE))
        assert type(decoder.next_message()) is protocol.Ready
        # A well-formed message of a kind the container never takes.
        platform_end.sendall(b"".join(protocol.encode(protocol.Ready(pid=1, load_s=0.0, init_s=0.0))))
        server.join(30)
    assert not server.is_alive()
    [error] = failures
    assert isinstance(error, protocol.ProtocolError)
    assert str(error) == "container c-9 got unexpected message Ready"


# -- payloads past the socket buffer and past the frame limit -------------------------------


async def test_arguments_larger_than_the_socket_buffer_arrive_whole() -> None:
    blobs = [bytes([i]) * (8 << 20) for i in range(4)]  # 8 MiB each; a socket buffer holds a few hundred KiB
    sizes: list[int] = []
    with anyio.fail_after(60):
        async with app.run():
            assert await echo.invoke(blobs[0]) == blobs[0]
            # Four at once into one container: each frame waits its turn behind the one being written.
            async with anyio.create_task_group() as tg:

                async def one(blob: bytes) -> None:
                    sizes.append(await size.invoke(blob))

                for blob in blobs:
                    tg.start_soon(one, blob)
    assert sizes == [8 << 20] * 4


async def test_a_function_whose_bundle_is_larger_than_the_socket_buffer_starts() -> None:
    local = mf.App("big-bundle")
    table = bytes(range(256)) * (16 << 12)  # 4 MiB, shipped with the function by value

    @local.function
    def lookup(i: int) -> int:
        return table[i]

    with anyio.fail_after(60):
        async with local.run():
            assert await lookup.invoke(300) == 300 % 256


@app.function(max_containers=1, idle_timeout=None, timeout=60)
def crash_when(x: object) -> int:
    """Holds on a gate (``("hold", path)``), then exits; with bytes, returns their size."""
    if isinstance(x, tuple):
        with open(x[1], "rb", buffering=0) as fifo:
            fifo.read(1)
        os._exit(5)
    return len(x)  # type: ignore[arg-type]


async def test_a_large_call_being_written_to_a_container_that_dies_runs_on_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(functions, "PIPELINE_MAX_CALL_S", 3600.0)  # the large call is queued in the busy container
    queued_sizes: list[int] = []  # the arguments of each call sent to wait in a busy container
    start_call = LocalContainer.start_call

    def spy(self, outcome, request, *, queued=False):  # type: ignore[no-untyped-def]
        if queued:
            queued_sizes.append(len(request.args))
        return start_call(self, outcome, request, queued=queued)

    monkeypatch.setattr(LocalContainer, "start_call", spy)
    gate = Gate(tmp_path / "gate")
    try:
        async with app.run() as faas:
            assert await crash_when.invoke(b"") == 0
            outcomes: dict[str, object] = {}

            async def one(key: str, x: object) -> None:
                try:
                    outcomes[key] = await crash_when.invoke(x)
                except mf.FaaSError as exc:
                    outcomes[key] = exc

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(one, "crash", gate.hold)
                    await wait_until(lambda: faas.containers("crash_when")[0].state == mf.ContainerState.BUSY)
                    tg.start_soon(one, "large", b"x" * (32 << 20))  # far more than the socket takes while nobody reads
                    await anyio.wait_all_tasks_blocked()
                    gate.release()
            assert len(queued_sizes) == 1 and queued_sizes[0] > 32 << 20  # it was being written into the dying container
            assert isinstance(outcomes["crash"], mf.ContainerCrashed)
            assert outcomes["large"] == 32 << 20
    finally:
        gate.close()


async def test_arguments_over_the_frame_limit_are_a_serialization_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME", 1 << 16)
    async with app.run() as faas:
        assert await echo.invoke(b"x" * 1000) == b"x" * 1000
        with pytest.raises(
            mf.SerializationError, match=r"echo: the arguments pickle to \d+ bytes, more than one frame carries \(65536 bytes\)"
        ):
            await echo.invoke(b"x" * (1 << 16))
        assert await echo.invoke(2) == 2
        assert faas.stats("echo").containers_started == 1


# -- stopping what does not stop when asked --------------------------------------------------


LOG = HandlerLog("error-paths")


@app.function(timeout=120)
def ignores_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    LOG.write(f"ignoring SIGTERM in {os.getpid()}")
    time.sleep(120)


async def test_a_container_that_ignores_sigterm_is_killed_when_the_platform_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned: the container is this process's child, and no zygote kills it on the way out.
    monkeypatch.setattr(pool, "STOP_GRACE", 0.2)
    LOG.clear()
    with anyio.fail_after(60):
        async with app.run(nodes=mf.LocalNodes(start_method="spawn")) as faas, anyio.create_task_group() as tg:
            tg.start_soon(ignores_sigterm.invoke)
            await wait_until(lambda: LOG.lines() != [])
            [info] = faas.containers("ignores_sigterm")
            assert LOG.lines() == [f"ignoring SIGTERM in {info.pid}"]
            tg.cancel_scope.cancel()
    LOG.clear()
    assert info.pid is not None and not pid_alive(info.pid)
    exits = [e.detail["returncode"] for e in faas.events(kind=ev.CONTAINER_EXITED, function="ignores_sigterm")]
    assert exits == [-signal.SIGKILL]


@app.function(timeout=60, idle_timeout=None)
def graceful(note: str) -> int:
    def on_sigterm(signum: int, frame: object) -> None:
        time.sleep(0.3)  # cleaning up takes a while, well within the grace
        with open(note, "w") as f:
            f.write(f"SIGTERM in {os.getpid()}")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    return os.getpid()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
async def test_containers_get_sigterm_and_a_grace_when_the_platform_stops(start_method: str, tmp_path: pathlib.Path) -> None:
    note = tmp_path / "note"
    with anyio.fail_after(60):
        async with app.run(nodes=mf.LocalNodes(start_method=start_method)):
            pid = await graceful.invoke(str(note))
    assert not pid_alive(pid)
    assert note.read_text() == f"SIGTERM in {pid}"


def _zygotes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "microfaas.nodes.zygote" in " ".join(p.cmdline())]


async def test_a_zygote_that_ignores_sigterm_is_killed_when_the_platform_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "STOP_GRACE", 0.2)
    monkeypatch.setenv("MICROFAAS_TEST_ZYGOTE", "stubborn")
    monkeypatch.setenv("MICROFAAS_TEST_PLATFORM", str(os.getpid()))
    with anyio.fail_after(60):
        async with misbehaving.app.run():
            assert await misbehaving.pid.invoke() > 0
            [zygote] = _zygotes()
    assert not pid_alive(zygote.pid)


# -- zygotes that fail ---------------------------------------------------------------------------


@pytest.mark.parametrize("min_nodes", [0, 1], ids=["acquired-for-the-call", "acquired-at-start"])
async def test_a_node_whose_zygote_fails_to_start_fails_its_cold_starts(min_nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFAAS_TEST_ZYGOTE", "exit")
    monkeypatch.setenv("MICROFAAS_TEST_PLATFORM", str(os.getpid()))
    with anyio.fail_after(60):
        async with misbehaving.app.run(nodes=mf.LocalNodes(min_nodes=min_nodes)) as faas:
            with pytest.raises(mf.ColdStartFailed, match=r"node (n-\d+) could not be acquired: node \1: the zygote exited"):
                await misbehaving.pid.invoke()
            # Held from the start, the first node failed before the call came; the call's own node failed too.
            failed = [e.node for e in faas.events(kind=ev.NODE_FAILED)]
            assert failed == [f"n-{i}" for i in range(1, min_nodes + 2)]
            monkeypatch.delenv("MICROFAAS_TEST_ZYGOTE")
            assert await misbehaving.pid.invoke() > 0  # the next node comes up
            assert [c.node for c in faas.containers()] == [f"n-{min_nodes + 2}"]
    assert _zygotes() == []


async def test_a_zygote_left_with_a_thread_after_preloading_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFAAS_TEST_ZYGOTE", "thread")
    monkeypatch.setenv("MICROFAAS_TEST_PLATFORM", str(os.getpid()))
    with anyio.fail_after(60):
        async with misbehaving.app.run() as faas:
            assert await misbehaving.pid.invoke() > 0
            [replaced] = faas.events(kind=ev.ZYGOTE_REPLACED)
            assert replaced.detail["reason"] == "it had 2 threads after preloading"
            [zygote] = _zygotes()
            assert zygote.pid != replaced.detail["pid"] and zygote.num_threads() == 1
    assert _zygotes() == []


@app.function(timeout=60)
def sleeps(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def test_a_zygote_that_dies_takes_its_running_containers_with_it() -> None:
    async with app.run() as faas:
        await sleeps.invoke(0)
        [zygote] = _zygotes()
        async with anyio.create_task_group() as tg:
            outcome: list[object] = []

            async def running() -> None:
                try:
                    outcome.append(await sleeps.invoke(30))
                except mf.FaaSError as exc:
                    outcome.append(exc)

            tg.start_soon(running)
            await wait_until(lambda: [c.state for c in faas.containers("sleeps")] == [mf.ContainerState.BUSY])
            zygote.kill()
        [crash] = outcome
        assert isinstance(crash, mf.ContainerCrashed)
        assert faas.containers("sleeps") == []


async def test_after_its_zygote_dies_a_node_is_replaced() -> None:
    async with app.run() as faas:
        await sleeps.invoke(0)
        [zygote] = _zygotes()
        zygote.kill()
        await wait_until(lambda: faas.containers("sleeps") == [])
        with anyio.fail_after(30):
            assert await sleeps.invoke(0) > 0
        [replaced] = faas.events(kind=ev.ZYGOTE_REPLACED)
        assert replaced.detail["pid"] == zygote.pid
        assert replaced.detail["reason"] == "the zygote exited"
        [new] = _zygotes()
        assert new.pid != zygote.pid


# -- callers that leave, platforms run twice -------------------------------------------------


@app.function(max_containers=1, idle_timeout=None, timeout=60)
def gated(x: object) -> object:
    if isinstance(x, tuple):
        with open(x[1], "rb", buffering=0) as fifo:
            fifo.read(1)
    return x


async def test_a_slot_given_to_a_caller_that_just_left_is_given_back(tmp_path: pathlib.Path) -> None:
    gate = Gate(tmp_path / "gate")
    try:
        async with app.run() as faas:
            assert await gated.invoke(0) == 0
            [info] = faas.containers("gated")
            [handle] = [o for o in gc.get_objects() if isinstance(o, LocalContainer) and o.pid == info.pid]
            async with anyio.create_task_group() as tg:
                tg.start_soon(gated.invoke, gate.hold)  # takes the only slot
                await wait_until(lambda: faas.containers("gated")[0].state == mf.ContainerState.BUSY)
                waiter = anyio.CancelScope()

                async def wait_for_the_slot() -> None:
                    with waiter:
                        await gated.invoke(1)

                tg.start_soon(wait_for_the_slot)
                await anyio.wait_all_tasks_blocked()  # it waits in the scheduler
                gate.release()
                # Block the loop until the first call's reply is in the socket, unread; then yield
                # once, so that the loop sees the socket readable and queues its reader behind us.
                assert select.select([handle._fd], [], [], 30)[0]
                await anyio.lowlevel.checkpoint()
                # Leave now: the reader runs before the waiter hears of its cancellation, so the
                # freed slot goes to a caller who is gone, and must come back.
                waiter.cancel()
            with anyio.fail_after(30):  # a slot kept for the gone caller would hang this
                assert await gated.invoke(2) == 2
            assert faas.containers("gated")[0].state == mf.ContainerState.IDLE
    finally:
        gate.close()


async def test_a_platform_runs_once_and_an_app_runs_one_platform_at_a_time() -> None:
    platform = app.run()
    async with platform:
        with pytest.raises(RuntimeError, match="app 'error-paths' is already running"):
            async with app.run():
                pass
        assert await echo.invoke(1) == 1  # the refused second run left the first alone
    with pytest.raises(RuntimeError, match=r"a Platform runs once; call app.run\(\) again for a new one"):
        async with platform:
            pass
    async with app.run():
        assert await echo.invoke(2) == 2
