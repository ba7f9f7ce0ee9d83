"""The ``microfaas`` command, run as a subprocess: serve, invoke, demo, --help and exit statuses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
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
    for option in ("--json", "NAME", "MODULE:APP", "--debug"):
        assert option in invoke
    assert microfaas("demo", "--help").returncode == 0


def test_invoke_prints_the_result_as_json(shop: Path) -> None:
    done = microfaas("invoke", "shop:app", "add", "--json", '{"args": [2], "kwargs": {"b": 40}}', cwd=shop)
    assert (done.returncode, json.loads(done.stdout)) == (0, 42), done.stderr
    from_stdin = microfaas("invoke", "shop:app", "add", "--json", "-", cwd=shop, stdin='{"args": [1, 1]}')
    assert (from_stdin.returncode, json.loads(from_stdin.stdout)) == (0, 2), from_stdin.stderr


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
        (["invoke", "shop:app"], "required"),
        (["launch"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(shop: Path, args: list[str], message: str) -> None:
    done = microfaas(*args, cwd=shop)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_demo_prints_cold_and_warm_starts() -> None:
    done = microfaas("demo")
    assert done.returncode == 0, done.stderr
    assert re.search(r"hello\s+hello\('world'\)\s+cold\s+\d+\.\d", done.stdout), done.stdout
    assert re.search(r"hello\s+hello\('again'\)\s+warm\s+\d+\.\d", done.stdout), done.stdout
    assert "latency ms" in done.stdout


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_until_a_signal(shop: Path, stop: signal.Signals) -> None:
    env = {**os.environ, "MICROFAAS_TOKEN": "tok"}
    server = subprocess.Popen(
        [sys.executable, "-m", "microfaas", "serve", "shop:app", "--port", "0", "--invoke-api", "--log-level", "warning"],
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
        assert match, (line, server.stderr.read() if server.poll() is not None else "")
        with httpx.Client(base_url=match.group(1)) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            assert http.get("/price/A-1").json() == {"sku": "A-1", "price": 9.5}
            assert http.post("/v1/functions/add/invoke", json={"args": [1, 2]}).status_code == 401
            ok = http.post("/v1/functions/add/invoke", json={"args": [1, 2]}, headers={"authorization": "Bearer tok"})
            assert ok.json() == {"result": 3}
        server.send_signal(stop)
        assert server.wait(timeout=30) == 0
        assert f"{stop.name}, stopping" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()
