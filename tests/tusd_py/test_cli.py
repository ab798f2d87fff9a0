"""Command line: `python -m tusd_py serve` flags, TUSD_PY_* env vars, startup log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port
from tests.tusd_py.helpers import TUS, csv_set, upload_id

FLAGS = [
    "--host",
    "--port",
    "--base-path",
    "--upload-dir",
    "--max-size",
    "--expiration",
    "--cors-origins",
    "--behind-proxy",
    "--network-timeout",
    "--log-level",
    "--log-format",
]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_PY_")}
    env.update(extra)
    return env


class EnvServer:
    """A server started with a custom environment (ServerProcess strips TUSD_PY_*)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.log_path = tmp / f"env-server-{port}.log"
        cmd = [sys.executable, "-m", "tusd_py", "serve", "--upload-dir", str(tmp / "data"), *args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not listen:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def env_server(tmp_path: Path) -> Iterator[Callable[..., EnvServer]]:
    started: list[EnvServer] = []

    def _start(*args: str, port: int | None = None, **env: str) -> EnvServer:
        p = port or free_port()
        argv = list(args)
        if "TUSD_PY_PORT" not in env:
            argv = ["--port", str(p), *argv]
        if "TUSD_PY_HOST" not in env:
            argv = ["--host", "127.0.0.1", *argv]
        d = tmp_path / f"s{len(started)}"
        d.mkdir()
        srv = EnvServer(d, argv, clean_env(**env), p)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tusd_py", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def test_serve_help_lists_all_flags() -> None:
    out = run_cli("serve", "--help")
    assert out.returncode == 0, out.stderr
    for flag in FLAGS:
        assert flag in out.stdout, flag
    assert "text" in out.stdout and "json" in out.stdout


def test_top_level_help() -> None:
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "notaport"],
        ["serve", "--log-format", "xml"],
        ["serve", "--max-size", "abc"],
        ["serve", "--no-such-flag"],
    ],
)
def test_invalid_arguments_exit_nonzero(args: list[str]) -> None:
    out = run_cli(*args)
    assert out.returncode != 0
    assert out.stderr.strip()


def test_startup_log_contains_upload_url(server: ServerProcess) -> None:
    assert server.url in server.log()


def test_env_max_size(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server(TUSD_PY_MAX_SIZE="12345")
    r = httpx.options(srv.url)
    assert r.headers["Tus-Max-Size"] == "12345"
    big = httpx.post(srv.url, headers={**TUS, "Upload-Length": "12346"})
    assert big.status_code == 413


def test_flag_overrides_env(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server("--max-size", "777", TUSD_PY_MAX_SIZE="12345")
    assert httpx.options(srv.url).headers["Tus-Max-Size"] == "777"


def test_env_port(env_server: Callable[..., EnvServer]) -> None:
    port = free_port()
    srv = env_server(port=port, TUSD_PY_PORT=str(port))
    r = httpx.options(f"http://127.0.0.1:{port}/files/")
    assert r.status_code == 204
    assert f"http://127.0.0.1:{port}/files/" in srv.log()


def test_env_expiration_zero(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server(TUSD_PY_EXPIRATION="0")
    assert "expiration" not in csv_set(httpx.options(srv.url).headers.get("Tus-Extension"))


def test_env_base_path(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server(TUSD_PY_BASE_PATH="/up/")
    r = httpx.options(f"http://127.0.0.1:{srv.port}/up/")
    assert r.status_code == 204


def test_base_path_flag(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server("--base-path", "/uploads/")
    base = f"http://127.0.0.1:{srv.port}/uploads/"
    assert base in srv.log()
    assert httpx.options(base).status_code == 204
    r = httpx.post(base, headers={**TUS, "Upload-Length": "3"})
    assert r.status_code == 201
    loc = r.headers["Location"]
    assert loc.startswith(base)
    uid = upload_id(loc)
    p = httpx.patch(
        loc,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=b"abc",
    )
    assert p.status_code == 204
    assert httpx.get(loc).content == b"abc"
    assert httpx.head(f"http://127.0.0.1:{srv.port}/files/{uid}", headers=TUS).status_code == 404


def test_base_path_without_slashes(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server("--base-path", "tus")
    base = f"http://127.0.0.1:{srv.port}/tus/"
    r = httpx.post(base, headers={**TUS, "Upload-Length": "3"})
    assert r.status_code == 201
    assert r.headers["Location"].startswith(base)


def test_log_format_json(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server("--log-format", "json")
    httpx.post(srv.url, headers={**TUS, "Upload-Length": "3"})
    time.sleep(0.3)
    parsed = []
    for line in srv.log().splitlines():
        if line.strip().startswith("{"):
            parsed.append(json.loads(line))
    assert parsed, srv.log()
    assert all(isinstance(p, dict) for p in parsed)
    assert any(srv.url in json.dumps(p) for p in parsed), srv.log()


def test_sigterm_exits_promptly(env_server: Callable[..., EnvServer]) -> None:
    srv = env_server()
    assert httpx.options(srv.url).status_code == 204
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(10)
    assert time.monotonic() - started < 10
