"""Small helpers shared by the tus conformance tests (plain functions, no fixtures)."""

from __future__ import annotations

import base64
import email.utils
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess
from tests.conftest import wait_for as wait_for  # the suite's one poll, re-exported

TUS: dict[str, str] = {"Tus-Resumable": "1.0.0"}
OFFSET_CT = "application/offset+octet-stream"
ID_RE = re.compile(r"^[0-9a-f]{32}$")
LOCATION_RE = re.compile(r"^http://127\.0\.0\.1:\d+/files/([0-9a-f]{32})$")
IMF_FIXDATE_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)
ALL_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "concatenation",
    "concatenation-unfinished",
    "checksum",
    "expiration",
}


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def hdrs(**extra: str) -> dict[str, str]:
    """Tus-Resumable plus extra headers given as python names (Upload_Length → Upload-Length)."""
    out = dict(TUS)
    for key, value in extra.items():
        out[key.replace("_", "-")] = value
    return out


def csv_set(value: str | None) -> set[str]:
    """Parse a comma-separated header value into a lowercase set."""
    if not value:
        return set()
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def create(
    client: httpx.Client,
    srv: ServerProcess,
    length: int | None = None,
    *,
    defer: bool = False,
    metadata: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> str:
    """POST a new upload and return its Location (asserting 201)."""
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    if defer:
        h["Upload-Defer-Length"] = "1"
    if metadata is not None:
        h["Upload-Metadata"] = metadata
    if body is not None:
        h["Content-Type"] = OFFSET_CT
    h.update(headers or {})
    r = client.post(srv.url, headers=h, content=body)
    assert r.status_code == 201, (r.status_code, r.text)
    loc = r.headers["Location"]
    assert loc
    return loc


def patch(
    client: httpx.Client,
    url: str,
    offset: int,
    data: bytes | Iterator[bytes],
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    h = {**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": str(offset)}
    h.update(headers or {})
    return client.patch(url, headers=h, content=data)


def head(client: httpx.Client, url: str) -> httpx.Response:
    return client.head(url, headers=TUS)


def offset_of(client: httpx.Client, url: str) -> int:
    r = head(client, url)
    assert r.status_code == 200, r.status_code
    return int(r.headers["Upload-Offset"])


def upload_id(location: str) -> str:
    uid = location.rstrip("/").rsplit("/", 1)[-1]
    assert ID_RE.match(uid), location
    return uid


def absolute(srv: ServerProcess, location: str) -> str:
    return location if location.startswith("http") else srv.origin + location


def parse_http_date(value: str) -> datetime:
    assert IMF_FIXDATE_RE.match(value), value
    parsed = email.utils.parsedate_to_datetime(value)
    assert parsed.tzinfo is not None
    return parsed


def now_utc() -> datetime:
    return datetime.now(UTC)


def api_state(client: httpx.Client, srv: ServerProcess, uid: str) -> Any:
    r = client.get(f"{srv.origin}/api/uploads/{uid}")
    if r.status_code != 200:
        return None
    return r.json().get("state")


def event_re(name: str, uid: str | None = None) -> str:
    """A regex for the log line of event `name` (for upload `uid`, when given)."""
    pattern = rf"\s{re.escape(name)}(\s|$)"
    return pattern + rf".*\bupload_id={uid}\b" if uid else pattern


class LogWatch:
    """Follows the log files of one or more servers (or log paths) from where they end now
    (or from their start): `wait(regex)` returns once a line matching it has been written.

    This is how a test waits for something the server did (`processing.done`,
    `upload.checkpoint`, `request.done`, ...) instead of sleeping for a while. A "nothing
    else happened" check waits for a later marker event first, then looks at `matches()`.
    Restarting a server appends to the same log file, so a watch outlives restarts.
    """

    def __init__(self, *sources: ServerProcess | Path, from_start: bool = False) -> None:
        self._pos: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self.lines: list[str] = []
        for source in sources:
            path = source if isinstance(source, Path) else source.log_path
            assert path is not None, "server not started"
            self._pos[path] = 0 if from_start or not path.exists() else path.stat().st_size
            self._partial[path] = b""

    def _read(self) -> None:
        for path, pos in self._pos.items():
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(pos)
                data = f.read()
            self._pos[path] = pos + len(data)
            *complete, self._partial[path] = (self._partial[path] + data).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]

    def matches(self, pattern: str) -> list[str]:
        """Every line written since the watch began that matches `pattern`."""
        self._read()
        rx = re.compile(pattern)
        return [line for line in self.lines if rx.search(line)]

    def wait(self, pattern: str, *, count: int = 1, timeout: float = 15.0,
             where: Callable[[str], bool] | None = None) -> str:
        """Block until `count` lines match `pattern` (and `where`, when given); return the
        count-th one."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.matches(pattern) if where is None or where(line)]
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines[-30:])
                raise AssertionError(
                    f"{len(found)}/{count} log lines /{pattern}/ within {timeout}s:\n{tail}")
            time.sleep(0.02)  # following a file: there is nothing to block on

    def wait_event(self, name: str, uid: str | None = None, *, count: int = 1,
                   timeout: float = 15.0) -> str:
        return self.wait(event_re(name, uid), count=count, timeout=timeout)


def log_field(line: str, name: str) -> str:
    """The value of `name=...` in a text log line."""
    found = re.search(rf"\b{re.escape(name)}=(\S+)", line)
    assert found, (name, line)
    return found.group(1)


def wait_log(server: ServerProcess, pattern: str, *, timeout: float = 15.0) -> str:
    """Wait until the server's whole log (from its start) has a line matching `pattern`."""
    return LogWatch(server, from_start=True).wait(pattern, timeout=timeout)


def assert_error_body(r: httpx.Response) -> None:
    """4xx responses carry a one-line plain-text reason."""
    text = r.text.strip()
    assert text, f"empty error body for {r.status_code}"
    assert "\n" not in text, text
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers


def files_under(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file())


def dir_contains_bytes(directory: Path, needle: bytes) -> bool:
    for path in files_under(directory):
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def read_response(sock: socket.socket, *, head_only: bool = False) -> RawResponse:
    """Read one HTTP/1.1 response from a raw socket (Content-Length bodies or until close)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before headers: {buf!r}")
        buf += chunk
    raw_head, rest = buf.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only:
        return RawResponse(status, headers, b"")
    length = headers.get("content-length")
    if length is not None:
        need = int(length)
        while len(rest) < need:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return RawResponse(status, headers, rest[:need])
    return RawResponse(status, headers, rest)


def raw_request(
    srv: ServerProcess,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 5.0,
) -> RawResponse:
    """Send a request with an exact, un-normalised request target."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    has_length = any(k.lower() == "content-length" for k in (headers or {}))
    if not has_length and (body or method in {"POST", "PATCH"}):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, head_only=method == "HEAD")


def serve_refusing(upload_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `tusd-py serve` with flags it must refuse at startup (it exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "tusd_py", "serve", "--upload-dir", str(upload_dir),
         "--port", "0", *flags], capture_output=True, text=True, timeout=30)
