"""The HTTP gateway: the APIServer over HTTP, as a plain ASGI application.

How it works. ``make_asgi_app(platform)`` builds a routing table from the
``mf.Http(method, path)`` triggers of the functions the platform serves, again
whenever they change (functions deployed while it runs are served too). A request that
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

uvicorn does the HTTP (``serve``, used by ``Platform.serve_http``); this package
parses no HTTP bytes itself and imports uvicorn only when serving.

The modules, one job each:

* ``contract`` -- ``GatewayPlatform``: what the gateway asks of the platform (it never
  imports ``platform.py``, which sits above it).
* ``gateway`` -- ``Gateway`` and ``make_asgi_app``: dispatch, the invoke API, ``/healthz``.
* ``routes`` -- the routing table built from the ``mf.Http`` triggers.
* ``arguments`` -- the invoke API's JSON body, checked against the handler's signature.
* ``responses`` -- error statuses and bodies; a handler's result as a response.
* ``asgi`` -- headers, query and body in; the response and lifespan replies out.
* ``server`` -- ``serve``: the gateway on uvicorn, in the platform's event loop.
"""

from __future__ import annotations

from .arguments import check_arguments, parse_invoke_body
from .contract import GatewayApp, GatewayPlatform
from .gateway import DEFAULT_MAX_BODY, Gateway, make_asgi_app
from .responses import ERROR_STATUS, HttpError, error_payload, to_response
from .routes import HEALTH_PATH, INVOKE_API_PREFIX, Route
from .server import GRACEFUL_SHUTDOWN, serve

__all__ = [
    "DEFAULT_MAX_BODY",
    "ERROR_STATUS",
    "GRACEFUL_SHUTDOWN",
    "HEALTH_PATH",
    "INVOKE_API_PREFIX",
    "Gateway",
    "GatewayApp",
    "GatewayPlatform",
    "HttpError",
    "Route",
    "check_arguments",
    "error_payload",
    "make_asgi_app",
    "parse_invoke_body",
    "serve",
    "to_response",
]
