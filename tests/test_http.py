"""The HTTP gateway: the ASGI app through httpx's ASGI transport, and once on a real uvicorn.

Every route and error status is exercised against a running platform; the functions
live in this module so containers import them by reference.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import httpx
import pytest

import microfaas as mf
from microfaas.http import ERROR_STATUS, GatewayPlatform, error_payload, make_asgi_app

pytestmark = pytest.mark.anyio

app = mf.App("gateway")


@app.function(triggers=[mf.Http("GET", "/items/{item_id}"), mf.Http("POST", "/items/{item_id}")])
def item(request: mf.HttpRequest) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "path_params": request.path_params,
        "query": request.query,
        "header": request.headers.get("x-thing"),
        "body": request.body.decode(),
    }


@app.function(triggers=[mf.Http("GET", "/items/special")])
def special(request: mf.HttpRequest) -> str:
    return "the literal route wins"


@app.function(triggers=[mf.Http("POST", "/echo")])
def echo_json(request: mf.HttpRequest) -> list[Any]:
    return [request.json(), request.headers["content-type"]]


@app.function(triggers=[mf.Http("GET", "/text")])
def text(request: mf.HttpRequest) -> str:
    return "héllo"


@app.function(triggers=[mf.Http("GET", "/bytes")])
def raw(request: mf.HttpRequest) -> bytes:
    return b"\x00\x01\x02"


@app.function(triggers=[mf.Http("PUT", "/custom")])
def custom(request: mf.HttpRequest) -> mf.HttpResponse:
    return mf.HttpResponse(status=201, body="made", headers={"x-made": "yes", "content-type": "text/plain"})


@app.function(triggers=[mf.Http("DELETE", "/nothing")])
def nothing(request: mf.HttpRequest) -> None:
    return None


@app.function(triggers=[mf.Http("GET", "/odd")])
def odd(request: mf.HttpRequest) -> object:
    return {1, 2}


class Boom(Exception):
    pass


@app.function(triggers=[mf.Http("GET", "/boom")])
def boom_route(request: mf.HttpRequest) -> None:
    raise Boom("route failed")


@app.function
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function
def boom(message: str) -> None:
    raise Boom(message)


@app.function
def a_set() -> set[int]:
    return {1}


@app.function(timeout=0.3)
def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(memory_mb=64, timeout=20)
def hog(mb: int) -> int:
    block = b"\x01" * (mb * 2**20)
    time.sleep(10)
    return len(block)


@app.function
def exits(code: int) -> None:
    os._exit(code)


def client(faas: mf.Platform, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_asgi_app(faas, **options)), base_url="http://gateway")


@pytest.fixture
async def faas() -> AsyncIterator[mf.Platform]:
    async with app.run() as platform:
        yield platform


def invoke(http: httpx.AsyncClient, name: str, payload: Any, **kwargs: Any) -> Any:
    return http.post(f"/v1/functions/{name}/invoke", json=payload, **kwargs)


# -- Http routes ---------------------------------------------------------------------------------


async def test_a_route_gets_an_http_request(faas: mf.Platform) -> None:
    async with client(faas) as http:
        response = await http.get("/items/42", params=[("q", "a"), ("q", "b"), ("empty", "")], headers={"x-thing": "t"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "method": "GET",
            "path": "/items/42",
            "path_params": {"item_id": "42"},
            "query": {"q": "a,b", "empty": ""},
            "header": "t",
            "body": "",
        }
        posted = await http.post("/items/7", content=b"payload")
        assert posted.json()["method"] == "POST"
        assert posted.json()["body"] == "payload"
        assert (await http.get("/items/special")).text == "the literal route wins"


async def test_handler_results_become_responses(faas: mf.Platform) -> None:
    async with client(faas) as http:
        echoed = await http.post("/echo", json={"k": [1, 2]})
        assert echoed.json() == [{"k": [1, 2]}, "application/json"]
        t = await http.get("/text")
        assert (t.status_code, t.headers["content-type"], t.text) == (200, "text/plain; charset=utf-8", "héllo")
        b = await http.get("/bytes")
        assert (b.headers["content-type"], b.content) == ("application/octet-stream", b"\x00\x01\x02")
        c = await http.put("/custom")
        assert (c.status_code, c.headers["x-made"], c.headers["content-type"], c.text) == (201, "yes", "text/plain", "made")
        n = await http.delete("/nothing")
        assert (n.status_code, n.content) == (204, b"")
        o = await http.get("/odd")
        assert o.status_code == 500
        assert o.json()["error"] == "BadHandlerResult"


async def test_head_not_found_and_method_not_allowed(faas: mf.Platform) -> None:
    async with client(faas) as http:
        head = await http.head("/text")
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len("héllo".encode())))
        missing = await http.get("/nowhere")
        assert missing.status_code == 404
        assert missing.json()["error"] == "NotFound"
        wrong = await http.patch("/items/1")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD, POST"
        assert wrong.json()["error"] == "MethodNotAllowed"


async def test_a_raising_route_is_a_500_with_the_remote_error(faas: mf.Platform) -> None:
    async with client(faas) as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "FunctionError"
    assert body["remote_type"].endswith("Boom")
    assert body["remote_message"] == "route failed"
    assert "traceback" not in body
    async with client(faas, debug=True) as http:
        body = (await http.get("/boom")).json()
    assert "route failed" in body["traceback"]
    assert "Traceback" in body["traceback"]


async def test_a_route_body_over_the_limit_is_413(faas: mf.Platform) -> None:
    async with client(faas, max_body=10) as http:
        response = await http.post("/items/1", content=b"x" * 11)
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLarge"
        assert (await http.post("/items/1", content=b"x" * 10)).status_code == 200


async def test_a_streamed_body_over_the_limit_is_413_without_content_length(faas: mf.Platform) -> None:
    gateway = make_asgi_app(faas, max_body=10)
    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True}, {"type": "http.request", "body": b"x" * 6, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/items/1", "headers": [], "query_string": b""}
    await gateway(scope, receive, send)
    assert sent[0]["status"] == 413
    assert faas.stats("item").invocations == 0


async def test_healthz(faas: mf.Platform) -> None:
    async with client(faas, token="secret") as http:
        response = await http.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok", "app": "gateway"})
        assert (await http.post("/healthz")).status_code == 405


async def test_healthz_after_the_platform_stopped_is_503() -> None:
    async with app.run() as faas:
        gateway = make_asgi_app(faas)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway") as http:
        response = await http.get("/healthz")
        assert (response.status_code, response.json()) == (503, {"status": "closed"})
        stopped = await http.get("/text")
        assert (stopped.status_code, stopped.json()["error"]) == (503, "PlatformClosed")


# -- the invoke API ------------------------------------------------------------------------------


async def test_the_invoke_api_is_off_by_default(faas: mf.Platform) -> None:
    async with client(faas) as http:
        assert (await invoke(http, "add", {"args": [1, 2]})).status_code == 404
        assert (await http.get("/v1/functions")).status_code == 404
    assert faas.stats("add").invocations == 0


async def test_invoke_by_name(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await invoke(http, "add", {"args": [2], "kwargs": {"b": 3}})
        assert (response.status_code, response.json()) == (200, {"result": 5})
        assert (await invoke(http, "add", {"args": [2, 40]})).json() == {"result": 42}


async def test_list_and_describe_functions(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True, expose=["add", "item"]) as http:
        assert (await invoke(http, "add", {"args": [1]})).status_code == 200
        listing = (await http.get("/v1/functions")).json()
        assert [f["name"] for f in listing["functions"]] == ["add", "item"]
        add_stats = next(f["stats"] for f in listing["functions"] if f["name"] == "add")
        assert (add_stats["invocations"], add_stats["cold_starts"]) == (1, 1)
        detail = (await http.get("/v1/functions/add")).json()
        assert detail["name"] == "add"
        assert detail["stats"]["invocations"] == 1
        [container] = detail["containers"]
        assert (container["function"], container["state"], container["calls"]) == ("add", "idle", 1)
        assert (await http.get("/v1/functions/item")).json()["routes"] == ["GET /items/{item_id}", "POST /items/{item_id}"]
        assert (await http.post("/v1/functions")).status_code == 405
        assert (await http.get("/v1/functions/add/invoke")).status_code == 405
        assert (await http.get("/v1/functions/add/other")).status_code == 404


async def test_unknown_and_unexposed_functions_are_404(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True, expose=["add"]) as http:
        messages = {}
        for name in ("nope", "boom"):
            response = await invoke(http, name, {"args": ["x"]})
            assert response.status_code == 404
            assert response.json()["error"] == "UnknownFunction"
            messages[name] = response.json()["message"]
            assert (await http.get(f"/v1/functions/{name}")).status_code == 404
    # An unexposed function answers exactly as one that does not exist: nothing tells them apart.
    assert messages == {name: f"no function {name!r} is exposed by the invoke API" for name in ("nope", "boom")}
    assert faas.stats("boom").invocations == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"args": {"a": 1}}', '"args" must be a JSON array'),
        (b'{"kwargs": [1]}', '"kwargs" must be a JSON object'),
        (b'{"args": [], "extra": 1}', "may only hold"),
        (b'{"args": [NaN]}', "not JSON"),
        (b'{"args": [1, 2, 3]}', "do not match add"),
        (b'{"kwargs": {"c": 1}}', "do not match add"),
    ],
)
async def test_bad_arguments_are_400(faas: mf.Platform, body: bytes, why: str) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await http.post("/v1/functions/add/invoke", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "BadRequest"
    assert why in response.json()["message"]
    assert faas.stats("add").invocations == 0


async def test_invoke_needs_a_json_content_type(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await http.post("/v1/functions/add/invoke", content=b'{"args": [1]}', headers={"content-type": "text/plain"})
        assert response.status_code == 415
        empty = await http.post("/v1/functions/add/invoke", content=b"", headers={"content-type": "application/json"})
        assert empty.status_code == 400  # no arguments: add needs a


async def test_an_invoke_body_over_the_limit_is_413(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True, max_body=100) as http:
        response = await invoke(http, "add", {"args": ["x" * 200]})
    assert response.status_code == 413
    assert faas.stats("add").invocations == 0


async def test_the_token(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True, token="s3cret") as http:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            response = await invoke(http, "add", {"args": [1]}, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"] == "Unauthorized"
        assert (await http.get("/v1/functions")).status_code == 401
        ok = await invoke(http, "add", {"args": [1]}, headers={"authorization": "Bearer s3cret"})
        assert ok.json() == {"result": 1}
        assert (await http.get("/text")).status_code == 200  # Http routes are the app's own business
    assert faas.stats("add").invocations == 1


async def test_function_error_is_500(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await invoke(http, "boom", {"args": ["bad input"]})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "FunctionError"
    assert body["remote_type"].endswith("Boom")
    assert body["remote_message"] == "bad input"
    assert "traceback" not in body
    assert body["invocation_id"]


async def test_a_result_that_is_not_json_is_500(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await invoke(http, "a_set", {})
    assert response.status_code == 500
    assert response.json()["error"] == "SerializationError"


async def test_timeout_is_504(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        response = await invoke(http, "sleeps", {"args": [5]})
    assert (response.status_code, response.json()["error"]) == (504, "FunctionTimeout")


async def test_crash_and_out_of_memory_are_502(faas: mf.Platform) -> None:
    async with client(faas, invoke_api=True) as http:
        crashed = await invoke(http, "exits", {"args": [3]})
        assert (crashed.status_code, crashed.json()["error"]) == (502, "ContainerCrashed")
        oom = await invoke(http, "hog", {"args": [200]})
        assert (oom.status_code, oom.json()["error"]) == (502, "OutOfMemory")


async def test_throttled_is_429_with_retry_after() -> None:
    async with app.run(queue_limit=0) as faas, client(faas, invoke_api=True) as http:
        response = await invoke(http, "add", {"args": [1]})
    assert response.status_code == 429
    assert response.json()["error"] == "Throttled"
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("kind", "status"), ERROR_STATUS)
def test_every_error_has_a_status(kind: type[mf.FaaSError], status: int) -> None:
    if kind is mf.FunctionError:
        exc: mf.FaaSError = kind("m", remote_type="builtins.ValueError", remote_message="v", remote_traceback="tb")
    else:
        exc = kind("m")
    code, payload, headers = error_payload(exc)
    assert code == status
    assert (payload["error"], payload["message"]) == (kind.__name__, "m")
    assert "traceback" not in payload
    assert ("retry-after" in headers) == (kind is mf.Throttled)


def test_cold_start_failed_reports_the_init_error() -> None:
    exc = mf.ColdStartFailed("init failed", remote_type="builtins.RuntimeError", remote_message="no db", remote_traceback="tb")
    assert error_payload(exc)[:2] == (
        502,
        {"error": "ColdStartFailed", "message": "init failed", "remote_type": "builtins.RuntimeError", "remote_message": "no db"},
    )
    assert error_payload(exc, debug=True)[1]["traceback"] == "tb"


# -- building the gateway ------------------------------------------------------------------------


def _noop(request: mf.HttpRequest) -> None:
    return None


@pytest.mark.parametrize("path", ["/healthz", "/v1/functions", "/v1/functions/x/invoke"])
def test_reserved_paths_are_refused(path: str) -> None:
    other = mf.App("reserved")
    other.function(name="f", triggers=[mf.Http("GET", path)])(_noop)
    with pytest.raises(ValueError, match="reserved"):
        make_asgi_app(other.run())


def test_colliding_routes_are_refused() -> None:
    other = mf.App("collide")
    other.function(name="f", triggers=[mf.Http("GET", "/a/{x}")])(_noop)
    other.function(name="g", triggers=[mf.Http("GET", "/a/{y}")])(_noop)
    with pytest.raises(ValueError, match="collides"):
        make_asgi_app(other.run())


@pytest.mark.parametrize(
    ("options", "field"),
    [({"expose": ["nope"]}, "expose"), ({"expose": "add"}, "expose"), ({"token": ""}, "token"), ({"max_body": -1}, "max_body")],
)
def test_bad_gateway_options(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_asgi_app(app.run(), invoke_api=True, **options)


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [("FETCH", "/a", "method"), ("GET", "a", "path"), ("GET", "/a//b", "path"), ("GET", "/{x}/{x}", "path"), ("GET", "/{a-b}", "path")],
)
def test_bad_http_triggers(method: str, path: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"Http: {field}"):
        mf.Http(method, path)


def test_envelopes() -> None:
    assert mf.Http("get", "/x") == mf.Http("GET", "/x")
    request = mf.HttpRequest(method="POST", path="/", body=b'{"a": 1}')
    assert request.json() == {"a": 1}
    with pytest.raises(ValueError):
        mf.HttpRequest(method="POST", path="/", body=b"{").json()
    assert mf.HttpResponse.json({"a": 1}, status=201).headers["content-type"] == "application/json"
    assert mf.HttpResponse(body="é").body == "é".encode()
    with pytest.raises(ValueError, match="status"):
        mf.HttpResponse(status=99)


# -- the gateway needs only GatewayPlatform ----------------------------------------------------


@attrs.frozen
class _Counts:
    invocations: int


class _FakePlatform:
    """Exactly what GatewayPlatform names, and nothing else: the gateway must make do with it."""

    def __init__(self) -> None:
        self.app = app
        self.closed = False
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def function_names(self) -> list[str]:
        return list(app.functions)

    def function(self, name: str) -> mf.FunctionSpec:
        return app.functions[name]

    async def invoke(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        return {"from": "the fake"} if name == "item" else 42

    def stats(self, name: str) -> _Counts:
        return _Counts(invocations=len(self.calls))

    def containers(self, name: str) -> list[_Counts]:
        return [_Counts(invocations=0)]


async def test_the_gateway_serves_anything_that_satisfies_gateway_platform() -> None:
    fake = _FakePlatform()
    gateway: GatewayPlatform = fake  # the type the gateway asks for
    transport = httpx.ASGITransport(app=make_asgi_app(gateway, invoke_api=True, expose=["add"]))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok", "app": "gateway"}
        assert (await http.get("/items/5")).json() == {"from": "the fake"}
        assert (await invoke(http, "add", {"args": [1], "kwargs": {"b": 2}})).json() == {"result": 42}
        detail = (await http.get("/v1/functions/add")).json()
        assert detail == {"name": "add", "routes": [], "stats": {"invocations": 2}, "containers": [{"invocations": 0}]}
        fake.closed = True
        assert (await http.get("/healthz")).status_code == 503
    (route, (request,), _), add_call = fake.calls
    assert route == "item" and isinstance(request, mf.HttpRequest) and request.path_params == {"item_id": "5"}
    assert add_call == ("add", (1,), {"b": 2})


# -- on a real uvicorn ---------------------------------------------------------------------------


async def test_serve_http_on_uvicorn() -> None:
    sigint_before = signal.getsignal(signal.SIGINT)
    async with app.run() as faas:
        async with anyio.create_task_group() as tg:
            port = await tg.start(lambda task_status: faas.serve_http("127.0.0.1", 0, invoke_api=True, task_status=task_status))
            assert signal.getsignal(signal.SIGINT) is sigint_before
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/items/9")).json()["path_params"] == {"item_id": "9"}
                assert (await invoke(http, "add", {"args": [20, 22]})).json() == {"result": 42}
                assert (await invoke(http, "boom", {"args": ["x"]})).status_code == 500
            tg.cancel_scope.cancel()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    assert signal.getsignal(signal.SIGINT) is sigint_before


async def test_serve_http_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with app.run() as faas:
            with pytest.raises(OSError):
                await faas.serve_http("127.0.0.1", taken.getsockname()[1])
