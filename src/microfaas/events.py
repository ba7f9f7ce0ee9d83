"""Typed envelopes that carry events to handlers, and the invocation context.

Everything here is a frozen attrs record: it pickles, compares and prints well,
and crosses the process boundary unchanged. The worker imports this module, so it
imports nothing from microfaas but ``errors``.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

__all__ = ["BatchResult", "BatchTask", "Context", "Message", "ObjectEvent", "Record", "RecordBatch", "Tick", "Trigger", "context"]


@attrs.frozen(kw_only=True)
class Context:
    """What a handler knows about the invocation it is running.

    :param invocation_id: unique id of this invocation (retries keep it).
    :param function_name: the function's registered name.
    :param attempt: 1 for the first attempt, 2 for the first retry, ...
    :param cold_start: True when this invocation paid for its container's start.
    :param deadline: wall-clock time (``time.time()``) by which it must finish, or None.
    :param memory_mb: the container's memory limit.
    :param container_id: the container running it (``"local"`` for ``f.local()``).
    """

    invocation_id: str
    function_name: str
    attempt: int = 1
    cold_start: bool = False
    deadline: float | None = None
    memory_mb: int | None = None
    container_id: str = "local"

    def remaining_time(self) -> float:
        """Seconds left before the deadline (``inf`` when there is none); never negative."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.time())


class Trigger:
    """Base of every trigger (topic subscription, stream consumer, timer, HTTP route).

    Pass triggers to ``@app.function(triggers=[...])``; the platform starts a
    source for each when it runs.
    """

    __slots__ = ()


_current: contextvars.ContextVar[Context] = contextvars.ContextVar("microfaas_context")


def _attributes(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"attributes must be a dict of str to str, got {value!r}")
    return dict(value)


@attrs.frozen(kw_only=True)
class Message:
    """A pub/sub message, as a subscriber receives it.

    :param id: unique per published message (the same for every subscription and attempt).
    :param topic: the topic it was published to.
    :param data: the payload given to ``publish``.
    :param attributes: string key/value metadata given to ``publish``.
    :param attempt: 1 on first delivery, 2 on the first retry, ...
    :param published_at: wall-clock time (``time.time()``) of ``publish``.
    """

    id: str
    topic: str
    data: Any
    attributes: dict[str, str] = attrs.field(factory=dict, converter=_attributes)
    attempt: int = 1
    published_at: float = 0.0


@attrs.frozen(kw_only=True)
class Record:
    """One record of a stream shard.

    :param key: the partition key given to ``put`` (records with one key share a shard).
    :param value: the payload.
    :param sequence: its position in its shard: 0, 1, 2, ... in put order.
    :param shard: the shard it is on.
    :param put_at: wall-clock time of ``put``.
    """

    key: str | None
    value: Any
    sequence: int
    shard: int
    put_at: float


def _records(records: Iterable[Record]) -> tuple[Record, ...]:
    # A typed converter: with the bare ``tuple`` the attrs plugin cannot type the argument.
    return tuple(records)


@attrs.frozen(kw_only=True)
class RecordBatch:
    """Consecutive records of one shard, in order, handed to a stream consumer."""

    stream: str
    shard: int
    records: tuple[Record, ...] = attrs.field(converter=_records)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


@attrs.frozen(kw_only=True)
class BatchTask:
    """One task of a batch job (what a dead letter of a batch job holds)."""

    job_id: str
    index: int
    item: Any


@attrs.frozen(kw_only=True)
class Tick:
    """A timer firing.

    :param name: the timer's name (its function's, unless given).
    :param scheduled_at: wall-clock time it was due.
    :param fired_at: wall-clock time it fired.
    :param skipped: ticks missed since the last one (they are not stacked up).
    """

    name: str
    scheduled_at: float
    fired_at: float
    skipped: int = 0


@attrs.frozen(kw_only=True)
class ObjectEvent:
    """A change to an object (a file) in a watched place, like a storage bucket's notification.

    :param kind: ``"created"``, ``"modified"`` or ``"deleted"``.
    :param path: the file's path (absolute).
    :param size: its size in bytes when the change was seen (None once deleted, or gone by then).
    :param time: wall-clock time (``time.time()``) the change was seen.
    """

    kind: str
    path: str
    size: int | None
    time: float


def _ids(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"BatchResult: failed must be a list of message ids, got {value!r}")
    return tuple(str(v) for v in value)


@attrs.frozen
class BatchResult:
    """What a batch handler returns to have only some messages retried.

    :param failed: ids of the messages that failed; the others count as handled.
    """

    failed: tuple[str, ...] = attrs.field(default=(), converter=_ids)


def context() -> Context:
    """The context of the invocation being run; call it inside a handler.

    :raises RuntimeError: outside an invocation.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "mf.context() was called outside an invocation; call it inside a function run by the platform (or by f.local())"
        ) from None


def set_context(ctx: Context) -> contextvars.Token[Context]:
    return _current.set(ctx)


def reset_context(token: contextvars.Token[Context]) -> None:
    _current.reset(token)


# -- HTTP: the gateway's envelopes and trigger ------------------------------------------------

__all__ += ["Http", "HttpRequest", "HttpResponse"]

# The methods an Http trigger may name (RFC 9110 plus PATCH); HEAD is answered by GET routes.
# "ANY" matches every method (API Gateway's catch-all method), HEAD included.
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "ANY"})
_PATH_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\+?\}$")
_PATH_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%]+$")


def _str_dict(value: object) -> dict[str, str]:
    return dict(value)  # type: ignore[call-overload]


@attrs.frozen(kw_only=True)
class HttpRequest:
    """One HTTP request, as an Http-triggered handler receives it.

    :param method: the request method, upper case (``"GET"``).
    :param path: the request path, percent-decoded (``"/items/42"``).
    :param path_params: values of the route's ``{name}`` segments (``{"id": "42"}``).
    :param query: query parameters; a repeated name's values are joined with ``","``
        (as Lambda's HTTP API does).
    :param headers: header names in lower case; repeated headers are joined with ``", "``
        (``cookie`` headers with ``"; "``, as RFC 9113 joins them).
    :param body: the raw request body.
    :param route: the route that matched, as ``"GET /items/{id}"`` (empty when the request
        did not come through the gateway).
    :param raw_query: the query string as sent, undecoded (``"a=1&a=2"``).
    :param source_ip: the client's address (empty when unknown).
    :param protocol: the HTTP version, ``"HTTP/1.1"``.
    :param received_at: wall-clock time (``time.time()``) the gateway received the request (0.0: unknown).
    """

    method: str
    path: str
    path_params: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    query: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    headers: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    body: bytes = b""
    route: str = ""
    raw_query: str = ""
    source_ip: str = ""
    protocol: str = "HTTP/1.1"
    received_at: float = 0.0

    def json(self) -> Any:
        """The body parsed as JSON.

        :raises ValueError: the body is not valid JSON.
        """
        return json.loads(self.body)

    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


def _cookies(value: object) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"HttpResponse: cookies must be a list of Set-Cookie values, got {value!r}")
    return tuple(value)


def _to_body(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


@attrs.frozen(kw_only=True)
class HttpResponse:
    """What an Http-triggered handler may return for full control of the response.

    ``HttpResponse.json(data)`` and ``HttpResponse.text(s)`` set the body and its
    content type. A handler may also return a dict or list (sent as JSON), a ``str``
    (text/plain) or ``bytes`` (application/octet-stream).

    :param status: the status code, 100-599.
    :param body: the body (a ``str`` is encoded as UTF-8).
    :param headers: response headers; ``content-type`` defaults to application/octet-stream.
    :param cookies: ``Set-Cookie`` values, each sent as a header of its own (``"id=1; Path=/"``).
    """

    status: int = attrs.field(default=200)
    body: bytes = attrs.field(default=b"", converter=_to_body)
    headers: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)
    cookies: tuple[str, ...] = attrs.field(default=(), converter=_cookies)

    @status.validator
    def _check_status(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
            raise ValueError(f"HttpResponse: status must be an int from 100 to 599, got {value!r}")

    @body.validator
    def _check_body(self, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if not isinstance(value, bytes):
            raise ValueError(f"HttpResponse: body must be bytes or str, got {type(value).__name__}")

    @headers.validator
    def _check_headers(self, attribute: attrs.Attribute[dict[str, str]], value: dict[str, str]) -> None:
        for name, header in value.items():
            if not isinstance(name, str) or not isinstance(header, str) or "\n" in name + header or "\r" in name + header:
                raise ValueError(f"HttpResponse: headers must map str to str without line breaks, got {name!r}: {header!r}")

    @cookies.validator
    def _check_cookies(self, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        for cookie in value:
            if not isinstance(cookie, str) or "\n" in cookie or "\r" in cookie:
                raise ValueError(f"HttpResponse: cookies must be str without line breaks, got {cookie!r}")

    @classmethod
    def json(cls, data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
        """A JSON response (``application/json``)."""
        body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode("utf-8")
        return cls(status=status, body=body, headers={"content-type": "application/json", **(headers or {})})

    @classmethod
    def text(cls, text: str, *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
        """A text response (``text/plain; charset=utf-8``)."""
        return cls(status=status, body=text, headers={"content-type": "text/plain; charset=utf-8", **(headers or {})})


@attrs.frozen
class Http(Trigger):
    """An HTTP route served by the gateway (``faas.serve_http()``): ``mf.Http("GET", "/items/{id}")``.

    The handler gets an ``HttpRequest``. ``{name}`` segments match one path segment
    and arrive in ``request.path_params``. A last segment ``{name+}`` is greedy: it
    matches the rest of the path, one segment or more (``mf.Http("ANY", "/{proxy+}")``
    is API Gateway's catch-all route). A GET route also answers HEAD; an ANY route
    answers every method.

    :param method: GET, POST, PUT, PATCH, DELETE, OPTIONS or ANY (any case).
    :param path: starts with ``/``; literal segments and ``{name}`` segments, the last may be ``{name+}``.
    :raises ValueError: a bad method or path (the message names the field).
    """

    method: str = attrs.field(converter=lambda m: m.upper() if isinstance(m, str) else m)
    path: str = attrs.field()

    @method.validator
    def _check_method(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in HTTP_METHODS:
            raise ValueError(f"Http: method must be one of {', '.join(sorted(HTTP_METHODS))}, got {value!r}")

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError(f"Http: path must be a str starting with '/', got {value!r}")
        names: list[str] = []
        segments = value[1:].split("/")
        for i, segment in enumerate(segments):
            if segment == "" and i == len(segments) - 1:
                continue  # "/" or a trailing slash
            param = _PATH_PARAM.match(segment)
            if param:
                if segment.endswith("+}") and i != len(segments) - 1:
                    raise ValueError(f"Http: only the last segment of a path may be greedy ({{name+}}), got {value!r}")
                names.append(param.group(1))
            elif not _PATH_LITERAL.match(segment):
                raise ValueError(
                    f"Http: path must be made of literal segments and {{name}} segments, got {value!r} (bad segment {segment!r})"
                )
        if len(names) != len(set(names)):
            raise ValueError(f"Http: path must not name a path parameter twice, got {value!r}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(m.group(1) for s in self.path.split("/") if (m := _PATH_PARAM.match(s)))
