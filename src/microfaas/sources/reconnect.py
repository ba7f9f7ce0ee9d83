"""Keeping a connector's connection to its outside system: the first connect, and every reconnect.

How this works. A connector reaches its server when the platform starts. If it
cannot, ``first`` raises ``ConnectorUnreachable`` naming the function, the connector
and the address (its password hidden), so ``async with app.run()`` fails at once
rather than a platform running that never gets an event -- unless the connector was
declared with ``wait_for_server=True``: then it keeps trying, as it does whenever a
connection it had is lost. Every operation a source runs against its server goes
through ``call``: on a connection error it records a ``connector_down`` lifecycle event,
waits a backoff (doubling from ``INITIAL_DELAY`` up to ``MAX_DELAY`` seconds, jittered,
as AWS advises for reconnect storms), reconnects and tries the operation again; once
one succeeds after an outage it records ``connector_up``. The source's own bookkeeping
(what was read, what is acknowledged) decides what is safe to try again.
"""

from __future__ import annotations

import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from ..errors import ConnectorUnreachable
from ..lifecycle import CONNECTOR_DOWN, CONNECTOR_UP

if TYPE_CHECKING:
    from ..runtime.delivery import SourceRuntime

__all__ = ["INITIAL_DELAY", "MAX_DELAY", "Connection", "redacted"]

T = TypeVar("T")

INITIAL_DELAY: Final = 0.05
MAX_DELAY: Final = 2.0


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and events)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Connection:
    """One connector's connection, kept up.

    :param runtime: where lifecycle events go.
    :param function: the function the connector feeds.
    :param what: the connector, for messages (``"RedisStream 'clicks'"``).
    :param address: the server's address (a URL; its password is hidden in messages).
    :param connect: opens the connection (and sets up what the source needs on the server).
    :param errors: the exceptions that mean the connection is lost (the client library's).
    :param wait_for_server: at start, wait for the server instead of failing.
    """

    def __init__(
        self,
        runtime: SourceRuntime,
        *,
        function: str,
        what: str,
        address: str,
        connect: Callable[[], Awaitable[None]],
        errors: tuple[type[BaseException], ...],
        wait_for_server: bool,
    ) -> None:
        self.runtime = runtime
        self.function = function
        self.what = what
        self.address = redacted(address)
        self._connect = connect
        self._errors = errors
        self._wait = wait_for_server
        self._down_since: float | None = None
        self._delay = INITIAL_DELAY
        self.reconnects = 0  # connections opened again after one was lost

    async def first(self) -> None:
        """Connect when the platform starts.

        :raises ConnectorUnreachable: the server cannot be reached (and the connector does not wait for it).
        """
        try:
            await self._connect()
        except self._errors as exc:
            if not self._wait:
                raise ConnectorUnreachable(
                    f"{self.function}: {self.what} could not reach {self.address}: {exc}; start the server "
                    "(docs/connectors.md says how), or declare the connector with wait_for_server=True to wait for it"
                ) from exc
            await self._lost(exc)
            await self.call(self._connect)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` against the server; on a lost connection, reconnect and run it again."""
        while True:
            try:
                result = await operation()
            except self._errors as exc:
                await self._lost(exc)
                try:
                    await self._connect()
                except self._errors:
                    continue  # still down: the next round waits longer
                self.reconnects += 1
                continue
            if self._down_since is not None:
                down_s, self._down_since = time.monotonic() - self._down_since, None
                self._delay = INITIAL_DELAY
                self.runtime.emit(CONNECTOR_UP, function=self.function, source=self.what, address=self.address, down_s=down_s)
            return result

    async def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        delay = random.uniform(self._delay / 2, self._delay)
        self._delay = min(MAX_DELAY, self._delay * 2)
        self.runtime.emit(CONNECTOR_DOWN, function=self.function, source=self.what, address=self.address, error=str(exc), retry_in=delay)
        await anyio.sleep(delay)
