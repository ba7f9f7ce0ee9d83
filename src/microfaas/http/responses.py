"""What the gateway answers: error statuses and JSON error bodies, and a handler's result as a response.

A ``FaaSError`` the platform raised becomes the status ``ERROR_STATUS`` gives it and a
body ``{"error", "message", ...}`` (``error_payload``); a request the gateway itself
refuses raises ``HttpError``, which carries its own status and body. An Http
handler's result becomes a response by its type (``to_response``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ..errors import (
    ColdStartFailed,
    ContainerCrashed,
    FaaSError,
    FunctionError,
    FunctionTimeout,
    InvocationError,
    OutOfMemory,
    PlatformClosed,
    SerializationError,
    Throttled,
    UnknownFunction,
)
from ..events import HttpResponse

__all__ = ["ERROR_STATUS", "HttpError", "as_json", "error_payload", "to_response"]

# An error the platform raised, and the status that says it; the first match wins.
ERROR_STATUS: Final[tuple[tuple[type[FaaSError], int], ...]] = (
    (UnknownFunction, 404),
    (Throttled, 429),
    (FunctionTimeout, 504),
    (OutOfMemory, 502),
    (ContainerCrashed, 502),
    (ColdStartFailed, 502),
    (FunctionError, 500),
    (SerializationError, 500),
    (PlatformClosed, 503),
)


class HttpError(Exception):
    """A request the gateway answers with an error status and a JSON body ``{"error", "message"}``."""

    def __init__(self, status: int, error: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> HttpResponse:
        """The error as the response to send."""
        return HttpResponse.json({"error": self.error, "message": self.message, **self.extra}, status=self.status, headers=self.headers)


def error_payload(exc: FaaSError, *, debug: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and headers that report ``exc`` over HTTP."""
    status = next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 500)
    payload: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    headers: dict[str, str] = {}
    if isinstance(exc, InvocationError) and exc.invocation_id:
        payload["invocation_id"] = exc.invocation_id
    remote_type = getattr(exc, "remote_type", None)
    if remote_type is not None:
        payload["remote_type"] = remote_type
        payload["remote_message"] = exc.remote_message  # type: ignore[attr-defined]
        if debug:
            payload["traceback"] = exc.remote_traceback  # type: ignore[attr-defined]
    if isinstance(exc, Throttled):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return status, payload, headers


def to_response(value: Any, function: str) -> HttpResponse:
    """An Http handler's result as a response: HttpResponse as given, dict/list as JSON, str as text, bytes as bytes."""
    if isinstance(value, HttpResponse):
        if not any(name.lower() == "content-type" for name in value.headers):
            return attrs.evolve(value, headers={**value.headers, "content-type": "application/octet-stream"})
        return value
    if value is None:
        return HttpResponse(status=204)
    if isinstance(value, str):
        return HttpResponse.text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return HttpResponse(body=bytes(value), headers={"content-type": "application/octet-stream"})
    if isinstance(value, dict | list | tuple | int | float):  # bool is an int
        try:
            return HttpResponse.json(value)
        except (TypeError, ValueError) as exc:
            raise HttpError(500, "SerializationError", f"{function}: the handler's result is not JSON: {exc}") from None
    raise HttpError(
        500,
        "BadHandlerResult",
        f"{function}: the handler returned {type(value).__name__}; return an HttpResponse, dict, list, str, bytes or None",
    )


def as_json(record: attrs.AttrsInstance) -> Any:
    """An attrs record (stats, a container's info) as plain JSON values; str enums become their values."""
    return attrs.asdict(record, value_serializer=lambda _inst, _field, v: str(v) if isinstance(v, str) else v)
