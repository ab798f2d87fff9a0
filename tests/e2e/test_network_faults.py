"""End-to-end network-fault tests, speaking HTTP/1.1 by hand over raw sockets.

Every test asserts what a tus client can observe: status codes, the HEAD offset,
and the sha256 of the finished upload downloaded with GET.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

KiB = 1024
MiB = 1024 * KiB
TUS = {"Tus-Resumable": "1.0.0"}
# The client cannot know what the kernels delivered before a cut: allow this much loss.
SLACK = 2 * MiB
# The server checkpoints (fsync + commit) at least every 32 MiB during one PATCH.
CHECKPOINT = 32 * MiB
NETWORK_TIMEOUT = 3.0  # the `server` fixture runs with --network-timeout 3


# --------------------------------------------------------------------------- data


class Pattern:
    """Deterministic content of `size` bytes, cheap to regenerate at any offset.

    Made of 1 MiB blocks: one random block per seed, each copy stamped with its
    block index, so misplaced or duplicated blocks change the sha256.
    """

    def __init__(self, size: int, seed: str) -> None:
        self.size = size
        self._base = random.Random(seed).randbytes(MiB)

    def block(self, index: int) -> bytes:
        return struct.pack(">Q", index) + self._base[8:]

    def chunks(self, start: int = 0, end: int | None = None,
               chunk: int = MiB) -> Iterator[bytes]:
        end = self.size if end is None else end
        pos = start
        while pos < end:
            index, within = divmod(pos, MiB)
            take = min(MiB - within, end - pos, chunk)
            yield self.block(index)[within:within + take]
            pos += take

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.chunks(start, end))

    def sha256(self) -> str:
        return sha256_of(self.chunks())


def sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ----------------------------------------------------------------- plain requests


def create_upload(server: ServerProcess, length: int, metadata: str | None = None) -> str:
    headers = {**TUS, "Upload-Length": str(length)}
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    r = httpx.post(server.url, headers=headers, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    location = r.headers["Location"]
    assert re.fullmatch(re.escape(server.url) + r"[0-9a-f]{32}", location), location
    return location


def head_offset(url: str, timeout: float = 10.0) -> int:
    r = httpx.head(url, headers=TUS, timeout=timeout)
    assert r.status_code == 200, r.status_code
    assert r.headers.get("Cache-Control") == "no-store"
    return int(r.headers["Upload-Offset"])


def download_sha256(url: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200, r.status_code
        for c in r.iter_bytes(MiB):
            h.update(c)
            size += len(c)
    return h.hexdigest(), size


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def wait_state(server: ServerProcess, url: str, states: set[str],
               timeout: float = 10.0) -> dict[str, Any]:
    api = f"{server.origin}/api/uploads/{upload_id(url)}"
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = httpx.get(api, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        info = r.json()
        if info["state"] in states:
            return info
        time.sleep(0.1)
    raise AssertionError(f"upload never reached {states}: {info}")


# -------------------------------------------------------------------- raw HTTP/1.1


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class RawConn:
    """One hand-driven HTTP/1.1 connection."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        self.path = parts.path
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def send_head(self, method: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {self.path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def start_patch(self, offset: int, length: int,
                    extra: dict[str, str] | None = None) -> None:
        self.send_head("PATCH", {
            **TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Content-Length": str(length),
            **(extra or {}),
        })

    def send_chunks(self, chunks: Iterable[bytes]) -> int:
        """Send until done or the server stops listening; returns bytes fully sent."""
        sent = 0
        for c in chunks:
            try:
                self.sock.sendall(c)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(c)
        return sent

    def _fill(self) -> bool:
        data = self.sock.recv(256 * KiB)
        self._buf += data
        return bool(data)

    def read_response(self, timeout: float = 15.0, *, head: bool = False) -> Response:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self._buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response: {self._buf!r}")
        raw, _, self._buf = self._buf.partition(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if head or status in (204, 304) or status < 200:
            pass
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(self._buf) < n and self._fill():
                pass
            body, self._buf = self._buf[:n], self._buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while not self._buf.endswith(b"0\r\n\r\n") and self._fill():
                pass
            body = self._buf  # not decoded: the tests never look at chunked bodies
            self._buf = b""
        else:
            while self._fill():
                pass
            body, self._buf = self._buf, b""
        return Response(status, headers, body)

    def wait_end(self, timeout: float) -> Response | None:
        """Wait for the server to end the exchange: a response, or None if it just closed."""
        self.sock.settimeout(timeout)
        try:
            if not self._buf and not self._fill():
                return None
            return self.read_response(timeout)
        except ConnectionError:
            return None

    def close(self) -> None:
        """Orderly close: FIN after everything buffered has been sent."""
        self.sock.close()

    def abort(self) -> None:
        """SO_LINGER 0 close: the kernel sends RST and drops unsent data."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def patch(url: str, offset: int, chunks: Iterable[bytes], length: int,
          extra: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
    """A complete, well-behaved PATCH; returns the server's response."""
    conn = RawConn(url, timeout=timeout)
    try:
        conn.start_patch(offset, length, extra)
        conn.send_chunks(chunks)
        return conn.read_response(timeout)
    finally:
        conn.close()


def resume_and_check(server: ServerProcess, url: str, data: Pattern, offset: int) -> None:
    """Finish the upload from `offset` and check the downloaded bytes."""
    r = patch(url, offset, data.chunks(offset), data.size - offset)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == data.size
    assert head_offset(url) == data.size
    sha, size = download_sha256(url)
    assert size == data.size
    assert sha == data.sha256(), "stored bytes differ from the uploaded bytes"
    wait_state(server, url, {"processed"})


def assert_within_slack(offset: int, sent: int, slack: int = SLACK) -> None:
    print(f"sent {sent} bytes, server kept {offset} (lost {sent - offset})")
    assert offset <= sent, f"server claims {offset} bytes but only {sent} were sent"
    assert offset >= sent - slack, f"server kept {offset} of {sent} sent bytes (lost too many)"


# -------------------------------------------------------------------------- tests


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_dies_mid_patch(server: ServerProcess, how: str) -> None:
    data = Pattern(16 * MiB, seed=f"dies-{how}")
    url = create_upload(server, data.size)

    conn = RawConn(url)
    conn.start_patch(0, data.size)
    sent = conn.send_chunks(data.chunks(0, 8 * MiB))
    assert sent == 8 * MiB
    if how == "fin":
        conn.close()  # the kernel still delivers everything, then FIN
        time.sleep(1.0)
    else:
        time.sleep(1.0)  # let the server drain its receive buffer: RST discards it
        conn.abort()

    offset = head_offset(url)
    assert_within_slack(offset, sent)
    resume_and_check(server, url, data, offset)


def test_half_open_patch_is_taken_over_by_head(server: ServerProcess) -> None:
    """Client stops sending without FIN; a new request must not wait for a timeout."""
    data = Pattern(16 * MiB, seed="half-open")
    url = create_upload(server, data.size)

    old = RawConn(url)
    old.start_patch(0, data.size)
    sent = old.send_chunks(data.chunks(0, 6 * MiB))
    assert sent == 6 * MiB
    time.sleep(0.5)  # well below --network-timeout 3: the old PATCH still holds the upload

    t0 = time.monotonic()
    offset = head_offset(url, timeout=10)
    elapsed = time.monotonic() - t0
    print(f"HEAD behind a half-open PATCH answered in {elapsed:.3f}s")
    assert elapsed < 2.0, f"HEAD took {elapsed:.2f}s behind a half-open PATCH"
    assert_within_slack(offset, sent)

    resume_and_check(server, url, data, offset)

    # Nobody died on the old connection: it hears that it was interrupted.
    r = old.read_response(timeout=5)
    assert r.status == 423, (r.status, r.headers, r.body)
    old.close()


def test_newer_patch_takes_over_idle_patch(server: ServerProcess) -> None:
    """An older PATCH has sent its headers but no body yet; a newer one at the same offset
    stops it and wins."""
    size = 4 * MiB
    a, b = Pattern(size, seed="idle-a"), Pattern(size, seed="idle-b")
    url = create_upload(server, size)

    old = RawConn(url)
    old.start_patch(0, size)
    time.sleep(0.3)

    t0 = time.monotonic()
    r = patch(url, 0, b.chunks(), size, timeout=15)
    elapsed = time.monotonic() - t0
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == size
    assert elapsed < 2.0 + NETWORK_TIMEOUT / 2, f"newer PATCH waited {elapsed:.2f}s"

    r_old = old.read_response(timeout=5)
    assert r_old.status == 423, (r_old.status, r_old.headers, r_old.body)
    old.close()

    sha, n = download_sha256(url)
    assert (sha, n) == (b.sha256(), size)
    assert sha != a.sha256()


def test_concurrent_patches_do_not_interleave(server: ServerProcess) -> None:
    """Two PATCHes at offset 0 race on one upload: bytes must come from one writer only."""
    size = 8 * MiB
    a, b = Pattern(size, seed="race-a"), Pattern(size, seed="race-b")
    url = create_upload(server, size)

    conns = {"a": RawConn(url), "b": RawConn(url)}
    results: dict[str, Response | BaseException] = {}
    go = threading.Barrier(2)

    def run(name: str, data: Pattern) -> None:
        try:
            conn = conns[name]
            conn.start_patch(0, size)
            go.wait(5)
            conn.send_chunks(data.chunks(chunk=128 * KiB))
            results[name] = conn.read_response(timeout=15)
        except BaseException as e:  # reported below, never raised in the thread
            results[name] = e

    threads = [threading.Thread(target=run, args=(n, d)) for n, d in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in conns.values():
        c.close()
    assert not any(t.is_alive() for t in threads)

    statuses: dict[str, int] = {}
    for name, res in results.items():
        assert isinstance(res, Response), f"PATCH {name}: no response: {res!r}"
        statuses[name] = res.status
    assert set(statuses.values()) <= {204, 409, 423}, statuses
    assert list(statuses.values()).count(204) <= 1, statuses
    for res in results.values():
        if isinstance(res, Response) and res.status == 409:
            assert "upload-offset" in res.headers, res.headers

    offset = head_offset(url)
    print(f"statuses {statuses}, offset {offset}")
    winner = [n for n, s in statuses.items() if s == 204]
    if winner:
        assert offset == size
        sha, _ = download_sha256(url)
        assert sha == {"a": a, "b": b}[winner[0]].sha256(), "content is not the 204 writer's"
        return

    # Nobody finished: the stored prefix must still be one writer's bytes. Finish with
    # A's remainder; the result is A, or B's prefix + A's rest, never a mix.
    if offset < size:
        r = patch(url, offset, a.chunks(offset), size - offset)
        assert r.status == 204, (r.status, r.headers, r.body)
    sha, _ = download_sha256(url)
    candidates = {
        a.sha256(),
        sha256_of([*b.chunks(0, offset), *a.chunks(offset)]),
    }
    assert sha in candidates, f"interleaved content (statuses {statuses}, offset {offset})"


def test_slow_trickle_then_silence(server: ServerProcess) -> None:
    data = Pattern(64 * KiB, seed="trickle")
    url = create_upload(server, data.size)

    conn = RawConn(url)
    conn.start_patch(0, data.size)
    sent = 0
    # 1 KiB every 0.5 s for 4 s: gaps well under the 3 s timeout, total time over it.
    for piece in data.chunks(0, 8 * KiB, chunk=KiB):
        time.sleep(0.5)
        conn.sock.sendall(piece)
        sent += len(piece)
    last_send = time.monotonic()

    # Now silence: the server must end the request by itself.
    try:
        end = conn.wait_end(timeout=NETWORK_TIMEOUT + 5)
    except TimeoutError:
        pytest.fail("server never ended a PATCH whose client went silent")
    silent = time.monotonic() - last_send
    conn.close()
    print(f"server ended the silent PATCH after {silent:.2f}s with {end}")
    assert silent >= NETWORK_TIMEOUT - 1.0, f"server gave up after only {silent:.2f}s"
    assert silent <= NETWORK_TIMEOUT + 3.0, f"server took {silent:.2f}s to give up"
    if end is not None:
        assert end.status not in (204, 200), end.status

    assert head_offset(url) == sent, "trickled bytes were not all kept"
    resume_and_check(server, url, data, sent)


def test_server_kill9_mid_patch_then_resume(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--network-timeout", "3")
    data = Pattern(200 * MiB, seed="kill9")
    url = create_upload(server, data.size)

    conn = RawConn(url, timeout=30)
    conn.start_patch(0, data.size)
    sent = conn.send_chunks(data.chunks(0, 120 * MiB))
    assert sent == 120 * MiB
    time.sleep(0.5)  # let the server catch up with what is in flight
    server.kill()
    conn.abort()

    server.start()
    offset = head_offset(url)
    print(f"after kill -9: sent {sent}, offset {offset} (lost {(sent - offset) / MiB:.1f} MiB)")
    assert 0 < offset <= sent, (offset, sent)
    assert offset >= sent - CHECKPOINT - SLACK, (
        f"after kill -9 only {offset} of {sent} bytes survived (more than a checkpoint lost)"
    )
    resume_and_check(server, url, data, offset)
    server.stop()
    shutil.rmtree(server.upload_dir, ignore_errors=True)
