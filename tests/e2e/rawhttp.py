"""Raw-socket HTTP/1.1 helpers shared by the end-to-end tests."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

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


def download_sha256(url: str, timeout: float = 60) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=timeout) as r:
        assert r.status_code == 200, f"GET {url} -> {r.status_code}: {r.read()[:500]!r}"
        for c in r.iter_bytes(MiB):
            h.update(c)
            size += len(c)
    return h.hexdigest(), size


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def wait_state(server: ServerProcess, url: str, states: set[str],
               timeout: float = 10.0) -> dict[str, Any]:
    """The upload's record once the store says it is in one of `states`. Polled through the
    shared poll: with several instances the event may be in any instance's log, and this
    one reads the store every instance writes to."""
    from tests.conftest import wait_for

    api = f"{server.origin}/api/uploads/{upload_id(url)}"
    info: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal info
        r = httpx.get(api, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        info = r.json()
        return info["state"] in states

    if not wait_for(reached, timeout=timeout):
        raise AssertionError(f"upload never reached {states}: {info}")
    return info


# -------------------------------------------------------------------- raw HTTP/1.1


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def _proc_addr(host: str, port: int) -> str:
    """127.0.0.1:8080 as /proc/net/tcp spells it: 0100007F:1F90."""
    return f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"


def _tcp_queues() -> dict[str, tuple[int, int]]:
    """"local remote" -> (tx_queue, rx_queue) for every IPv4 TCP socket of this host."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            tx, rx = fields[4].split(":")
            out[f"{fields[1]} {fields[2]}"] = (int(tx, 16), int(rx, 16))
    return out


def wait_delivered(sock: socket.socket, timeout: float = 10.0) -> None:
    """Wait until the server process has read every byte sent on this connection: our
    send queue is empty and so is the receive queue of the server's end of the socket
    (both in /proc/net/tcp; loopback, same host). What the server does with the bytes
    has no event of its own until the request ends, so this is polled - here only."""
    from tests.conftest import wait_for

    local, peer = sock.getsockname(), sock.getpeername()
    mine = f"{_proc_addr(local[0], local[1])} {_proc_addr(peer[0], peer[1])}"
    theirs = f"{_proc_addr(peer[0], peer[1])} {_proc_addr(local[0], local[1])}"

    def unread() -> int:
        queues = _tcp_queues()
        return queues.get(mine, (0, 0))[0] + queues.get(theirs, (0, 0))[1]

    assert wait_for(lambda: unread() == 0, timeout=timeout, interval=0.01), \
        f"server left {unread()} bytes unread"


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

    def wait_delivered(self, timeout: float = 10.0) -> None:
        wait_delivered(self.sock, timeout)

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


def race_patches(urls: dict[str, str], data: dict[str, Pattern], size: int,
                 timeout: float = 20.0) -> dict[str, Response]:
    """Start one PATCH at offset 0 per name at the same moment; return every response."""
    conns = {name: RawConn(url) for name, url in urls.items()}
    results: dict[str, Response | BaseException] = {}
    go = threading.Barrier(len(conns))

    def run(name: str) -> None:
        try:
            conn = conns[name]
            conn.start_patch(0, size)
            go.wait(5)
            conn.send_chunks(data[name].chunks(chunk=128 * KiB))
            results[name] = conn.read_response(timeout=timeout)
        except BaseException as e:  # reported below, never raised in the thread
            results[name] = e

    threads = [threading.Thread(target=run, args=(n,)) for n in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 2)
    for c in conns.values():
        c.close()
    assert not any(t.is_alive() for t in threads)
    responses: dict[str, Response] = {}
    for name, res in results.items():
        assert isinstance(res, Response), f"PATCH {name}: no response: {res!r}"
        responses[name] = res
    return responses
