"""The ``microfaas`` command, run as a subprocess: serve, invoke, demo, --help and exit statuses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SHOP = textwrap.dedent(
    """
    import microfaas as mf

    app = mf.App("shop")

    @app.function
    def add(a, b=0):
        return a + b

    @app.function
    def fails(message):
        raise KeyError(message)

    @app.function
    def greet(name):
        return f"hello, {name}"

    @app.function
    def a_set():
        return {1}

    @app.function(triggers=[mf.Http("GET", "/price/{sku}")])
    def price(request):
        return {"sku": request.path_params["sku"], "price": 9.5}

    not_an_app = 42
    """
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(SHOP)
    return tmp_path


def microfaas(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microfaas", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_every_command_and_option() -> None:
    top = microfaas("--help")
    assert top.returncode == 0
    for command in ("serve", "invoke", "demo"):
        assert command in top.stdout
    serve = microfaas("serve", "--help").stdout
    for option in ("--host", "--port", "--token", "--invoke-api", "--expose", "--debug", "--max-body", "--log-level", "MODULE:APP"):
        assert option in serve
    invoke = microfaas("invoke", "--help").stdout
    for option in ("--json", "NAME", "MODULE:APP", "ARG", "--debug", "--url", "--token"):
        assert option in invoke
    assert "Without --url, it starts a platform of its own" in invoke
    assert microfaas("demo", "--help").returncode == 0


def test_invoke_prints_the_result_as_json(shop: Path) -> None:
    done = microfaas("invoke", "shop:app", "add", "--json", '{"args": [2], "kwargs": {"b": 40}}', cwd=shop)
    assert (done.returncode, json.loads(done.stdout)) == (0, 42), done.stderr
    from_stdin = microfaas("invoke", "shop:app", "add", "--json", "-", cwd=shop, stdin='{"args": [1, 1]}')
    assert (from_stdin.returncode, json.loads(from_stdin.stdout)) == (0, 2), from_stdin.stderr


@pytest.mark.parametrize(
    ("words", "result"),
    [
        (["shop:app", "add", "2", "3"], 5),  # ARGs are JSON ...
        (["./shop.py", "greet", "ada"], "hello, ada"),  # ... or strings; a file names the module
        (["shop.py:app", "greet", '"2"'], "hello, 2"),
    ],
)
def test_invoke_takes_positional_arguments_and_files(shop: Path, words: list[str], result: object) -> None:
    done = microfaas("invoke", *words, cwd=shop)
    assert (done.returncode, json.loads(done.stdout)) == (0, result), done.stderr


def test_invoke_reports_a_platform_error_with_status_1(shop: Path) -> None:
    failed = microfaas("invoke", "shop:app", "fails", "--json", '{"args": ["sku-1"]}', cwd=shop)
    assert failed.returncode == 1
    error = json.loads(failed.stderr.strip().splitlines()[-1])
    assert error["error"] == "FunctionError"
    assert error["remote_type"] == "builtins.KeyError"
    assert failed.stdout == ""
    unknown = microfaas("invoke", "shop:app", "nope", cwd=shop)
    assert unknown.returncode == 1
    assert json.loads(unknown.stderr)["error"] == "UnknownFunction"
    not_json = microfaas("invoke", "shop:app", "a_set", cwd=shop)
    assert (not_json.returncode, json.loads(not_json.stderr)["error"]) == (1, "SerializationError")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["invoke", "shop:app", "add", "--json", "{nope"], "not valid JSON"),
        (["invoke", "shop:app", "add", "--json", '{"args": [1, 2, 3]}'], "do not match"),
        (["invoke", "nowhere:app", "add"], "no module named 'nowhere'"),
        (["invoke", "shop:missing", "add"], "no attribute 'missing'"),
        (["invoke", "shop:not_an_app", "add"], "not a microfaas App"),
        (["serve", "shop:app", "--token", "t"], "add --invoke-api"),
        (["serve", "shop:app", "--invoke-api", "--expose", "nope"], "--expose names no function"),
        (["invoke", "shop:app"], "name the app and the function"),
        (["invoke", "shop:app", "add", "1", "--json", "{}"], "not both"),
        (["invoke", "./nowhere.py", "add"], "no file './nowhere.py'"),
        (["invoke", "my-shop.py", "add"], "rename the file"),
        (["invoke", "--token", "t", "shop:app", "add"], "--token is for the server at --url"),
        (["invoke", "--url", "ftp://x", "add"], "http:// or https://"),
        (["invoke", "--url", "http://127.0.0.1:8000", "shop:app", "add"], "name only the function"),
        (["serve", "shop.txt"], "not a .py file"),
        (["launch"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(shop: Path, args: list[str], message: str) -> None:
    (shop / "my-shop.py").write_text(SHOP)
    (shop / "shop.txt").write_text("")
    done = microfaas(*args, cwd=shop)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("microfaas"), done.stderr  # one line, no usage or traceback


def test_serve_without_the_http_extra_names_the_pip_command(shop: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "hide-uvicorn"
    hidden.mkdir()
    (hidden / "uvicorn.py").write_text("raise ImportError('uvicorn is hidden for this test')\n")
    done = subprocess.run(
        [sys.executable, "-m", "microfaas", "serve", "shop:app"],
        cwd=shop,
        env={**os.environ, "PYTHONPATH": str(hidden)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == "microfaas serve: error: serving HTTP needs the http extra: pip install 'microfaas[http]'\n"


def test_serve_on_a_port_in_use_names_the_port(shop: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = microfaas("serve", "shop:app", "--port", str(port), cwd=shop)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "--port" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_invoke_url_with_no_server_there_says_so(shop: Path) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    done = microfaas("invoke", "--url", f"http://127.0.0.1:{port}", "add", "1", cwd=shop)
    assert done.returncode == 1
    assert done.stderr.startswith(f"microfaas invoke: error: cannot reach http://127.0.0.1:{port}") and "--invoke-api" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_demo_prints_cold_and_warm_starts() -> None:
    done = microfaas("demo")
    assert done.returncode == 0, done.stderr
    assert re.search(r"hello\s+hello\('world'\)\s+cold\s+\d+\.\d", done.stdout), done.stdout
    assert re.search(r"hello\s+hello\('again'\)\s+warm\s+\d+\.\d", done.stdout), done.stdout
    assert "latency ms" in done.stdout


@contextlib.contextmanager
def serving(shop: Path, target: str, *options: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``microfaas serve TARGET --port 0 OPTIONS`` in ``shop``: the process and the address it printed; stopped after."""
    server = subprocess.Popen(
        [sys.executable, "-m", "microfaas", "serve", target, "--port", "0", *options, "--log-level", "warning"],
        cwd=shop,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"serving app 'shop' on (http://127\.0\.0\.1:\d+)", line)
        assert match, (line, server.stderr.read() if server.poll() is not None and server.stderr else "")
        yield server, match.group(1)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(("stop", "target"), [(signal.SIGINT, "shop:app"), (signal.SIGTERM, "shop.py:app")])
def test_serve_until_a_signal(shop: Path, stop: signal.Signals, target: str) -> None:
    with serving(shop, target, "--invoke-api", env={**os.environ, "MICROFAAS_TOKEN": "tok"}) as (server, url):
        with httpx.Client(base_url=url) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            assert http.get("/price/A-1").json() == {"sku": "A-1", "price": 9.5}
            assert http.post("/v1/functions/add/invoke", json={"args": [1, 2]}).status_code == 401
            ok = http.post("/v1/functions/add/invoke", json={"args": [1, 2]}, headers={"authorization": "Bearer tok"})
            assert ok.json() == {"result": 3}
        server.send_signal(stop)
        assert server.wait(timeout=30) == 0
        assert server.stderr is not None and f"{stop.name}, stopping" in server.stderr.read()


def test_invoke_url_calls_a_running_server(shop: Path) -> None:
    with serving(shop, "./shop.py", "--invoke-api", "--token", "tok") as (_, url):
        done = microfaas("invoke", "--url", url, "--token", "tok", "add", "2", "3", cwd=shop)
        assert (done.returncode, json.loads(done.stdout)) == (0, 5), done.stderr
        from_env = subprocess.run(
            [sys.executable, "-m", "microfaas", "invoke", "--url", url, "greet", "--json", '{"kwargs": {"name": "ada"}}'],
            env={**os.environ, "MICROFAAS_TOKEN": "tok"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (from_env.returncode, json.loads(from_env.stdout)) == (0, "hello, ada"), from_env.stderr
        with httpx.Client(base_url=url, headers={"authorization": "Bearer tok"}) as http:
            assert http.get("/v1/functions/add").json()["stats"]["invocations"] == 1  # the server's own platform made the call
        no_token = microfaas("invoke", "--url", url, "add", "1", cwd=shop)
        assert no_token.returncode == 2 and "needs a bearer token: pass --token or set $MICROFAAS_TOKEN" in no_token.stderr
        unknown = microfaas("invoke", "--url", url, "--token", "tok", "nope", cwd=shop)
        assert unknown.returncode == 1 and json.loads(unknown.stderr)["error"] == "UnknownFunction"
        failed = microfaas("invoke", "--url", url, "--token", "tok", "fails", "sku-1", cwd=shop)
        assert failed.returncode == 1 and json.loads(failed.stderr)["remote_type"] == "builtins.KeyError"
        misfit = microfaas("invoke", "--url", url, "--token", "tok", "add", "1", "2", "3", cwd=shop)
        assert misfit.returncode == 2 and "do not match" in misfit.stderr
