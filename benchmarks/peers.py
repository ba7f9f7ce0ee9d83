"""The contenders: microfaas and its peers behind one small async interface.

Every contender runs the same function (``noop``, which echoes its argument) in
worker processes of its own and exposes:

- ``start()`` / ``close()``;
- ``call(x)``: one round trip from the asyncio loop, returning ``x``;
- ``many(n)``: ``n`` concurrent no-op calls, all awaited;
- ``worker_pids()``: the processes that run calls (for idle memory).

Pools have two workers (the throughput figure is "on 2 containers"). Worker-side
functions live in this module so that every peer's workers can import them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import socket
import sys
from typing import Any

import anyio
import anyio.to_process

WORKERS = 2


def noop(x: object = None) -> object:
    return x


# -- microfaas ---------------------------------------------------------------------------------


class Microfaas:
    name = "microfaas"

    def __init__(self, platform: Any, handle: Any) -> None:
        self.faas = platform
        self.fn = handle

    async def start(self) -> None:
        await self.call(None)

    async def call(self, x: object) -> object:
        return await self.fn.invoke(x)

    async def many(self, n: int) -> None:
        invoke = self.fn.invoke
        await asyncio.gather(*[invoke(None) for _ in range(n)])

    def worker_pids(self) -> list[int]:
        return [c.pid for c in self.faas.containers(self.fn.name) if c.pid is not None]

    async def close(self) -> None:
        pass


# -- anyio.to_process --------------------------------------------------------------------------


class AnyioToProcess:
    name = "anyio_to_process"

    async def start(self) -> None:
        self.limiter = anyio.CapacityLimiter(WORKERS)
        await self.many(WORKERS * 4)  # bring both workers up

    async def call(self, x: object) -> object:
        return await anyio.to_process.run_sync(noop, x, limiter=self.limiter)

    async def many(self, n: int) -> None:
        await asyncio.gather(*[self.call(None) for _ in range(n)])

    def worker_pids(self) -> list[int]:
        import psutil

        return [
            p.pid for p in psutil.Process().children() if "anyio.to_process" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE
        ]

    async def close(self) -> None:
        pass  # anyio stops its workers when the event loop ends


# -- concurrent.futures executors: ProcessPoolExecutor and loky --------------------------------


class _Executor:
    executor: concurrent.futures.Executor

    async def call(self, x: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, noop, x)

    async def many(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[loop.run_in_executor(self.executor, noop, None) for _ in range(n)])

    def worker_pids(self) -> list[int]:
        return list(self.executor._processes)  # type: ignore[attr-defined]


class ProcessPool(_Executor):
    name = "process_pool_executor"

    async def start(self) -> None:
        self.executor = concurrent.futures.ProcessPoolExecutor(max_workers=WORKERS)
        await self.many(WORKERS * 4)

    async def close(self) -> None:
        self.executor.shutdown(wait=True)


class Loky(_Executor):
    name = "loky"

    async def start(self) -> None:
        from loky import get_reusable_executor

        self.executor = get_reusable_executor(max_workers=WORKERS, timeout=3600)
        await self.many(WORKERS * 4)

    async def close(self) -> None:
        self.executor.shutdown(wait=True)


# -- multiprocessing.Pool ----------------------------------------------------------------------


class MpPool:
    name = "mp_pool"

    async def start(self) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)
        await self.many(WORKERS * 4)

    def _submit(self, loop: asyncio.AbstractEventLoop, x: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = loop.create_future()

        def done(value: object) -> None:
            loop.call_soon_threadsafe(future.set_result, value)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(future.set_exception, exc)

        self.pool.apply_async(noop, (x,), callback=done, error_callback=failed)
        return future

    async def call(self, x: object) -> object:
        return await self._submit(asyncio.get_running_loop(), x)

    async def many(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*[self._submit(loop, None) for _ in range(n)])

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.pool._pool]  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.pool.close()
        self.pool.join()


# -- Ray actors (optional) ---------------------------------------------------------------------


def ray_available() -> str | None:
    """None when ray imports, else why not."""
    try:
        import ray  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip ray"
        return f"{type(exc).__name__}: {exc}"
    return None


class RayActors:
    name = "ray"

    async def start(self) -> None:
        import ray

        @ray.remote(num_cpus=0)
        class Echo:
            def noop(self, x: object = None) -> object:
                return x

            def pid(self) -> int:
                return os.getpid()

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        self.actors = [Echo.remote() for _ in range(WORKERS)]  # type: ignore[attr-defined]
        self._next = 0
        await self.many(WORKERS * 4)

    async def call(self, x: object) -> object:
        return await self.actors[0].noop.remote(x)

    async def many(self, n: int) -> None:
        refs = [self.actors[i % WORKERS].noop.remote(None) for i in range(n)]
        await asyncio.gather(*refs)

    def worker_pids(self) -> list[int]:
        import ray

        return [ray.get(actor.pid.remote()) for actor in self.actors]

    async def close(self) -> None:
        import ray

        ray.shutdown()


# -- the floor: a raw asyncio socketpair echo --------------------------------------------------

ECHO = "import socket, sys\ns = socket.socket(fileno=int(sys.argv[1]))\nwhile data := s.recv(1 << 20):\n    s.sendall(data)\n"


class SocketpairFloor:
    """Another process echoing bytes over a socketpair, read by asyncio streams: no framing, no pickling."""

    name = "socketpair_floor"

    async def start(self) -> None:
        parent, child = socket.socketpair()
        self.process = await anyio.open_process([sys.executable, "-c", ECHO, str(child.fileno())], pass_fds=[child.fileno()])
        child.close()
        self.reader, self.writer = await asyncio.open_connection(sock=parent, limit=1 << 24)

    async def call(self, x: object) -> object:
        data = x if isinstance(x, bytes) else b"x"
        self.writer.write(data)
        await self.writer.drain()
        return await self.reader.readexactly(len(data))

    async def many(self, n: int) -> None:  # pragma: no cover - not a throughput contender
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        return [self.process.pid]

    async def close(self) -> None:
        self.writer.close()
        await self.process.wait()
