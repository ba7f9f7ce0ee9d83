"""Serving the gateway on uvicorn, inside the platform's event loop (``Platform.serve_http``).

uvicorn does the HTTP; this module binds the socket itself (so ``port=0`` can report
the port it got), keeps uvicorn away from the process's signal handlers and logging,
and turns its ways of failing (``SystemExit`` on a failed startup) into exceptions.
uvicorn is imported only when serving (extra ``http``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio

from .contract import GatewayPlatform
from .gateway import make_asgi_app

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["GRACEFUL_SHUTDOWN", "serve"]

# Seconds uvicorn waits for in-flight requests when the server is stopped.
GRACEFUL_SHUTDOWN: Final = 5.0

logger = logging.getLogger("microfaas.http")


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    platform: GatewayPlatform,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    uvicorn_options: Mapping[str, Any] | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve the platform's gateway on uvicorn until cancelled (see ``Platform.serve_http``).

    The socket is bound here (``port=0`` picks a free port); under
    ``task_group.start(...)`` the bound port is reported once the server accepts
    connections. uvicorn installs no signal handlers and leaves logging alone.
    Cancelling stops the server: new connections are refused and in-flight requests
    get up to 5 s to finish.

    :param options: ``make_asgi_app``'s options (invoke_api, expose, token, debug, max_body).
    :param uvicorn_options: extra ``uvicorn.Config`` settings (log_level, access_log, ...).
    :raises OSError: the address could not be bound.
    """
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError("serving HTTP needs uvicorn: pip install 'microfaas[http]'") from None

    app = make_asgi_app(platform, **options)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "host": host,
        "port": bound,
        "lifespan": "on",
        "interface": "asgi3",
        "log_config": None,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        **(uvicorn_options or {}),
    }

    ready = anyio.Event()  # set once the server accepts connections, or has given up

    class _EmbeddedServer(uvicorn.Server):
        """A uvicorn server that leaves the process's signal handlers alone and says when it is up."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
            yield

        def install_signal_handlers(self) -> None:  # older uvicorn
            pass

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            ready.set()

    server = _EmbeddedServer(uvicorn.Config(app, **settings))
    finished = anyio.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            # Shielded: a cancelled caller asks the server to exit (below) and waits for it.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process when its startup fails
            failure.append(RuntimeError(f"uvicorn could not start on {host}:{bound} (exit status {exc.code})"))
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group (no ExceptionGroup)
            failure.append(exc)
        finally:
            sock.close()
            ready.set()
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            await ready.wait()
            if server.started and not server.should_exit:
                logger.info("serving app %r on http://%s:%d", platform.app.name, host, bound)
                task_status.started(bound)
                await finished.wait()
        finally:
            server.should_exit = True
    if failure:
        raise failure[0]
