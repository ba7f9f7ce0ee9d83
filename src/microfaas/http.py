"""The HTTP gateway: the APIServer over HTTP, as a plain ASGI application.

How it works. ``make_asgi_app(platform)`` reads the running platform's app once and
builds a routing table from the ``mf.Http(method, path)`` triggers. A request that
matches a route becomes an ``mf.HttpRequest``, goes through ``platform.invoke`` like
any other call (so it gets a container, a deadline, stats), and the handler's
result becomes the response. The invoke API under ``/v1/functions`` is the same
``invoke`` by name, with JSON arguments; it is off unless asked for.

Safety. The gateway reads and writes JSON only: nothing from the network is ever
unpickled (arguments go to the container pickled by the platform, from values
``json.loads`` produced). It binds 127.0.0.1 unless told otherwise. Only functions
with an Http trigger, and, with ``invoke_api=True``, the exposed functions, are
reachable. The invoke API may require a bearer token, and its POST requires
``Content-Type: application/json`` so a web page cannot call it cross-origin
without a CORS preflight (which the gateway never grants). Bodies are capped at
6 MiB by default, Lambda's limit for a synchronous payload.

uvicorn does the HTTP (``serve``, used by ``Platform.serve_http``); this module
parses no HTTP bytes itself and imports uvicorn only when serving.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import math
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .errors import (
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
from .events import Http, HttpRequest, HttpResponse

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .platform import Platform
    from .spec import FunctionSpec

__all__ = ["DEFAULT_MAX_BODY", "Gateway", "make_asgi_app", "parse_invoke_body", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Lambda's limit for a synchronous request or response payload.
DEFAULT_MAX_BODY: Final = 6 * 2**20
# Seconds uvicorn waits for in-flight requests when the server is stopped.
GRACEFUL_SHUTDOWN: Final = 5.0
INVOKE_API_PREFIX: Final = "/v1/functions"
HEALTH_PATH: Final = "/healthz"

logger = logging.getLogger("microfaas.http")

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
        return HttpResponse.json({"error": self.error, "message": self.message, **self.extra}, status=self.status, headers=self.headers)


class _Disconnected(Exception):
    """The client went away before its body arrived."""


@attrs.frozen
class Route:
    """One ``mf.Http`` trigger: ``method`` and ``path`` lead to ``function``."""

    trigger: Http
    function: str
    # (is_param, text) per segment; text is the literal, or the parameter's name.
    segments: tuple[tuple[bool, str], ...]

    @classmethod
    def of(cls, trigger: Http, function: str) -> Route:
        segments = tuple((s.startswith("{"), s.strip("{}")) for s in trigger.path[1:].split("/"))
        return cls(trigger, function, segments)

    @property
    def shape(self) -> tuple[str, ...]:
        """The path with parameter names erased: two routes of one method and shape collide."""
        return tuple("{}" if is_param else text for is_param, text in self.segments)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params = {}
        for (is_param, text), segment in zip(self.segments, segments, strict=True):
            if is_param:
                if not segment:
                    return None
                params[text] = segment
            elif text != segment:
                return None
        return params


def _routes(functions: Mapping[str, FunctionSpec]) -> list[Route]:
    routes: list[Route] = []
    seen: dict[tuple[str, tuple[str, ...]], Route] = {}
    for name, spec in functions.items():
        for trigger in spec.triggers:
            if not isinstance(trigger, Http):
                continue
            path = trigger.path
            if path in (HEALTH_PATH, INVOKE_API_PREFIX) or path.startswith(INVOKE_API_PREFIX + "/"):
                raise ValueError(f"{name}: Http path {path!r} is reserved by the gateway ({HEALTH_PATH}, {INVOKE_API_PREFIX}/...)")
            route = Route.of(trigger, name)
            other = seen.setdefault((trigger.method, route.shape), route)
            if other is not route:
                theirs = f"{other.trigger.method} {other.trigger.path} of {other.function}"
                raise ValueError(f"{name}: Http route {trigger.method} {path} collides with {theirs}")
            routes.append(route)
    # A literal segment wins over a parameter at the first place two routes differ.
    routes.sort(key=lambda r: tuple(is_param for is_param, _ in r.segments))
    return routes


def parse_invoke_body(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """The ``args`` and ``kwargs`` of an invoke request body ``{"args": [...], "kwargs": {...}}``.

    An empty body means no arguments.

    :raises ValueError: the body is not such a JSON object (the message says why).
    """
    if not body.strip():
        return [], {}
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f'the body must be a JSON object {{"args": [...], "kwargs": {{...}}}}, got {type(data).__name__}')
    unknown = sorted(set(data) - {"args", "kwargs"})
    if unknown:
        raise ValueError(f'the body may only hold "args" and "kwargs", not {", ".join(map(repr, unknown))}')
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list):
        raise ValueError(f'"args" must be a JSON array, got {type(args).__name__}')
    if not isinstance(kwargs, dict):
        raise ValueError(f'"kwargs" must be a JSON object, got {type(kwargs).__name__}')
    return args, kwargs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_arguments(spec: FunctionSpec, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` when the handler's signature does not accept these arguments."""
    try:
        signature = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return  # no signature to check against; the container will tell
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"the arguments do not match {spec.name}{signature}: {exc}") from None


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


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, separators=(",", ":"), default=str).encode("utf-8")


def _as_json(record: Any) -> Any:
    return attrs.asdict(record, value_serializer=lambda _inst, _field, v: str(v) if isinstance(v, str) else v)


class Gateway:
    """The ASGI application: Http routes, the invoke API and ``/healthz`` (see ``make_asgi_app``)."""

    def __init__(
        self,
        platform: Platform,
        *,
        invoke_api: bool = False,
        expose: Collection[str] | None = None,
        token: str | None = None,
        debug: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        functions = platform.app.functions
        if isinstance(expose, str):
            raise ValueError(f"expose must be a list of function names, got the string {expose!r}")
        if expose is not None:
            unknown = sorted(set(expose) - set(functions))
            if unknown:
                raise ValueError(f"expose names no function {', '.join(map(repr, unknown))}; the app has: {', '.join(sorted(functions))}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError(f"token must be a non-empty str or None, got {token!r}")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
            raise ValueError(f"max_body must be an int >= 0 (bytes), got {max_body!r}")
        self.platform = platform
        self.invoke_api = bool(invoke_api)
        self.exposed: frozenset[str] = frozenset(functions if expose is None else expose) if invoke_api else frozenset()
        self.token = token
        self.debug = debug
        self.max_body = max_body
        self.routes = _routes(functions)
        self._specs = dict(functions)

    def __repr__(self) -> str:
        api = f"invoke API for {len(self.exposed)} functions" if self.invoke_api else "no invoke API"
        return f"<microfaas Gateway of app {self.platform.app.name!r}: {len(self.routes)} routes, {api}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    # -- dispatch ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["method"] == "HEAD"
        try:
            try:
                response = await self._dispatch(scope, receive)
            except HttpError as exc:
                response = exc.response()
            except FaaSError as exc:
                status, payload, headers = error_payload(exc, debug=self.debug)
                response = HttpResponse.json(payload, status=status, headers=headers)
        except _Disconnected:
            return
        except Exception:
            logger.exception("the gateway failed on %s %s", scope["method"], scope["path"])
            response = HttpError(500, "InternalError", "the gateway failed; see its log").response()
        await self._send(send, response, head=head)

    async def _dispatch(self, scope: Scope, receive: Receive) -> HttpResponse:
        method, path = scope["method"], scope["path"]
        if path == HEALTH_PATH:
            self._allow(method, ("GET",))
            if self.platform.closed:
                return HttpResponse.json({"status": "closed"}, status=503)
            return HttpResponse.json({"status": "ok", "app": self.platform.app.name})
        if self.invoke_api and (path == INVOKE_API_PREFIX or path.startswith(INVOKE_API_PREFIX + "/")):
            return await self._invoke_api(scope, receive, method, path)
        segments = path[1:].split("/")
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.trigger.method == method or (method == "HEAD" and route.trigger.method == "GET"):
                request = HttpRequest(
                    method=method,
                    path=path,
                    path_params=params,
                    query=_query(scope),
                    headers=_headers(scope),
                    body=await self._body(scope, receive),
                )
                result = await self.platform.invoke(route.function, request)
                return to_response(result, route.function)
            allowed.append(route.trigger.method)
        if allowed:
            self._allow(method, allowed)
        raise HttpError(404, "NotFound", f"no route for {method} {path}")

    def _allow(self, method: str, allowed: Collection[str]) -> None:
        methods = sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])})
        if method not in methods:
            raise HttpError(
                405, "MethodNotAllowed", f"{method} is not allowed here; use {', '.join(methods)}", headers={"allow": ", ".join(methods)}
            )

    # -- the invoke API ------------------------------------------------------------------------

    async def _invoke_api(self, scope: Scope, receive: Receive, method: str, path: str) -> HttpResponse:
        self._authorize(scope)
        parts = path[len(INVOKE_API_PREFIX) :].split("/")[1:]
        if not parts or parts == [""]:
            self._allow(method, ("GET",))
            functions = [{"name": name, "stats": _as_json(self.platform.stats(name))} for name in sorted(self.exposed)]
            return HttpResponse.json({"functions": functions}, headers={"cache-control": "no-store"})
        name = parts[0]
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "invoke"):
            raise HttpError(404, "NotFound", f"no route for {method} {path}")
        if name not in self.exposed:
            raise HttpError(404, "UnknownFunction", f"no function {name!r} is exposed by the invoke API")
        if len(parts) == 1:
            self._allow(method, ("GET",))
            spec = self._specs[name]
            info = {
                "name": name,
                "routes": [f"{t.method} {t.path}" for t in spec.triggers if isinstance(t, Http)],
                "stats": _as_json(self.platform.stats(name)),
                "containers": [_as_json(c) for c in self.platform.containers(name)],
            }
            return HttpResponse.json(info, headers={"cache-control": "no-store"})
        self._allow(method, ("POST",))
        content_type = _headers(scope).get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpError(415, "UnsupportedMediaType", f"send the arguments as Content-Type: application/json, not {content_type!r}")
        try:
            args, kwargs = parse_invoke_body(await self._body(scope, receive))
            check_arguments(self._specs[name], args, kwargs)
        except ValueError as exc:
            raise HttpError(400, "BadRequest", f"{name}: {exc}") from None
        result = await self.platform.invoke(name, *args, **kwargs)
        try:
            body = json.dumps({"result": result}, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise HttpError(500, "SerializationError", f"{name}: the result is not JSON: {exc}") from None
        return HttpResponse(body=body, headers={"content-type": "application/json"})

    def _authorize(self, scope: Scope) -> None:
        if self.token is None:
            return
        scheme, _, credentials = _headers(scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            raise HttpError(
                401, "Unauthorized", "the invoke API needs Authorization: Bearer <token>", headers={"www-authenticate": "Bearer"}
            )

    # -- ASGI plumbing -------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        too_large = HttpError(413, "PayloadTooLarge", f"the request body is larger than {self.max_body} bytes")
        declared = _headers(scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _send(self, send: Send, response: HttpResponse, *, head: bool) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items() if k.lower() != "content-length"]
        if response.status not in (204, 304) and not 100 <= response.status < 200:
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head or response.status == 204 else response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _query(scope: Scope) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    return query


def make_asgi_app(
    platform: Platform,
    *,
    invoke_api: bool = False,
    expose: Collection[str] | None = None,
    token: str | None = None,
    debug: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
) -> Gateway:
    """The ASGI application for a platform: its Http routes, ``/healthz``, and optionally the invoke API.

    :param platform: the platform whose functions it serves (running while requests arrive).
    :param invoke_api: serve ``GET /v1/functions``, ``GET /v1/functions/{name}`` and
        ``POST /v1/functions/{name}/invoke``.
    :param expose: the functions the invoke API reaches (default: all of them).
    :param token: when set, the invoke API needs ``Authorization: Bearer <token>``.
    :param debug: include the remote traceback in ``FunctionError`` responses.
    :param max_body: the largest request body in bytes (413 past it).
    :raises ValueError: a bad option, an Http route that collides with another or with
        the gateway's own paths.
    """
    return Gateway(platform, invoke_api=invoke_api, expose=expose, token=token, debug=debug, max_body=max_body)


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
    platform: Platform,
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
