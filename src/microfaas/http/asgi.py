"""ASGI plumbing: the request's headers, query and body in, a response and lifespan replies out.

uvicorn parses the HTTP; the gateway sees ASGI messages only. A body is read in chunks
up to a cap (413 past it, checked against ``Content-Length`` first); a client that
disconnects mid-body raises ``Disconnected``, and the gateway then sends nothing.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..events import HttpResponse
from .responses import HttpError

__all__ = ["Disconnected", "Message", "Receive", "Scope", "Send", "headers", "lifespan", "query", "read_body", "send_response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Disconnected(Exception):
    """The client went away before its body arrived."""


def headers(scope: Scope) -> dict[str, str]:
    """The request's headers, names lower-cased; a repeated header's values joined with ``", "``
    (``cookie`` headers with ``"; "``, as RFC 9113 section 8.2.3 joins them)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in found:
            value = f"{found[name]}{'; ' if name == 'cookie' else ', '}{value}"
        found[name] = value
    return found


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters; a repeated one's values joined with ``","``; blank values kept."""
    found: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        found[name] = f"{found[name]},{value}" if name in found else value
    return found


async def read_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """The whole request body.

    :raises HttpError: 413, the body is larger than ``max_body`` bytes.
    :raises Disconnected: the client went away first.
    """
    too_large = HttpError(413, "PayloadTooLarge", f"the request body is larger than {max_body} bytes")
    declared = headers(scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(send: Send, response: HttpResponse, *, head: bool) -> None:
    """Send ``response`` (without its body for HEAD and 204); ``Content-Length`` is always ours.
    Each of ``response.cookies`` is a ``Set-Cookie`` header of its own."""
    fields = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items() if k.lower() != "content-length"]
    fields += [(b"set-cookie", cookie.encode("latin-1")) for cookie in response.cookies]
    if response.status not in (204, 304) and not 100 <= response.status < 200:
        fields.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": fields})
    await send({"type": "http.response.body", "body": b"" if head or response.status == 204 else response.body})


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's lifespan messages: there is nothing to start or stop (the platform runs already)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
