"""Slow and hostile clients: per-client upload limits, slowloris, stalled bodies.

Real `tusd-py serve` processes on real loopback sockets, driven by hand over raw
HTTP/1.1 so a body can trickle a few bytes at a time or stop half-way. Latencies
are printed, never asserted: the only time bounds are generous liveness bounds.
"""

from __future__ import annotations

import random
import resource
import socket
import statistics
import threading
import time

import httpx

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    TUS,
    KiB,
    MiB,
    Pattern,
    RawConn,
    Response,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    resume_and_check,
    upload_id,
)
from tests.e2e.support import Start
from tests.tusd_py.helpers import event_re, wait_log

# --------------------------------------------------------------------------- helpers


class SourceConn(RawConn):
    """A RawConn from a chosen loopback source address (another "client IP")."""

    def __init__(self, url: str, source: str, timeout: float = 15.0) -> None:
        super().__init__(url, timeout)
        self.sock.close()
        host, port = self.host.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def receiving(server: ServerProcess, url: str) -> None:
    """Wait until the server has taken an upload slot for a PATCH of `url` and is
    receiving its body (the DEBUG event `upload.patch` is logged after the slot)."""
    wait_log(server, event_re("upload.patch", upload_id(url)))


def assert_throttled(r: Response) -> None:
    assert r.status == 429, (r.status, r.headers, r.body)
    assert r.headers.get("tus-resumable") == "1.0.0", r.headers
    retry_after = r.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) > 0, r.headers
    # One plain-text line: "ERR_TOO_MANY_UPLOADS: <why>".
    assert r.body.startswith(b"ERR_TOO_MANY_UPLOADS: "), r.body
    assert r.body.rstrip(b"\n").count(b"\n") == 0 and len(r.body) < 300, r.body


def send_headers_only(url: str, method: str, headers: dict[str, str]) -> Response:
    """Send a request's head (a body announced by Content-Length, none sent) and read the
    answer the server gives before reading any body: sending no body bytes means the server
    never closes on unread data, so no RST can eat its response."""
    conn = RawConn(url)
    try:
        conn.send_head(method, headers)
        return conn.read_response(timeout=15)
    finally:
        conn.close()


def raw_head(url: str, timeout: float = 5.0) -> tuple[float, Response]:
    """One HEAD on a fresh connection (connect, request, answer); returns (seconds, answer).
    `timeout` bounds the connect and each read: the liveness bound."""
    t0 = time.monotonic()
    conn = RawConn(url, timeout=timeout)
    try:
        conn.send_head("HEAD", TUS)
        r = conn.read_response(timeout, head=True)
    finally:
        conn.close()
    return time.monotonic() - t0, r


def head_latencies(url: str, seconds: float) -> tuple[list[float], list[str]]:
    """HEAD `url` back to back for `seconds`: latencies (ms) and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            took, r = raw_head(url)
        except OSError as exc:  # includes timeouts and resets
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(took * 1000)
        if r.status != 200 or r.headers.get("upload-offset") != "0":
            failures.append(f"HEAD {r.status} {r.headers}")
        time.sleep(0.01)  # the probe's pace (a client polling), not a wait for anything
    return latencies, failures


def summary(ms: list[float]) -> str:
    return (f"{len(ms)} HEADs, p50 {statistics.median(ms):.1f} ms, "
            f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    assert soft == resource.RLIM_INFINITY or soft >= needed, (
        f"open-file limit {soft} (hard {hard}) is below the {needed} this test needs")


# ------------------------------------------------------- 1. --max-concurrent-uploads


def test_max_concurrent_uploads_per_client_ip(start_server: Start) -> None:
    server = start_server("--max-concurrent-uploads", "2", "--network-timeout", "30",
                          "--log-level", "debug")
    size = 256 * KiB
    data = [Pattern(size, seed=f"slot-{i}") for i in range(4)]
    urls = [create_upload(server, size) for _ in range(4)]

    # Two PATCHes from 127.0.0.1 trickle their bodies: both are accepted.
    conns = []
    sent = [0, 0]
    for i in (0, 1):
        conn = RawConn(urls[i], timeout=20)
        conn.start_patch(0, size)
        conn.sock.sendall(data[i].read(0, 100))
        sent[i] = 100
        conns.append(conn)
    for i in (0, 1):
        receiving(server, urls[i])

    def trickle() -> None:
        for i, conn in enumerate(conns):
            if sent[i] < size:
                piece = data[i].read(sent[i], sent[i] + 7)
                conn.sock.sendall(piece)
                sent[i] += len(piece)

    # A third PATCH from the same IP, on a third upload: 429, its offset untouched.
    trickle()
    r = send_headers_only(urls[2], "PATCH", {
        **TUS, "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0", "Content-Length": str(size)})
    assert_throttled(r)
    print(f"third PATCH: {r.status} Retry-After {r.headers['retry-after']} {r.body!r}")
    assert head_offset(urls[2]) == 0

    # creation-with-upload counts as a body transfer too: 429, and no upload is created.
    trickle()
    r = send_headers_only(server.url, "POST", {
        **TUS, "Upload-Length": str(size), "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(size)})
    assert_throttled(r)
    assert "location" not in r.headers, r.headers
    # A POST without a body is no transfer: creation itself is never throttled.
    extra = create_upload(server, size)
    assert head_offset(extra) == 0

    # HEAD and OPTIONS are never throttled (HEAD on uploads nobody is writing: a HEAD on
    # a busy upload would ask its PATCH to stop).
    for _ in range(5):
        trickle()
        assert head_offset(urls[2]) == 0
        assert head_offset(urls[3]) == 0
        r_opt = httpx.options(server.url, timeout=10)
        assert r_opt.status_code == 204, (r_opt.status_code, r_opt.text)
        assert r_opt.headers.get("Tus-Version"), r_opt.headers
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{server.origin}/healthz").status_code == 200

    # The count is per client IP: another address is not throttled.
    other = SourceConn(urls[3], source="127.0.0.2")
    try:
        other.start_patch(0, size)
        other.send_chunks(data[3].chunks(chunk=64 * KiB))
        r = other.read_response(timeout=15)
    finally:
        other.close()
    assert r.status == 204, (r.status, r.headers, r.body)
    assert head_offset(urls[3]) == size

    # The first trickler finishes: its slot is free again, so the third upload goes in.
    trickle()
    conns[0].send_chunks(data[0].chunks(sent[0]))
    r = conns[0].read_response(timeout=15)
    conns[0].close()
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == size

    r = patch(urls[2], 0, data[2].chunks(chunk=64 * KiB), size, timeout=15)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == size

    # The second trickler was never disturbed by all of the above.
    conns[1].send_chunks(data[1].chunks(sent[1]))
    r = conns[1].read_response(timeout=15)
    conns[1].close()
    assert r.status == 204, (r.status, r.headers, r.body)

    for i in range(4):
        assert download_sha256(urls[i]) == (data[i].sha256(), size), f"upload {i}"
    throttled = [line for line in server.log().splitlines() if " upload.throttled " in line]
    print("\n".join(throttled))
    assert len(throttled) == 2, throttled


# ---------------------------------------------------- 2. 300 trickling connections


TRICKLING_BODIES = 270
STALLED_HEADERS = 30
TRICKLE_SECONDS = 12.0


def test_300_trickling_connections_do_not_starve_head(start_server: Start) -> None:
    raise_nofile(4 * (TRICKLING_BODIES + STALLED_HEADERS) + 512)
    t_start = time.monotonic()
    server = start_server("--network-timeout", "120")
    body_len = 64 * KiB  # announced; only a trickle of it is ever sent

    # Uploads to trickle into, created over one keep-alive connection.
    with httpx.Client(timeout=10) as client:
        urls = []
        for _ in range(TRICKLING_BODIES):
            r = client.post(server.url, headers={**TUS, "Upload-Length": str(body_len)})
            assert r.status_code == 201, (r.status_code, r.text)
            urls.append(r.headers["Location"])
    probe = create_upload(server, 1024)  # HEADs go here: an upload nobody writes to
    print(f"created {len(urls)} uploads in {time.monotonic() - t_start:.1f}s")
    idle, idle_failures = head_latencies(probe, 2.0)
    assert not idle_failures, idle_failures
    print(f"HEAD on an idle server: {summary(idle)}")

    data = [Pattern(body_len, seed=f"trickle-{i}") for i in range(TRICKLING_BODIES)]
    bodies: list[RawConn] = []
    sent = [0] * TRICKLING_BODIES
    for i, url in enumerate(urls):
        conn = RawConn(url, timeout=20)
        conn.start_patch(0, body_len)
        conn.sock.sendall(data[i].read(0, 3))
        sent[i] = 3
        bodies.append(conn)
    # Slowloris proper: request heads that never end.
    stalled: list[RawConn] = []
    for i in range(STALLED_HEADERS):
        conn = RawConn(urls[i % len(urls)], timeout=20)
        conn.sock.sendall(f"PATCH {conn.path} HTTP/1.1\r\nHost: {conn.host}\r\n".encode())
        stalled.append(conn)
    print(f"{len(bodies)} trickling bodies + {len(stalled)} stalled heads open after "
          f"{time.monotonic() - t_start:.1f}s")

    stop = threading.Event()
    trickle_errors: list[BaseException] = []

    def trickle() -> None:
        rng = random.Random(300)
        try:
            while not stop.is_set():
                # Every round, a fifth of the bodies send 1-8 bytes; every stalled head
                # sends one more header byte now and then.
                for i in rng.sample(range(len(bodies)), len(bodies) // 5):
                    n = min(rng.randint(1, 8), body_len - sent[i] - 1)
                    if n > 0:
                        bodies[i].sock.sendall(data[i].read(sent[i], sent[i] + n))
                        sent[i] += n
                for conn in rng.sample(stalled, 3):
                    conn.sock.sendall(b"X")
                stop.wait(0.25)
        except BaseException as exc:  # reported by the main thread
            trickle_errors.append(exc)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()

    latencies, failures = head_latencies(probe, TRICKLE_SECONDS)
    stop.set()
    trickler.join(10)
    assert not trickle_errors, f"a trickling connection failed: {trickle_errors[0]!r}"

    print(f"HEAD under {len(bodies)} trickling bodies + {len(stalled)} stalled heads: "
          f"{summary(latencies)}; {sum(sent)} body bytes trickled")
    assert not failures, f"{len(failures)} HEADs failed, first: {failures[:3]}"
    assert len(latencies) >= 10, f"only {len(latencies)} HEADs answered in {TRICKLE_SECONDS}s"

    # Every trickler is still being served: none was dropped by the server.
    for conn in bodies + stalled:
        conn.wait_delivered()  # the server has taken in the last trickled bytes
    for conn in bodies + stalled:
        conn.sock.settimeout(0)
        try:
            assert conn.sock.recv(1) == b"", "server answered a request still in progress"
            raise AssertionError("server closed a trickling connection")
        except BlockingIOError:
            pass  # nothing to read, still open: as it should be
    # The clients go away (FIN after their last bytes): every trickled byte is kept.
    for conn in bodies + stalled:
        conn.close()
    t0 = time.monotonic()
    offsets = []
    with httpx.Client(timeout=10) as client:
        for url in urls:
            r = client.head(url, headers=TUS)
            assert r.status_code == 200, (url, r.status_code, r.text)
            offsets.append(int(r.headers["Upload-Offset"]))
    lost = [(i, sent[i], offsets[i]) for i in range(len(urls)) if offsets[i] != sent[i]]
    print(f"offsets of {len(urls)} trickled uploads read in {time.monotonic() - t0:.1f}s; "
          f"total {time.monotonic() - t_start:.1f}s")
    assert not lost, f"{len(lost)} uploads' offsets differ from the bytes sent: {lost[:5]}"

    # And the kept bytes are the right ones: finish one and compare.
    resume_and_check(server, urls[0], data[0], sent[0])


# -------------------------------------------------- 3. a body that stalls half-way


def test_stalled_body_times_out_keeps_bytes_and_frees_its_slot(start_server: Start) -> None:
    """--network-timeout 1: a PATCH that sends half its body and stalls is ended with
    500 ERR_READ_TIMEOUT and its Upload-Offset; the half is kept, the client's upload
    slot (--max-concurrent-uploads 1) is free again, and the upload resumes intact.

    (test_network_faults.test_slow_trickle_then_silence covers a 3 s timeout after a
    trickle; this one checks the answer itself, a body cut mid-buffer and the slot.)
    """
    server = start_server("--network-timeout", "1", "--max-concurrent-uploads", "1")
    data = Pattern(6 * MiB, seed="stall-half")
    url = create_upload(server, data.size)
    half = data.size // 2 + 12345  # not on a write-buffer boundary

    conn = RawConn(url, timeout=20)
    conn.start_patch(0, data.size)
    assert conn.send_chunks(data.chunks(0, half, chunk=256 * KiB)) == half
    t0 = time.monotonic()
    end = conn.wait_end(timeout=15)  # liveness bound: 15 s for a 1 s timeout
    waited = time.monotonic() - t0
    conn.close()
    print(f"stalled PATCH ended {waited:.2f}s after its last byte: {end}")
    assert end is not None, "server closed the stalled PATCH without an answer"
    assert end.status == 500, (end.status, end.headers, end.body)
    assert end.body.startswith(b"ERR_READ_TIMEOUT: "), end.body
    assert int(end.headers["upload-offset"]) == half, end.headers
    assert head_offset(url) == half

    # The stalled transfer no longer counts against this client: resume at once.
    resume_and_check(server, url, data, half)
