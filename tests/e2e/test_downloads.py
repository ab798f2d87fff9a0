"""Downloads of finished uploads: sent by the kernel (sendfile) on plain TCP, so memory
does not grow with concurrent or slow readers; Range, keep-alive and a reader that stops
reading, all on a real server and real sockets."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import LogWatch

from .rawhttp import MiB, Pattern, create_upload, patch
from .support import RssSampler

SIZE = 32 * MiB


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerProcess, str, Pattern]]:
    srv = ServerProcess(tmp_path_factory.mktemp("dl") / "data",
                        ["--no-processing", "--network-timeout", "8", "--durability", "os"])
    srv.start()
    data = Pattern(SIZE, "downloads")
    url = create_upload(srv, SIZE)
    assert patch(url, 0, data.chunks(), SIZE).status == 204
    yield srv, url, data
    srv.stop()


def raw_get(url: str, headers: str = "", *, keep: bool = False) -> tuple[socket.socket, bytes]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    return sock, b""


def read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, what follows it on the connection)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    h = hashlib.sha256()
    got = 0
    while got < length:
        if not rest:
            rest = sock.recv(1 << 20)
            assert rest, f"connection closed after {got} of {length} body bytes"
        take = rest[: length - got]
        h.update(take)
        got += len(take)
        rest = rest[len(take):]
    return head, h.digest(), rest


def test_concurrent_downloads_keep_memory_flat(stored: tuple[ServerProcess, str, Pattern]
                                               ) -> None:
    srv, url, data = stored
    expected = bytes.fromhex(data.sha256())
    idle = srv.rss_bytes()
    results: list[bytes] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            h = hashlib.sha256()
            with httpx.stream("GET", url, timeout=60) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes(1 << 20):
                    h.update(chunk)
            results.append(h.digest())
        except BaseException as exc:
            errors.append(exc)

    with RssSampler(srv) as rss:
        threads = [threading.Thread(target=one) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert results == [expected] * 32
    # 32 x 32 MiB went out; the server's memory did not follow (the kernel sent them).
    assert rss.peak - idle < 24 * MiB, (idle / MiB, rss.peak / MiB)


def test_a_range_through_sendfile_and_keep_alive(stored: tuple[ServerProcess, str, Pattern]
                                                 ) -> None:
    _, url, data = stored
    start, end = 1000, 5 * MiB + 17
    sock, _ = raw_get(url, f"Range: bytes={start}-{end}\r\n")
    with sock:
        head, digest, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 206")
        assert f"content-range: bytes {start}-{end}/{SIZE}".encode() in head.lower()
        assert digest == hashlib.sha256(data.read(start, end + 1)).digest()
        # The same connection serves the next request (keep-alive after sendfile).
        parts = urlsplit(url)
        sock.sendall(f"HEAD {parts.path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n"
                     .encode())
        data2 = rest
        while b"\r\n\r\n" not in data2:
            data2 += sock.recv(65536)
        assert data2.startswith(b"HTTP/1.1 200")
        assert f"upload-offset: {SIZE}".encode() in data2.lower()


def test_a_reader_that_stops_reading_is_let_go(
        stored: tuple[ServerProcess, str, Pattern]) -> None:
    """It holds no buffer while stalled, and --network-timeout ends it."""
    srv, url, _ = stored
    watch = LogWatch(srv)
    sock, _ = raw_get(url)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # Read nothing more: after --network-timeout (8 s) the server gives up and closes.
        line = watch.wait_event("download.interrupted", timeout=30)
        assert f"of={SIZE}" in line
        received = len(first)
        while chunk := sock.recv(1 << 20):  # what the kernel had buffered, then EOF
            received += len(chunk)
        assert received < SIZE
    assert httpx.get(url, headers={"Range": "bytes=0-9"}, timeout=10).status_code == 206
