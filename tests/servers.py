"""Real servers for the connector tests (``-m connectors``), each on a free loopback port.

Each fixture starts its server in a temporary directory, waits until it accepts
connections, yields its URL, and stops it (and checks it stopped). The Debian
packages redis-server, mosquitto and rabbitmq-server provide them (.ci/run installs
them); a test marked ``connectors`` fails, not skips, when its server is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
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
