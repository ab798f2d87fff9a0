"""Shared fixtures: a real `tusd-py serve` process on a real loopback socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.s3_support import s3_server  # noqa: F401  (session fixture: a real S3 server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 8.0, interval: float = 0.1) -> Any:
    """Poll predicate() until it is truthy; return its last value.

    The suite's one poll, for states nothing signals: a child process listening or gone,
    a file or key appearing, a store reconnecting. Whatever the server logs is waited for
    with tests.tusd_py.helpers.LogWatch instead, a test-side receiver with a Condition."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None,
                   timeout: float = 20.0) -> bool:
    """Wait until something accepts connections on 127.0.0.1:port (False: `proc` exited, or
    the timeout)."""
    def ready() -> bool | None:
        if proc is not None and proc.poll() is not None:
            return None  # gone: stop waiting
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    return bool(wait_for(lambda: ready() is not False, timeout, interval=0.05)
                and ready())


@dataclass
class ServerProcess:
    """A `python -m tusd_py serve` child process; `url` is the tus endpoint."""

    upload_dir: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/files/"

    def start(self, timeout: float = 20.0) -> None:
        self.log_path = self.upload_dir.parent / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        cmd = [
            sys.executable, "-m", "tusd_py", "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--upload-dir", str(self.upload_dir), *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_PY_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_listening(self.port, self.proc, timeout):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log()}")
        raise RuntimeError(f"server did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no shutdown handlers run."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server("--max-size", "100") starts a fresh server with those flags."""
    started: list[ServerProcess] = []

    def _start(*args: str, upload_dir: Path | None = None) -> ServerProcess:
        server = ServerProcess(upload_dir=upload_dir or tmp_path / f"data{len(started)}",
                               args=list(args))
        server.start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A default server (embedded storage) with a short network timeout."""
    return start_server("--network-timeout", "3")


_SKIP_VERDICT = pytest.StashKey[str]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is never a pass: any skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        session.exitstatus = 1
        session.config.stash[_SKIP_VERDICT] = (
            f"FAILED: {skipped} test(s) skipped; skips are not passes")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The verdict on skips is the last line of the output, after pytest's summary."""
    verdict = config.stash.get(_SKIP_VERDICT, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if verdict and reporter:
        reporter.write_line(verdict, red=True)


@dataclass
class RedisServer:
    """A redis-server of our own (AOF on, so a restart keeps state), or REDIS_URL."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    external_url: str | None = None

    @property
    def url(self) -> str:
        return self.external_url or f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.external_url:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        if not wait_for(pong, timeout=10, interval=0.05):
            raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushdb()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Session-wide Redis. With REDIS_URL set, that server is used (and flushed!)."""
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"),
                         external_url=os.environ.get("REDIS_URL"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url
