"""The ASGI application: Http routes, the invoke API under ``/v1/functions`` and ``/healthz``.

``make_asgi_app(platform)`` builds the routing table (``routes.py``) from the
functions the platform serves, and again when they change (a function deployed,
updated or undeployed while it runs), so each request sees them as they are. A
request that matches a route becomes an ``mf.HttpRequest`` and goes through
``platform.invoke`` like any other call (so it gets a container, a deadline,
stats); the handler's result becomes the response (``responses.py``). The
invoke API is ``invoke`` by name with JSON arguments (``arguments.py``): off unless
asked for, limited to the exposed functions, optionally behind a bearer token, and
its POST needs ``Content-Type: application/json`` (so a web page cannot call it
cross-origin without a CORS preflight, which the gateway never grants).

The gateway reaches the platform only through ``GatewayPlatform`` (``contract.py``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Collection
from typing import Final

from ..errors import FaaSError
from ..events import Http, HttpRequest, HttpResponse
from . import asgi
from .arguments import check_arguments, parse_invoke_body
from .contract import GatewayPlatform
from .responses import HttpError, as_json, error_payload, to_response
from .routes import HEALTH_PATH, INVOKE_API_PREFIX, Route, build_routes, is_invoke_api

__all__ = ["DEFAULT_MAX_BODY", "Gateway", "make_asgi_app"]

# Lambda's limit for a synchronous request or response payload.
DEFAULT_MAX_BODY: Final = 6 * 2**20

logger = logging.getLogger("microfaas.http")


class Gateway:
    """The ASGI application: Http routes, the invoke API and ``/healthz`` (see ``make_asgi_app``)."""

    def __init__(
        self,
        platform: GatewayPlatform,
        *,
        invoke_api: bool = False,
        expose: Collection[str] | None = None,
        token: str | None = None,
        debug: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        functions = {name: platform.function(name) for name in platform.function_names()}
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
        self._expose = None if expose is None else frozenset(expose)
        self.token = token
        self.debug = debug
        self.max_body = max_body
        self._routes = build_routes(functions)
        self._specs = functions

    def __repr__(self) -> str:
        api = f"invoke API for {len(self.exposed)} functions" if self.invoke_api else "no invoke API"
        return f"<microfaas Gateway of app {self.platform.app.name!r}: {len(self.routes)} routes, {api}>"

    @property
    def routes(self) -> list[Route]:
        """The routes of the functions served now (built again when they changed)."""
        self._refresh()
        return self._routes

    @property
    def exposed(self) -> frozenset[str]:
        """The functions the invoke API reaches now: those of ``expose``, else every function served."""
        if not self.invoke_api:
            return frozenset()
        self._refresh()
        return frozenset(self._specs) if self._expose is None else self._expose & self._specs.keys()

    def _refresh(self) -> None:
        platform = self.platform
        names = platform.function_names()
        specs = self._specs
        if len(names) == len(specs) and all(platform.function(name) is specs.get(name) for name in names):
            return
        functions = {name: platform.function(name) for name in names}
        self._routes = build_routes(functions)  # deploy refused routes that collide, so this builds
        self._specs = functions

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await asgi.lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    # -- dispatch ----------------------------------------------------------------------------

    async def _http(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        head = scope["method"] == "HEAD"
        try:
            try:
                response = await self._dispatch(scope, receive)
            except HttpError as exc:
                response = exc.response()
            except FaaSError as exc:
                status, payload, headers = error_payload(exc, debug=self.debug)
                response = HttpResponse.json(payload, status=status, headers=headers)
        except asgi.Disconnected:
            return
        except Exception:
            logger.exception("the gateway failed on %s %s", scope["method"], scope["path"])
            response = HttpError(500, "InternalError", "the gateway failed; see its log").response()
        await asgi.send_response(send, response, head=head)

    async def _dispatch(self, scope: asgi.Scope, receive: asgi.Receive) -> HttpResponse:
        received_at = time.time()
        method, path = scope["method"], scope["path"]
        if path == HEALTH_PATH:
            self._allow(method, ("GET",))
            if self.platform.closed:
                return HttpResponse.json({"status": "closed"}, status=503)
            return HttpResponse.json({"status": "ok", "app": self.platform.app.name})
        if self.invoke_api and is_invoke_api(path):
            return await self._invoke_api(scope, receive, method, path)
        segments = path[1:].split("/")
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.allows(method):
                client = scope.get("client")
                request = HttpRequest(
                    method=method,
                    path=path,
                    path_params=params,
                    query=asgi.query(scope),
                    headers=asgi.headers(scope),
                    body=await asgi.read_body(scope, receive, self.max_body),
                    route=route.key,
                    raw_query=scope.get("query_string", b"").decode("latin-1"),
                    source_ip=client[0] if client else "",
                    protocol=f"HTTP/{scope.get('http_version', '1.1')}",
                    received_at=received_at,
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

    async def _invoke_api(self, scope: asgi.Scope, receive: asgi.Receive, method: str, path: str) -> HttpResponse:
        self._authorize(scope)
        parts = path[len(INVOKE_API_PREFIX) :].split("/")[1:]
        if not parts or parts == [""]:
            self._allow(method, ("GET",))
            functions = [{"name": name, "stats": as_json(self.platform.stats(name))} for name in sorted(self.exposed)]
            return HttpResponse.json({"functions": functions}, headers={"cache-control": "no-store"})
        name = parts[0]
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "invoke"):
            raise HttpError(404, "NotFound", f"no route for {method} {path}")
        if name not in self.exposed:  # also refreshes _specs
            raise HttpError(404, "UnknownFunction", f"no function {name!r} is exposed by the invoke API")
        spec = self._specs[name]
        if len(parts) == 1:
            self._allow(method, ("GET",))
            info = {
                "name": name,
                "routes": [f"{t.method} {t.path}" for t in spec.triggers if isinstance(t, Http)],
                "stats": as_json(self.platform.stats(name)),
                "containers": [as_json(c) for c in self.platform.containers(name)],
            }
            return HttpResponse.json(info, headers={"cache-control": "no-store"})
        self._allow(method, ("POST",))
        content_type = asgi.headers(scope).get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpError(415, "UnsupportedMediaType", f"send the arguments as Content-Type: application/json, not {content_type!r}")
        try:
            args, kwargs = parse_invoke_body(await asgi.read_body(scope, receive, self.max_body))
            check_arguments(spec, args, kwargs)
        except ValueError as exc:
            raise HttpError(400, "BadRequest", f"{name}: {exc}") from None
        result = await self.platform.invoke(name, *args, **kwargs)
        try:
            body = json.dumps({"result": result}, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise HttpError(500, "SerializationError", f"{name}: the result is not JSON: {exc}") from None
        return HttpResponse(body=body, headers={"content-type": "application/json"})

    def _authorize(self, scope: asgi.Scope) -> None:
        if self.token is None:
            return
        scheme, _, credentials = asgi.headers(scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            raise HttpError(
                401, "Unauthorized", "the invoke API needs Authorization: Bearer <token>", headers={"www-authenticate": "Bearer"}
            )


def make_asgi_app(
    platform: GatewayPlatform,
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
