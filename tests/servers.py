"""Real servers for the connector tests (``-m connectors``), each on a free loopback port.

Each fixture starts its server in a temporary directory, waits until it accepts
connections, yields its URL, and stops it (and checks it stopped). The Debian
packages redis-server, mosquitto and rabbitmq-server provide them (.ci/run installs
them); a test marked ``connectors`` fails, not skips, when its server is missing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


# redis (with free_port, wait_for_port and stop, which any server's fixture may use) ---------------------
def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float = 30.0) -> None:
    """Wait until ``port`` accepts connections; fail naming ``what`` if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {seconds}s")


def stop(process: subprocess.Popen[bytes], what: str) -> None:
    """Stop ``process`` (SIGTERM, then SIGKILL) and check that it is gone."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.poll() is not None, f"{what} (pid {process.pid}) is still running"


class RedisServer:
    """A redis-server of the test's own, in ``folder``, on a free loopback port, keeping its data on disk
    (an append-only file written at every command), so a restart (or a kill -9) keeps every stream."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does it)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no", "--logfile", "redis.log"]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, "redis-server")
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + 30
            while True:  # listening is not ready: it answers LOADING while it reads its append-only file
                try:
                    client.ping()
                    break
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, "redis-server")

    def kill(self) -> None:
        """kill -9 the server (what it acknowledged is in its append-only file)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """kill -9 the server and start it again on the same port and data."""
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server (``.url``), stopped after the test; ``.restart()`` kill -9s and restarts it."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# mosquitto and rabbitmq share these: a server in a session of its own, stopped with all it started ----------


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float, probe: Callable[[socket.socket], bool]) -> None:
    """Until ``probe`` holds on a connection to ``port``; RuntimeError when ``process`` exits or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                if probe(conn):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {seconds}s")


def _stop(process: subprocess.Popen[bytes], what: str, *, kill: bool = False) -> None:
    """Stop ``process`` and its whole session (SIGTERM, or SIGKILL when ``kill``), and check it ended."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what the server started and left behind (a port mapper, a resolver)
    except ProcessLookupError:
        pass
    assert process.poll() is not None, f"{what} (pid {process.pid}) did not stop"


def _executable(name: str, *places: str) -> str:
    """The first of ``places`` that exists, else ``name`` on the PATH."""
    found = next((p for p in places if os.access(p, os.X_OK)), None) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install {name}; .ci/run does it)")
    return found


class Server:
    """A server process on a loopback port: ``url``; ``stop()``, ``kill()`` (SIGKILL) and ``start()`` again on the same port and data."""

    def __init__(
        self, what: str, url: str, port: int, command: list[str], env: dict[str, str], probe: Callable[[socket.socket], bool]
    ) -> None:
        self.what = what
        self.url = url
        self.port = port
        self._command = command
        self._env = env
        self._probe = probe
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def start(self, seconds: float = 120.0) -> None:
        began = time.monotonic()
        log = open(pathlib.Path(self._env["SERVER_DIR"]) / "server.log", "ab")  # noqa: SIM115 - the server holds it
        with log:
            self.process = subprocess.Popen(
                self._command, env=self._env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        _wait_for_port(self.port, self.process, self.what, seconds, self._probe)
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, self.what)

    def kill(self) -> None:
        if self.process is not None:
            _stop(self.process, self.what, kill=True)


# mosquitto


def _mosquitto(directory: pathlib.Path) -> Server:
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
        f"persistence true\npersistence_location {directory}/\nlog_dest file {directory}/mosquitto.log\n"
        "max_queued_messages 100000\nmax_inflight_messages 100\n"
    )
    command = [_executable("mosquitto", "/usr/sbin/mosquitto"), "-c", str(config)]
    env = {**os.environ, "SERVER_DIR": str(directory)}
    return Server("mosquitto", f"mqtt://127.0.0.1:{port}", port, command, env, lambda conn: True)


@contextlib.contextmanager
def running_mosquitto(directory: pathlib.Path) -> Iterator[Server]:
    """A mosquitto broker in ``directory`` (its persistence there too) while the block runs."""
    server = _mosquitto(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[Server]:
    """A mosquitto broker for the whole session, with persistence in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as directory, running_mosquitto(pathlib.Path(directory)) as server:
        yield server


@pytest.fixture
def own_mosquitto(tmp_path: pathlib.Path) -> Iterator[Server]:
    """A mosquitto broker of the test's own, for tests that stop and restart it."""
    with running_mosquitto(tmp_path) as server:
        yield server


# rabbitmq

_RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def _amqp_answers(conn: socket.socket) -> bool:
    """Whether the broker answers the AMQP 0-9-1 protocol header with a frame (Connection.Start)."""
    conn.sendall(b"AMQP\x00\x00\x09\x01")
    return len(conn.recv(8)) > 0


def _rabbitmq(directory: pathlib.Path) -> tuple[Server, subprocess.Popen[bytes]]:
    """A RabbitMQ node in ``directory``, with a port mapper (epmd) of its own on a free port."""
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (directory / "rabbitmq.conf").write_text("loopback_users = none\n")
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "rabbitmq-env.conf").write_text("")
    env = {
        **os.environ,
        "SERVER_DIR": str(directory),
        "HOME": str(directory),  # the Erlang cookie is written here
        "RABBITMQ_NODENAME": f"microfaas-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
    }
    epmd = subprocess.Popen(
        [_executable("epmd", "/usr/bin/epmd"), "-port", str(epmd_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    command = [_executable("rabbitmq-server", _RABBITMQ)]
    server = Server("rabbitmq-server", f"amqp://guest:guest@127.0.0.1:{port}/", port, command, env, _amqp_answers)
    return server, epmd


@contextlib.contextmanager
def running_rabbitmq(directory: pathlib.Path) -> Iterator[Server]:
    """A RabbitMQ node in ``directory`` while the block runs (``server.start_seconds``: how long it took to boot)."""
    server, epmd = _rabbitmq(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        _stop(epmd, "epmd")


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[Server]:
    """A RabbitMQ node for the whole session (it takes seconds to start), in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="rabbitmq-") as directory, running_rabbitmq(pathlib.Path(directory)) as server:
        yield server


@pytest.fixture
def own_rabbitmq(tmp_path: pathlib.Path) -> Iterator[Server]:
    """A RabbitMQ node of the test's own, for the test that stops and restarts it."""
    with running_rabbitmq(tmp_path) as server:
        yield server
