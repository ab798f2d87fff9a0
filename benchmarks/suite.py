"""tus server benchmark suite: tusd-py against tusd, @tus/server and a sink, in one run.

    scripts/bench            # installs what is missing, then: full spec (1 GiB, 3 repetitions)
    scripts/bench --quick    # 512 MiB / 8 x 64 MiB / downloads over 8 uploads
    (scripts/bench passes its arguments here: .venv/bin/python benchmarks/suite.py ...)
    # while tusd_py/ is being edited, measure a fixed commit from a worktree with its own venv:
    git worktree add --detach /tmp/bench-tree HEAD && python3 -m venv /tmp/bench-tree/.venv \
        && /tmp/bench-tree/.venv/bin/pip install -e /tmp/bench-tree
    .venv/bin/python benchmarks/suite.py --tpy-root /tmp/bench-tree

Targets (each started fresh by PID, with a fresh upload dir, for every scenario x repetition,
and interleaved A B C ... / B C ... A per repetition so that noise on a shared machine spreads):

  sink         a separate Python process that speaks just enough tus (POST 201 + Location,
               PATCH 204 + Upload-Offset, HEAD) and discards the bytes: the client's ceiling
  tpy-fsync    tusd-py serve, embedded storage, --durability fsync (the default)
  tpy-os       tusd-py serve, embedded storage, --durability os (page cache trusted, like peers)
  tpy-w2-emb   tusd-py serve --workers 2, embedded storage shared by both (flock locks; no Redis)
  tpy-w2       tusd-py serve --workers 2 --redis-url (its own redis-server on a free port:
               --save '' --appendonly no)
  tus-node     @tus/server + @tus/file-store (latest from npm, installed into a scratch dir)
  tusd         tusd 2.10 (`--tusd PATH`; default ../shared/peers/tusd/tusdcore when it exists,
               else the suite runs without it), file locker, no fsync
  (also: tpy-redis, tpy-w2-os, tpy-w2-emb-os)

tusd-py targets run with --no-processing --no-dashboard: the peers do not hash, link or
thumbnail finished uploads, so processing would only add work they do not do
(--with-processing turns it back on).

Scenarios: single (one PATCH), chunks (8 MiB PATCHes), small (1,000 x 64 KiB
creation-with-upload at concurrency 32), parallel (8 concurrent single-PATCH uploads), resume
(RST at 50 %, then HEAD + PATCH), slow (--slow-clients N uploads whose one PATCH each trickles
8 KiB every 0.5 s, plus a HEAD probe every 100 ms), download (8 and 32 concurrent GETs of 128 MiB
uploads, then 16 slow readers; skipped for targets without GET). Every run measures the
server's whole process tree (peak RSS summed over the tree, largest single process, CPU-seconds)
and verifies every stored byte (sha256 of a GET, or of the stored file where GET is not served).
slow and download run --heavy-reps times (default 1: they take half a minute per target).

Profile one target in one scenario (one repetition, py-spy raw output + top functions):

    .venv/bin/python benchmarks/suite.py --quick --profile tpy-fsync:small
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20
GiB = 1 << 30
TAIL = os.urandom(MiB)  # every block is a 16-byte (upload, block) prefix + this
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"
# tusd v2.10's upload path built for this machine (see its README); never required.
DEFAULT_TUSD = ROOT.parent / "shared/peers/tusd/tusdcore"


# ---------------------------------------------------------------- deterministic content

def blocks(upload: int, start: int, end: int, buf: bytearray | None = None) -> Iterator[memoryview]:
    """Bytes [start, end) of upload number `upload`, as views into one reused 1 MiB buffer."""
    buf = buf if buf is not None else bytearray(TAIL)
    view = memoryview(buf)
    i = start // MiB
    while i * MiB < end:
        struct.pack_into(">QQ", buf, 0, upload, i)
        lo = max(start - i * MiB, 0)
        hi = min(end - i * MiB, MiB)
        yield view[lo:hi]
        i += 1


_HASHES: dict[tuple[int, int], str] = {}


def expected_sha256(upload: int, size: int) -> str:
    key = (upload, size)
    if key not in _HASHES:
        h = hashlib.sha256()
        for chunk in blocks(upload, 0, size):
            h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def small_body(i: int, size: int) -> bytes:
    return struct.pack(">QQ", 3_000_000 + i, 0) + TAIL[16:size]


# ---------------------------------------------------------------- blocking raw HTTP/1.1

class Conn:
    """One keep-alive HTTP/1.1 connection on a raw socket."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}", "Tus-Resumable: 1.0.0"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def read_response(self, method: str) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if method != "HEAD" and status not in (204, 304) and status >= 200:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    while b"\r\n" not in self.buf:
                        self._fill()
                    size_line, self.buf = self.buf.split(b"\r\n", 1)
                    n = int(size_line.split(b";")[0], 16)
                    while len(self.buf) < n + 2:
                        self._fill()
                    body += self.buf[:n]
                    self.buf = self.buf[n + 2:]
                    if n == 0:
                        break
            else:
                n = int(headers.get("content-length", "0"))
                while len(self.buf) < n:
                    self._fill()
                body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def read_head(self) -> tuple[int, dict[str, str]]:
        """Status line and headers only; the body stays unread (see body_chunks)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), headers

    def body_chunks(self, headers: dict[str, str], buf: bytearray) -> Iterator[memoryview]:
        """The body after read_head, as views into `buf` (reused: consume each before the next),
        so that a 128 MiB GET never sits in the client's memory."""
        view = memoryview(buf)

        def take(n: int) -> Iterator[memoryview]:
            while n > 0:
                if self.buf:
                    part, self.buf = self.buf[:n], self.buf[n:]
                    view[:len(part)] = part
                    got = len(part)
                else:
                    got = self.sock.recv_into(buf, min(n, len(buf)))
                    if not got:
                        raise ConnectionError("server closed the connection mid-body")
                yield view[:got]
                n -= got

        if headers.get("transfer-encoding", "").lower() != "chunked":
            yield from take(int(headers.get("content-length", "0")))
            return
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, self.buf = self.buf.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            yield from take(n)
            while len(self.buf) < 2:
                self._fill()
            self.buf = self.buf[2:]
            if n == 0:
                return

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        if body or method in ("POST", "PATCH"):
            headers["Content-Length"] = str(len(body))
        self.send_head(method, path, headers)
        if body:
            self.sock.sendall(body)
        return self.read_response(method)


def path_of(location: str) -> str:
    return urlsplit(location).path


def create(conn: Conn, size: int) -> str:
    status, headers, body = conn.request("POST", "/files/", {"Upload-Length": str(size)})
    if status != 201 or "location" not in headers:
        raise RuntimeError(f"POST answered {status} {body[:200]!r}")
    return path_of(headers["location"])


def patch(conn: Conn, path: str, upload: int, start: int, end: int,
          buf: bytearray | None = None) -> dict[str, str]:
    conn.send_head("PATCH", path, {"Upload-Offset": str(start), "Content-Length": str(end - start),
                                   "Content-Type": "application/offset+octet-stream"})
    for chunk in blocks(upload, start, end, buf):
        conn.sock.sendall(chunk)
    status, headers, body = conn.read_response("PATCH")
    if status != 204 or int(headers.get("upload-offset", -1)) != end:
        raise RuntimeError(f"PATCH {start}-{end} answered {status} "
                           f"offset={headers.get('upload-offset')} {body[:200]!r}")
    return headers


def stored_sha256(port: int, path: str) -> tuple[str, int]:
    c = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        c.request("GET", path, headers={"Tus-Resumable": "1.0.0"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET {path} answered {r.status} {r.read(200)!r}")
        h = hashlib.sha256()
        buf = bytearray(MiB)
        view = memoryview(buf)
        total = 0
        while n := r.readinto(buf):
            h.update(view[:n])
            total += n
        return h.hexdigest(), total
    finally:
        c.close()


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest(), path.stat().st_size


def verify(run: Running, items: list[tuple[str, int, int]]) -> str:
    """items: (path, upload number, size). Returns 'ok n/n' or raises."""
    if not run.target.verifiable:
        return "n/a (sink)"
    from_files = 0
    for path, upload, size in items:
        if run.target.kind == "tusd":
            # tusd serves GET of finished uploads; should a build not, its bytes are in <dir>/<id>.
            try:
                got, n = stored_sha256(run.port, path)
            except RuntimeError:
                got, n = file_sha256(run.data_dir / path.rsplit("/", 1)[-1])
                from_files += 1
        elif run.target.kind == "node":
            # @tus/server 2.4.5 on Node 20 dies serving GETs of finished uploads (undici
            # "ERR_INVALID_STATE: ReadableStream is already closed", the process exits):
            # hash its datastore file instead.
            got, n = file_sha256(run.data_dir / path.rsplit("/", 1)[-1])
        else:
            got, n = stored_sha256(run.port, path)
        if n != size or got != expected_sha256(upload, size):
            raise RuntimeError(f"stored bytes of {path} differ: {n} bytes, sha256 {got[:12]}")
    where = " (datastore files)" if run.target.kind == "node" or from_files else ""
    return f"sha256 ok {len(items)}/{len(items)}{where}"


# ---------------------------------------------------------------- asyncio raw HTTP/1.1

async def aread_response(reader: asyncio.StreamReader,
                         method: str) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if method != "HEAD" and status not in (204, 304):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await reader.readexactly(n + 2))
                if n == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def small_uploads(port: int, n: int, conc: int, size: int) -> dict[str, Any]:
    next_i = iter(range(n))
    latencies: list[float] = []
    paths: list[str] = [""] * n
    fallback = 0
    reconnects = 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def worker() -> None:
        nonlocal fallback, reconnects
        reader, writer = await connect()
        try:
            for i in next_i:
                body = small_body(i, size)
                head = (f"POST /files/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                        f"Upload-Length: {size}\r\n"
                        f"Content-Type: application/offset+octet-stream\r\n"
                        f"Content-Length: {size}\r\n\r\n").encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status, headers, text = await aread_response(reader, "POST")
                if status != 201:
                    raise RuntimeError(f"POST answered {status} {text[:200]!r}")
                path = path_of(headers["location"])
                offset = int(headers.get("upload-offset", "0"))
                if offset < size:  # no creation-with-upload: PATCH the rest
                    fallback += 1
                    rest = body[offset:]
                    writer.write(
                        (f"PATCH {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                         f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream"
                         f"\r\nContent-Length: {len(rest)}\r\n\r\n").encode() + rest)
                    status, headers, text = await aread_response(reader, "PATCH")
                    if status != 204:
                        raise RuntimeError(f"PATCH answered {status} {text[:200]!r}")
                latencies.append(time.perf_counter() - t0)
                paths[i] = path
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reconnects += 1
                    reader, writer = await connect()
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"elapsed": elapsed, "latencies": latencies, "paths": paths, "fallback": fallback,
            "reconnects": reconnects}


async def verify_small(port: int, paths: list[str], size: int, conc: int) -> int:
    return await verify_bodies(port, list(enumerate(paths)), lambda i: small_body(i, size), conc)


async def verify_bodies(port: int, items: list[tuple[int, str]], body: Callable[[int], bytes],
                        conc: int) -> int:
    """GET every (i, path) over `conc` keep-alive connections; the number whose bytes differ
    from body(i)."""
    it = iter(items)
    bad = 0

    async def worker() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            for i, path in it:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                             f"Tus-Resumable: 1.0.0\r\n\r\n".encode())
                status, headers, got = await aread_response(reader, "GET")
                if status != 200 or got != body(i):
                    bad += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(conc)))
    return bad


def run_async(coro: Any) -> Any:
    try:
        import uvloop  # type: ignore[import-not-found]
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ---------------------------------------------------------------- process tree accounting

def tree(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def proc_stat(pid: int) -> tuple[int, float, float]:
    """(rss bytes, own cpu seconds, reaped-children cpu seconds)"""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return int(fields[21]) * PAGE, own, reaped


def tree_sample(root: int, pids: list[int] | None = None) -> tuple[int, int, float]:
    """(rss summed over the tree, largest process rss, cpu seconds of the tree); `pids`: the
    tree as last listed (walking /proc/<pid>/task/*/children costs one read per thread, and
    the sink runs a thread per connection)."""
    total = biggest = 0
    cpu = 0.0
    for pid in pids if pids is not None else tree(root):
        try:
            rss, own, reaped = proc_stat(pid)
        except (OSError, IndexError):
            continue
        total += rss
        biggest = max(biggest, rss)
        cpu += own + (reaped if pid == root else 0.0)
    return total, biggest, cpu


class Sampler:
    """Peak RSS of a process tree, sampled every `interval` s, plus CPU-seconds over the window
    (utime+stime from /proc/<pid>/stat of every process in the tree, plus reaped children)."""

    def __init__(self, roots: list[int], interval: float = 0.02) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_tree = self.peak_proc = 0
        self.idle_tree = 0
        self._pids: list[int] = []
        self._listed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._listed > 1.0:  # the tree changes rarely (uvicorn workers start once)
            self._pids, self._listed = tree(self.roots[0]), now
        rss, big, _ = tree_sample(self.roots[0], self._pids)
        self.peak_tree = max(self.peak_tree, rss)
        self.peak_proc = max(self.peak_proc, big)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self.idle_tree = tree_sample(self.roots[0])[0]
        self.cpu0 = [tree_sample(r)[2] for r in self.roots]
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.cpu = [tree_sample(r)[2] - c for r, c in zip(self.roots, self.cpu0, strict=True)]


# ---------------------------------------------------------------- targets

def raise_nofile(clients: int) -> None:
    """Slow clients hold a socket each in this process and a socket plus an open file each in
    the server; servers inherit this limit (every target is a child of this process)."""
    want = 2 * clients + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        want = hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Target:
    key: str
    label: str
    kind: str  # sink | tpy | node | tusd
    flags: list[str] = dataclasses.field(default_factory=list)
    redis: bool = False

    @property
    def verifiable(self) -> bool:
        return self.kind != "sink"

    @property
    def serves_get(self) -> str | None:
        """None when GET of a finished upload works, else why the download scenario skips it."""
        if self.kind == "sink":
            return "no GET (the sink discards bytes)"
        if self.kind == "node":
            return ("@tus/server 2.4.5 on Node 20 exits on GETs of finished uploads "
                    "(undici ERR_INVALID_STATE)")
        return None


@dataclasses.dataclass
class Running:
    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    redis: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def roots(self) -> list[int]:
        return [self.proc.pid] + ([self.redis.pid] if self.redis else [])


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created for this server (by its id), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, probes: int = 1) -> None:
    deadline = time.monotonic() + 60
    ok = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            c = Conn(port, timeout=2)
            status, _, _ = c.request("OPTIONS", "/files/")
            c.close()
            if status in (200, 204):
                ok += 1
                if ok >= probes:
                    return
                continue
        except OSError:
            pass
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"server on port {port} not ready: {tail}")


class Env:
    def __init__(self, scratch: Path, python: str, node_dir: Path | None,
                 with_processing: bool, tpy_root: Path, tusd: Path | None) -> None:
        self.scratch = scratch
        self.python = python  # runs the sink (this file)
        self.node_dir = node_dir
        self.with_processing = with_processing
        # tusd-py runs from tpy_root with tpy_root/.venv when there is one: a git worktree of a
        # fixed commit keeps measuring while the main tree is mid-edit.
        self.tpy_root = tpy_root
        venv = tpy_root / ".venv/bin/python"
        self.tpy_python = str(venv) if venv.exists() else python
        self.tusd = tusd

    def start(self, target: Target) -> Running:
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix=f"{target.key}-", dir=self.scratch))
        log = data.with_suffix(".log")
        redis = None
        if target.kind == "sink":
            cmd = [self.python, str(Path(__file__).resolve()), "--serve-sink", str(port)]
        elif target.kind == "node":
            assert self.node_dir is not None
            cmd = ["node", str(self.node_dir / "server.mjs"), str(port), str(data)]
        elif target.kind == "tusd":
            assert self.tusd is not None
            # tusdcore's defaults otherwise (file locker, 60 s network timeout), like cmd/tusd.
            cmd = [str(self.tusd), "-host", HOST, "-port", str(port), "-base-path", "/files/",
                   "-upload-dir", str(data)]
        else:
            cmd = [self.tpy_python, "-m", "tusd_py", "serve", "--port", str(port),
                   "--upload-dir", str(data), "--log-level", "warning", "--no-dashboard",
                   *([] if self.with_processing else ["--no-processing"]), *target.flags]
            if target.redis:
                rport = free_port()
                redis = subprocess.Popen(
                    ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
                for _ in range(200):
                    try:
                        with socket.create_connection((HOST, rport), timeout=0.2) as s:
                            s.sendall(b"PING\r\n")
                            if s.recv(64).startswith(b"+PONG"):
                                break
                    except OSError:
                        time.sleep(0.025)
                cmd += ["--redis-url", f"redis://{HOST}:{rport}/0"]
        with log.open("wb") as out:
            cwd = {"node": self.node_dir, "tpy": self.tpy_root}.get(target.kind, ROOT)
            proc = subprocess.Popen(cmd, cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        run = Running(target, port, proc, data, redis, log)
        try:
            workers = 2 if "--workers" in target.flags else 1
            wait_ready(port, proc, log, probes=4 * workers)
            if workers > 1:  # uvicorn starts its workers one after the other
                deadline = time.monotonic() + 30
                while len(tree(proc.pid)) < workers + 1 and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1.0)
        except Exception:
            self.stop(run)
            raise
        return run

    def stop(self, run: Running, *, keep_files: bool = False) -> None:
        """keep_files: leave the data dir until the suite ends (see the small scenario)."""
        stop_proc(run.proc)
        if run.redis:
            stop_proc(run.redis)
        if not keep_files:
            shutil.rmtree(run.data_dir, ignore_errors=True)
        if run.log:
            run.log.unlink(missing_ok=True)


def install_node_peer(scratch_root: Path, reinstall: bool) -> tuple[Path, str]:
    node_dir = scratch_root / "tus-node-server"
    node_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "server.mjs"):
        shutil.copy(HERE / "tus_node_server" / name, node_dir / name)
    if reinstall or not (node_dir / "node_modules/@tus/server/package.json").exists():
        print(f"# npm install @tus/server @tus/file-store (latest) into {node_dir}", flush=True)
        subprocess.run(["npm", "install", "--prefix", str(node_dir), "--no-audit", "--no-fund",
                        "--no-save", "--loglevel", "error"], check=True)
    versions = []
    for pkg in ("server", "file-store"):
        meta = json.loads((node_dir / f"node_modules/@tus/{pkg}/package.json").read_text())
        versions.append(f"@tus/{pkg} {meta['version']}")
    return node_dir, ", ".join(versions)


# ---------------------------------------------------------------- scenarios

@dataclasses.dataclass
class Sizes:
    big: int
    chunk: int
    small_n: int
    small_size: int
    small_conc: int
    par_n: int
    par_size: int
    resume: int
    slow_n: int
    dl_files: int  # distinct uploads for the download scenario (32 GETs share them if < 32)
    dl_size: int
    dl_slow_s: float  # how long the 16 slow readers read


def sc_single(run: Running, s: Sizes) -> dict[str, Any]:
    c = Conn(run.port)
    try:
        path = create(c, s.big)
        with Sampler(run.roots) as smp:
            t0 = time.perf_counter()
            patch(c, path, 1, 0, s.big)
            elapsed = time.perf_counter() - t0
    finally:
        c.close()
    return {"value": s.big / MiB / elapsed, "bytes": s.big, "smp": smp,
            "verified": verify(run, [(path, 1, s.big)])}


def sc_chunks(run: Running, s: Sizes) -> dict[str, Any]:
    c = Conn(run.port)
    buf = bytearray(TAIL)
    reconnects = 0
    try:
        path = create(c, s.big)
        with Sampler(run.roots) as smp:
            t0 = time.perf_counter()
            for start in range(0, s.big, s.chunk):
                headers = patch(c, path, 2, start, min(start + s.chunk, s.big), buf)
                if headers.get("connection", "").lower() == "close":
                    c.close()
                    c = Conn(run.port)
                    reconnects += 1
            elapsed = time.perf_counter() - t0
    finally:
        c.close()
    note = f"{reconnects} reconnects" if reconnects else ""
    return {"value": s.big / MiB / elapsed, "bytes": s.big, "smp": smp, "note": note,
            "verified": verify(run, [(path, 2, s.big)])}


def sc_small(run: Running, s: Sizes) -> dict[str, Any]:
    with Sampler(run.roots) as smp:
        r = run_async(small_uploads(run.port, s.small_n, s.small_conc, s.small_size))
    lat = r["latencies"]
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    verified = "n/a (sink)"
    notes = []
    if run.target.kind == "node":
        # @tus/server 2.4.5 on Node 20 dies on concurrent GETs of finished uploads (undici
        # "ERR_INVALID_STATE: ReadableStream is already closed", process exits): read its
        # datastore files instead.
        bad = sum((run.data_dir / p.rsplit("/", 1)[-1]).read_bytes() != small_body(i, s.small_size)
                  for i, p in enumerate(r["paths"]))
        if bad:
            raise RuntimeError(f"{bad} of {s.small_n} small uploads stored wrong bytes")
        verified = f"sha256 ok {s.small_n}/{s.small_n} (datastore files)"
        notes.append("verified from its datastore dir: concurrent GETs crash @tus/server "
                     "(ERR_INVALID_STATE)")
    elif run.target.verifiable:
        bad = run_async(verify_small(run.port, r["paths"], s.small_size, s.small_conc))
        if bad:
            raise RuntimeError(f"{bad} of {s.small_n} small uploads stored wrong bytes")
        verified = f"sha256 ok {s.small_n}/{s.small_n}"
    if r["fallback"]:
        notes.append(f"no creation-with-upload: POST+PATCH for {r['fallback']}")
    if r["reconnects"]:
        notes.append(f"{r['reconnects']} reconnects")
    return {"value": s.small_n / r["elapsed"], "p50": p(0.50), "p99": p(0.99),
            "bytes": s.small_n * s.small_size, "smp": smp, "verified": verified,
            "note": "; ".join(notes)}


def sc_parallel(run: Running, s: Sizes) -> dict[str, Any]:
    conns = [Conn(run.port) for _ in range(s.par_n)]
    paths = [create(c, s.par_size) for c in conns]
    barrier = threading.Barrier(s.par_n + 1)
    ends: list[float] = [0.0] * s.par_n
    errors: list[str] = []

    def one(i: int) -> None:
        buf = bytearray(TAIL)
        barrier.wait()
        try:
            patch(conns[i], paths[i], 100 + i, 0, s.par_size, buf)
        except Exception as e:
            errors.append(repr(e))
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(s.par_n)]
    for t in threads:
        t.start()
    try:
        with Sampler(run.roots) as smp:
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
    finally:
        for c in conns:
            c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} parallel uploads failed: {errors[0]}")
    total = s.par_n * s.par_size
    return {"value": total / MiB / (max(ends) - t0), "bytes": total, "smp": smp,
            "verified": verify(run, [(p, 100 + i, s.par_size) for i, p in enumerate(paths)])}


def socket_queued(sock: socket.socket, server_port: int) -> tuple[int, int]:
    """At the RST: (client bytes not yet delivered (TIOCOUTQ; discarded by the RST, no server can
    keep them), server socket's unread receive queue (rx_queue in /proc/net/tcp; still readable
    by the server after the RST))."""
    import fcntl
    import termios
    unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    client_port = sock.getsockname()[1]
    rx = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            local, remote = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
            if local == server_port and remote == client_port:
                rx += int(f[4].split(":")[1], 16)
    return int(unsent), rx


def sc_resume(run: Running, s: Sizes) -> dict[str, Any]:
    size = s.resume
    half = size // 2
    c = Conn(run.port)
    path = create(c, size)
    with Sampler(run.roots) as smp:
        c.send_head("PATCH", path, {"Upload-Offset": "0", "Content-Length": str(size),
                                    "Content-Type": "application/offset+octet-stream"})
        for chunk in blocks(5, 0, half):
            c.sock.sendall(chunk)
        unsent, server_rx = socket_queued(c.sock, run.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()  # RST
        t_drop = time.perf_counter()
        attempts: Counter[str] = Counter()
        offset = -1
        r = Conn(run.port, timeout=60)
        t_head = None
        while True:
            if time.perf_counter() - t_drop > 60:
                raise RuntimeError(f"resume not accepted within 60 s: {dict(attempts)}")
            status, headers, _ = r.request("HEAD", path)
            attempts[f"HEAD {status}"] += 1
            if status != 200:
                time.sleep(0.002)
                continue
            t_head = t_head or time.perf_counter()
            offset = int(headers["upload-offset"])
            step = min(64 * 1024, size - offset)
            r.send_head("PATCH", path, {"Upload-Offset": str(offset), "Content-Length": str(step),
                                        "Content-Type": "application/offset+octet-stream"})
            for chunk in blocks(5, offset, offset + step):
                r.sock.sendall(chunk)
            status, headers, _ = r.read_response("PATCH")
            attempts[f"PATCH {status}"] += 1
            if status == 204:
                break
            if headers.get("connection", "").lower() == "close":
                r.close()
                r = Conn(run.port, timeout=60)
            time.sleep(0.002)
        t_accept = time.perf_counter()
        patch(r, path, 5, offset + step, size)
        r.close()
    lost = half - offset
    note = ", ".join(f"{k}x{v}" for k, v in sorted(attempts.items()))
    return {"value": t_accept - t_drop, "head_s": (t_head or t_accept) - t_drop,
            "lost": lost, "unsent": unsent, "server_rx": server_rx, "bytes": size + lost,
            "smp": smp, "note": note,
            "verified": verify(run, [(path, 5, size)])}


# ---------------------------------------------------------------- slow clients

SLOW_SIZE = 256 * 1024
SLOW_PIECE = 8 * 1024  # one piece every SLOW_GAP: a weak mobile link (16 KiB/s)
SLOW_GAP = 0.5
SLOW_RAMP = 2.0  # clients start evenly over this long: no SYN flood, pieces spread over time
PROBE_EVERY = 0.1
SLOW_DEADLINE = 90.0  # per client, after its start: a server that stalls fails, never hangs


def slow_body(i: int) -> bytes:
    return struct.pack(">QQ", 5_000_000 + i, 0) + TAIL[16:SLOW_SIZE]


async def acreate(port: int, n: int, size: int, conc: int = 32) -> list[str]:
    """n POSTs (Upload-Length: size, no body) over `conc` keep-alive connections."""
    it = iter(range(n))
    paths = [""] * n

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            for i in it:
                writer.write(f"POST /files/ HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                             f"Tus-Resumable: 1.0.0\r\nUpload-Length: {size}\r\n"
                             f"Content-Length: 0\r\n\r\n".encode())
                status, headers, body = await asyncio.wait_for(aread_response(reader, "POST"), 60)
                if status != 201:
                    raise RuntimeError(f"POST answered {status} {body[:200]!r}")
                paths[i] = path_of(headers["location"])
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    return paths


async def sock_response(loop: asyncio.AbstractEventLoop,
                        sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Status and headers of one response on a raw non-blocking socket (the body is ignored:
    the slow clients close the connection right after)."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = await loop.sock_recv(sock, 4096)
        if not part:
            raise ConnectionError("closed before a response")
        data += part
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers


async def slow_clients(port: int, paths: list[str], probe_path: str) -> dict[str, Any]:
    """One raw socket and one coroutine per client, absolute schedules (no drift): the client
    spends microseconds per piece, so thousands of them cost it little next to the server."""
    loop = asyncio.get_running_loop()
    n = len(paths)
    pieces = SLOW_SIZE // SLOW_PIECE
    t0 = loop.time() + 0.1
    ok = [False] * n
    done_at: list[float] = []
    errors: Counter[str] = Counter()
    connecting = asyncio.Semaphore(256)  # connects in flight: stay far below the listen backlog

    async def client(i: int) -> None:
        start = t0 + SLOW_RAMP * i / n
        await asyncio.sleep(start - loop.time())
        sock = socket.socket()
        sock.setblocking(False)
        try:
            async with connecting:
                await loop.sock_connect(sock, (HOST, port))
            body = slow_body(i)
            head = (f"PATCH {paths[i]} HTTP/1.1\r\nHost: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                    f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                    f"Content-Length: {SLOW_SIZE}\r\n\r\n").encode()
            for j in range(pieces):
                await asyncio.sleep(start + j * SLOW_GAP - loop.time())
                piece = body[j * SLOW_PIECE:(j + 1) * SLOW_PIECE]
                await loop.sock_sendall(sock, head + piece if j == 0 else piece)
            status, headers = await sock_response(loop, sock)
            if status != 204 or headers.get("upload-offset") != str(SLOW_SIZE):
                errors[f"PATCH {status} offset={headers.get('upload-offset')}"] += 1
                return
            ok[i] = True
            done_at.append(loop.time() - t0)
        finally:
            sock.close()

    async def bounded(i: int) -> None:
        try:
            await asyncio.wait_for(client(i), SLOW_RAMP + pieces * SLOW_GAP + SLOW_DEADLINE)
        except TimeoutError:
            errors["timeout"] += 1
        except (OSError, ConnectionError) as e:
            errors[type(e).__name__] += 1

    stop = asyncio.Event()
    lat: list[float] = []
    probe_errors: Counter[str] = Counter()

    async def probe() -> None:
        """HEAD of an idle upload every 100 ms on its own keep-alive connection: what a client
        that merely asks for an offset waits while the server carries the slow clients."""
        req = (f"HEAD {probe_path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               f"Tus-Resumable: 1.0.0\r\n\r\n").encode()
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        at = t0
        while not stop.is_set():
            await asyncio.sleep(at - loop.time())
            t = time.perf_counter()  # uvloop's loop.time() has 1 ms resolution
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
                writer.write(req)
                status, headers, _ = await asyncio.wait_for(aread_response(reader, "HEAD"), 10)
                if status != 200:
                    probe_errors[f"HEAD {status}"] += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                probe_errors[type(e).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
            lat.append(time.perf_counter() - t)
            at = max(at + PROBE_EVERY, loop.time())  # late: go now, but never burst to catch up
        if writer is not None:
            writer.close()

    probe_task = asyncio.create_task(probe())
    await asyncio.gather(*(bounded(i) for i in range(n)))
    stop.set()
    await probe_task
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {"ok": ok, "errors": errors, "probe_p50": q(0.50), "probe_p99": q(0.99),
            "probes": len(lat), "probe_errors": probe_errors,
            "last_s": max(done_at) if done_at else float("nan")}


def sc_slow(run: Running, s: Sizes) -> dict[str, Any]:
    async def setup() -> tuple[list[str], str]:
        paths = await acreate(run.port, s.slow_n, SLOW_SIZE)
        return paths, (await acreate(run.port, 1, 1024, conc=1))[0]

    paths, probe_path = run_async(setup())
    # 100 ms samples: the tree walk is one /proc read per thread, and the sink has thousands.
    with Sampler(run.roots, interval=0.1) as smp:
        r = run_async(slow_clients(run.port, paths, probe_path))
    done = [(i, p) for i, p in enumerate(paths) if r["ok"][i]]
    verified = "n/a (sink)"
    if run.target.kind == "node":
        bad = sum((run.data_dir / p.rsplit("/", 1)[-1]).read_bytes() != slow_body(i)
                  for i, p in done)
        verified = f"bytes ok {len(done) - bad}/{len(done)} (datastore files)"
    elif run.target.verifiable:
        bad = run_async(verify_bodies(run.port, done, slow_body, 32))
        verified = f"bytes ok {len(done) - bad}/{len(done)}"
    notes = [f"{k} x{v}" for k, v in sorted(r["errors"].items())]
    notes += [f"probe {k} x{v}" for k, v in sorted(r["probe_errors"].items())]
    return {"value": len(done), "completed": float(len(done)), "probe_p50": r["probe_p50"],
            "probe_p99": r["probe_p99"], "last_s": r["last_s"], "probes": r["probes"],
            "bytes": len(done) * SLOW_SIZE or 1, "smp": smp, "verified": verified,
            "note": "; ".join(notes)}


# ---------------------------------------------------------------- downloads

_CRCS: dict[tuple[int, int], int] = {}


def expected_crc32(upload: int, size: int) -> int:
    """crc32, not sha256, for downloads: the client hashes GiB/s there, and sha256 (~1.3 GB/s
    here) would cap the measurement; crc32 still checks every byte against known content."""
    key = (upload, size)
    if key not in _CRCS:
        crc = 0
        for chunk in blocks(upload, 0, size):
            crc = zlib.crc32(chunk, crc)
        _CRCS[key] = crc
    return _CRCS[key]


def upload_many(port: int, uploads: list[int], size: int, conc: int) -> list[str]:
    """Setup (not measured): one single-PATCH upload per number, `conc` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(upload: int) -> str:
        c = Conn(port, timeout=120)
        try:
            path = create(c, size)
            patch(c, path, upload, 0, size)
            return path
        finally:
            c.close()

    with ThreadPoolExecutor(conc) as pool:
        return list(pool.map(one, uploads))


def get_verified(port: int, path: str, upload: int, size: int, buf: bytearray) -> None:
    c = Conn(port, timeout=60)
    try:
        c.send_head("GET", path, {})
        status, headers = c.read_head()
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        crc = n = 0
        for chunk in c.body_chunks(headers, buf):
            crc = zlib.crc32(chunk, crc)  # releases the GIL: the readers run in parallel
            n += len(chunk)
        if n != size or crc != expected_crc32(upload, size):
            raise RuntimeError(f"GET {path}: {n} bytes, crc32 {crc:08x} differs")
    finally:
        c.close()


def parallel_gets(port: int, items: list[tuple[str, int]], size: int) -> float:
    """All GETs start at once (a barrier); aggregate MiB/s until the last one ends."""
    barrier = threading.Barrier(len(items) + 1, timeout=60)
    ends = [0.0] * len(items)
    errors: list[str] = []

    def one(k: int) -> None:
        buf = bytearray(MiB)
        path, upload = items[k]
        try:
            barrier.wait()
            get_verified(port, path, upload, size, buf)
        except Exception as e:
            errors.append(repr(e))
        ends[k] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(len(items))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(300)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"{len(errors)} of {len(items)} GETs failed: {errors[:1]}")
    return len(items) * size / MiB / (max(ends) - t0)


def slow_readers(port: int, items: list[tuple[str, int]], seconds: float,
                 step: int = 64 * 1024, pause: float = 0.2) -> tuple[int, list[str]]:
    """Each reader takes 64 KiB, then pauses: a server that reads the file ahead of the socket
    into memory shows it in RSS. The bytes read are compared with the expected content."""
    deadline = time.monotonic() + seconds
    got = [0] * len(items)
    errors: list[str] = []

    def one(k: int) -> None:
        path, upload = items[k]
        c = Conn(port, timeout=30)
        # A small receive buffer, set before the data flows: the kernel does not soak up
        # megabytes on the reader's behalf, so the server has to hold what it has read.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            c.send_head("GET", path, {})
            status, headers = c.read_head()
            if status != 200:
                raise RuntimeError(f"GET answered {status}")
            exp = bytearray(TAIL)
            pending = 0
            for chunk in c.body_chunks(headers, bytearray(step)):
                want = b"".join(blocks(upload, got[k], got[k] + len(chunk), exp))
                if chunk != want:
                    raise RuntimeError(f"slow reader: bytes at {got[k]} differ")
                got[k] += len(chunk)
                pending += len(chunk)
                if pending >= step:
                    pending = 0
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(pause)
        except Exception as e:
            errors.append(repr(e))
        finally:
            c.close()  # mid-body: the server must notice and let go

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(got), errors


def sc_download(run: Running, s: Sizes) -> dict[str, Any]:
    uploads = [200 + k for k in range(s.dl_files)]
    paths = upload_many(run.port, uploads, s.dl_size, conc=8)
    files = list(zip(paths, uploads, strict=True))
    row: dict[str, Any] = {"idle_before": tree_sample(run.proc.pid)[0] / MiB}
    cpu = 0.0
    served = 0
    for conc in (8, 32):
        items = [files[k % len(files)] for k in range(conc)]
        with Sampler(run.roots) as smp:
            mibps = parallel_gets(run.port, items, s.dl_size)
        row[f"mibps{conc}"] = mibps
        row[f"peak{conc}"] = smp.peak_tree / MiB
        cpu += smp.cpu[0]
        served += conc * s.dl_size
    with Sampler(run.roots) as smp:
        slow_bytes, slow_errors = slow_readers(run.port, [files[k % len(files)] for k in range(16)],
                                               s.dl_slow_s)
    row["peak_slow"] = smp.peak_tree / MiB
    time.sleep(2.0)  # connections closed mid-body; give the server time to notice
    row["idle_after"] = tree_sample(run.proc.pid)[0] / MiB
    peaks = [row["peak8"], row["peak32"], row["peak_slow"]]
    notes = [] if len(files) >= 32 else [f"32 GETs over {len(files)} uploads"]
    if slow_errors:
        notes.append(f"{len(slow_errors)} slow readers failed: {slow_errors[0][:100]}")
    return {**row, "value": row["mibps8"], "bytes": served, "cpu_s": cpu,
            "cpu_per_gib": cpu / (served / GiB), "peak_tree_mib": max(peaks),
            "peak_proc_mib": float("nan"), "idle_tree_mib": row["idle_before"],
            "slow_mib": slow_bytes / MiB,
            "verified": f"crc32 ok {8 + 32}/{8 + 32} GETs"
                        + ("" if slow_errors else f", {slow_bytes / MiB:.0f} MiB to slow readers"),
            "note": "; ".join(notes)}


@dataclasses.dataclass
class Col:
    """One table column: row[key] over the repetitions; `ratio`: add a "÷ tusd" column (this
    target's median over tusd's median, in the same run)."""
    header: str
    key: str
    fmt: str
    ratio: bool = False


TAIL_COLS = [Col("peak RSS tree MiB", "peak_tree_mib", ".0f"),
             Col("max proc MiB", "peak_proc_mib", ".0f"),
             Col("CPU s/GiB", "cpu_per_gib", ".2f", ratio=True)]


@dataclasses.dataclass
class Scenario:
    title: str
    fn: Callable[[Running, Sizes], dict[str, Any]]
    cols: list[Col]
    skip: Callable[[Target], str | None] = lambda t: None


HEAVY = ("slow", "download")  # half a minute per target each: --heavy-reps of them
SCENARIOS: dict[str, Scenario] = {
    "single": Scenario("one upload in a single PATCH", sc_single,
                       [Col("MiB/s", "value", ".0f", ratio=True), *TAIL_COLS]),
    "chunks": Scenario("one upload in 8 MiB PATCHes", sc_chunks,
                       [Col("MiB/s", "value", ".0f", ratio=True), *TAIL_COLS]),
    "small": Scenario("small uploads, creation-with-upload", sc_small,
                      [Col("uploads/s", "value", ".0f", ratio=True), Col("p50 ms", "p50", ".1f"),
                       Col("p99 ms", "p99", ".1f", ratio=True), *TAIL_COLS]),
    "parallel": Scenario("parallel single-PATCH uploads", sc_parallel,
                         [Col("MiB/s aggregate", "value", ".0f", ratio=True), *TAIL_COLS]),
    "resume": Scenario("resume after RST at 50 %", sc_resume,
                       [Col("s until resuming PATCH accepted", "value", ".3f", ratio=True),
                        Col("until HEAD 200 s", "head_s", ".3f"),
                        Col("bytes lost", "lost", ",.0f"), *TAIL_COLS]),
    "slow": Scenario("slow clients", sc_slow,
                     [Col("completed", "completed", ",.0f"),
                      Col("server CPU s", "cpu_s", ".1f", ratio=True),
                      Col("peak RSS tree MiB", "peak_tree_mib", ".0f", ratio=True),
                      Col("max proc MiB", "peak_proc_mib", ".0f"),
                      Col("probe HEAD p50 ms", "probe_p50", ".1f"),
                      Col("probe HEAD p99 ms", "probe_p99", ".1f", ratio=True),
                      Col("last 204 s", "last_s", ".1f")]),
    "download": Scenario("downloads (GET of finished uploads)", sc_download,
                         [Col("8 GETs MiB/s", "value", ".0f", ratio=True),
                          Col("32 GETs MiB/s", "mibps32", ".0f", ratio=True),
                          Col("peak RSS 8 GETs MiB", "peak8", ".0f"),
                          Col("peak RSS 32 GETs MiB", "peak32", ".0f", ratio=True),
                          Col("peak RSS 16 slow readers MiB", "peak_slow", ".0f"),
                          Col("RSS idle before MiB", "idle_before", ".0f"),
                          Col("RSS idle after MiB", "idle_after", ".0f"),
                          Col("CPU s/GiB", "cpu_per_gib", ".2f", ratio=True)],
                         skip=lambda t: t.serves_get),
}


def make_targets(names: list[str]) -> list[Target]:
    all_targets = {
        "sink": Target("sink", "sink (discards; client ceiling)", "sink"),
        "tpy-fsync": Target("tpy-fsync", "tusd-py embedded, fsync", "tpy",
                            ["--durability", "fsync"]),
        "tpy-os": Target("tpy-os", "tusd-py embedded, os", "tpy", ["--durability", "os"]),
        "tpy-redis": Target("tpy-redis", "tusd-py + Redis, fsync", "tpy",
                            ["--durability", "fsync"], redis=True),
        "tpy-w2": Target("tpy-w2", "tusd-py --workers 2 + Redis, fsync", "tpy",
                         ["--durability", "fsync", "--workers", "2"], redis=True),
        "tpy-w2-os": Target("tpy-w2-os", "tusd-py --workers 2 + Redis, os", "tpy",
                            ["--durability", "os", "--workers", "2"], redis=True),
        "tpy-w2-emb": Target("tpy-w2-emb", "tusd-py --workers 2 (embedded), fsync", "tpy",
                             ["--durability", "fsync", "--workers", "2"]),
        "tpy-w2-emb-os": Target("tpy-w2-emb-os", "tusd-py --workers 2 (embedded), os", "tpy",
                                ["--durability", "os", "--workers", "2"]),
        "tus-node": Target("tus-node", "@tus/server + file-store (no fsync)", "node"),
        "tusd": Target("tusd", "tusd 2.10 (no fsync)", "tusd"),
    }
    unknown = [n for n in names if n not in all_targets]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {', '.join(all_targets)}")
    return [all_targets[n] for n in names]


# ---------------------------------------------------------------- the sink endpoint

def serve_sink(port: int) -> None:
    """Threaded raw-socket tus sink: POST/PATCH/HEAD/OPTIONS, bytes discarded."""
    offsets: dict[str, int] = {}
    lengths: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(1, 1 << 62))

    def handle(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Sized by the largest body seen on this connection: thousands of slow clients with
        # 256 KiB bodies must not cost the sink a touched MiB each.
        buf = bytearray(0)
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pending += data
                head, pending = pending.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split()[:2]
                hdr = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    hdr[k.strip().lower()] = v.strip()
                length = int(hdr.get("content-length", "0"))
                upload_id = target.rsplit("/", 1)[-1]
                if method == "POST":
                    with lock:
                        upload_id = str(next(counter))
                        offsets[upload_id] = 0
                        lengths[upload_id] = int(hdr.get("upload-length", "0"))
                got = min(len(pending), length)
                pending = pending[got:]
                if len(buf) < min(MiB, length - got):
                    buf = bytearray(min(MiB, length - got))
                try:
                    while got < length:
                        n = sock.recv_into(buf, min(len(buf), length - got))
                        if not n:
                            break
                        got += n
                finally:
                    if method in ("POST", "PATCH") and upload_id in offsets:
                        offsets[upload_id] += got
                if got < length:
                    return
                base = "HTTP/1.1 {}\r\nTus-Resumable: 1.0.0\r\nContent-Length: 0\r\n"
                if method == "POST":
                    out = (base.format("201 Created") +
                           f"Location: http://{HOST}:{port}/files/{upload_id}\r\n"
                           f"Upload-Offset: {offsets[upload_id]}\r\n\r\n")
                elif method == "PATCH" and upload_id in offsets:
                    out = (base.format("204 No Content")
                           + f"Upload-Offset: {offsets[upload_id]}\r\n\r\n")
                elif method == "HEAD" and upload_id in offsets:
                    out = (base.format("200 OK") + f"Upload-Offset: {offsets[upload_id]}\r\n"
                           f"Upload-Length: {lengths[upload_id]}\r\n"
                           "Cache-Control: no-store\r\n\r\n")
                elif method == "OPTIONS":
                    out = (base.format("204 No Content") + "Tus-Version: 1.0.0\r\n"
                           "Tus-Extension: creation,creation-with-upload\r\n\r\n")
                else:
                    out = base.format("404 Not Found") + "\r\n"
                sock.sendall(out.encode())
        except OSError:
            return
        finally:
            sock.close()

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(4096)
    # Thousands of slow clients are thousands of threads here: small stacks keep that cheap.
    threading.stack_size(512 * 1024)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------- machine

def host_facts() -> dict[str, str]:
    """nproc, CPU model, RAM, kernel and Python: the machine line of every benchmark report."""
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    return info


def machine(scratch: Path, dd_mib: int, tpy_root: Path) -> dict[str, str]:
    info = host_facts()
    with contextlib.suppress(Exception):
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                      check=True).stdout.strip()
    with contextlib.suppress(Exception):
        info["tusd-py commit"] = subprocess.run(
            ["git", "-C", str(tpy_root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True).stdout.strip()
    out = scratch / "dd.bin"
    for label, extra in (("disk write, page cache (dd, 2 runs)", []),
                         ("disk write, conv=fdatasync (dd, 2 runs)", ["conv=fdatasync"])):
        speeds = []
        for _ in range(2):
            r = subprocess.run(["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={dd_mib}",
                                *extra], capture_output=True, text=True, check=False)
            speeds.append(r.stderr.strip().splitlines()[-1].split(",")[-1].strip()
                          if r.returncode == 0 else f"dd failed: {r.stderr.strip()[-200:]}")
            out.unlink(missing_ok=True)
        info[label] = " / ".join(speeds) + f" ({dd_mib} MiB)"
    return info


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- reporting

def fmt_range(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in runs if r.get(key) is not None and r[key] == r[key]]
    return statistics.median(vals) if vals else None


def ratio_cell(runs: list[dict[str, Any]], ref: list[dict[str, Any]], key: str) -> str:
    mine, theirs = median_of(runs, key), median_of(ref, key)
    if mine is None or not theirs:
        return "-"
    return f"{mine / theirs:.2f}"


def report(results: dict[str, dict[str, list[dict[str, Any]]]], targets: list[Target],
           sizes: Sizes, info: dict[str, str], meta: dict[str, str]) -> str:
    out: list[str] = []
    w = out.append
    w("# tusd-py benchmark results\n")
    w(f"Generated by `{meta['command']}` on {meta['date']} "
      f"({meta['reps']} repetitions, median (min-max); {meta['duration']}).\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    for k, v in info.items():
        w(f"| {k} | {v} |")
    w(f"| load average at start / end | {meta['load_start']} / {meta['load_end']} |")
    w(f"| peers | {meta.get('peer', 'not run')} |")
    w("")
    w("Loopback only; one client process (raw sockets, 1 MiB `sendall`; asyncio on uvloop for "
      "small uploads and slow clients). Every target is started fresh (by PID, new upload dir) "
      "for every scenario and repetition; targets are interleaved in rotating order, so only "
      "ratios within this run mean anything (2 shared cores). Peak RSS is summed over the "
      "server's whole process tree (uvicorn workers included; Redis is not in the tree — its "
      "CPU is listed separately); \"max proc\" is the largest single process. CPU is user+system "
      "seconds of the tree (/proc/<pid>/stat) during the measured window, per GiB of data. "
      "Every stored byte is verified after each repetition (sha256 of a GET; @tus/server: its "
      "datastore files, as it exits on GETs; downloads: crc32 of every byte received); a "
      "mismatch or error is a FAIL row. tusd-py runs with `--no-processing --no-dashboard` "
      "(the peers do not hash/link/thumbnail finished uploads) and `--log-level warning`; "
      "tusdcore has no log-level flag and logs every request to its log file, like `cmd/tusd`. "
      "`fsync` = bytes fdatasync'd before each committed offset; `os`, @tus/server and tusd "
      "trust the page cache. \"÷ tusd\" = this target's median / tusd's median (for s, ms, "
      "MiB and CPU lower is better; for MiB/s and uploads/s higher is better).\n")
    human = lambda n: f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"  # noqa: E731
    sizes_text = {
        "single": f"one {human(sizes.big)} upload, one PATCH",
        "chunks": f"one {human(sizes.big)} upload in {human(sizes.chunk)} PATCHes (keep-alive)",
        "small": f"{sizes.small_n:,} uploads of {sizes.small_size // 1024} KiB, concurrency "
                 f"{sizes.small_conc}, creation-with-upload (POST with body); latency = POST sent "
                 f"→ 201",
        "parallel": f"{sizes.par_n} concurrent uploads of {human(sizes.par_size)}, one PATCH each",
        "resume": f"{human(sizes.resume)} upload, connection reset (SO_LINGER 0) after "
                  f"{human(sizes.resume // 2)}; wait = RST → 204 of the resuming PATCH (HEAD, then "
                  f"PATCH of the next 64 KiB from the HEAD offset; 423/409 retried every 2 ms); "
                  f"lost = bytes the client had handed to send() - HEAD offset. Up to ~4 MiB sit "
                  f"in the client's send queue plus a few MiB in the server's receive queue at the "
                  f"RST (results.json has a snapshot of both); the sink, which reads until the "
                  f"error, shows how much of that a server can still keep",
        "slow": f"{sizes.slow_n:,} concurrent uploads (created first, not measured), each "
                f"{SLOW_SIZE // 1024} KiB as one PATCH whose body arrives in "
                f"{SLOW_PIECE // 1024} KiB pieces every {SLOW_GAP:g} s (a weak mobile link; "
                f"{SLOW_SIZE // SLOW_PIECE} pieces, ~{SLOW_SIZE // SLOW_PIECE * SLOW_GAP:g} s "
                f"each), one connection per upload, starts spread over {SLOW_RAMP:g} s; meanwhile "
                f"a HEAD of another (idle) upload every {PROBE_EVERY * 1000:.0f} ms on its own "
                f"keep-alive connection. CPU s = the server tree's CPU over the whole window; "
                f"completed = 204 with the full offset; verified = GET (or file) bytes equal",
        "download": f"{sizes.dl_files} finished uploads of {human(sizes.dl_size)} (uploaded "
                    f"first, not measured); then 8 and 32 concurrent GETs (MiB/s aggregate, "
                    f"first byte to last; 32 GETs over {min(sizes.dl_files, 32)} distinct "
                    f"uploads); then 16 slow readers (64 KiB, 0.2 s pause, 64 KiB receive buffer) "
                    f"for {sizes.dl_slow_s:g} s, closed mid-body; idle after = tree RSS 2 s later. "
                    f"Targets that cannot serve GET are skipped",
    }
    tusd_key = next((t.key for t in targets if t.kind == "tusd"), None)

    # Summary: the headline figure of every scenario, one column per target.
    w("## Summary\n")
    w("Median of the repetitions; in brackets the ratio to tusd in this run.\n")
    w("| scenario | " + " | ".join(t.label for t in targets) + " |")
    w("|---|" + "---|" * len(targets))
    for sc, per_target in results.items():
        spec = SCENARIOS[sc]
        keys = {"slow": ["completed", "cpu_s", "peak_tree_mib", "probe_p99"],
                "download": ["value", "mibps32", "peak_slow", "idle_after"]}.get(
                    sc, [spec.cols[0].key, "cpu_per_gib"])
        heads = [next(c for c in spec.cols if c.key == k) for k in keys]
        ref = per_target.get(tusd_key, []) if tusd_key else []
        ref = [r for r in ref if "error" not in r and "skipped" not in r]
        for col in heads:
            cells = []
            for t in targets:
                ok = [r for r in per_target.get(t.key, []) if "error" not in r
                      and "skipped" not in r]
                if not ok:
                    bad = per_target.get(t.key, [])
                    cells.append("skipped" if bad and "skipped" in bad[0] else
                                 "**FAIL**" if bad else "-")
                    continue
                med = median_of(ok, col.key)
                cell = format(med, col.fmt) if med is not None else "-"
                if ref and t.key != tusd_key:
                    cell += f" ({ratio_cell(ok, ref, col.key)})"
                cells.append(cell)
            w(f"| {spec.title}: {col.header} | " + " | ".join(cells) + " |")
    w("")

    for sc, per_target in results.items():
        spec = SCENARIOS[sc]
        w(f"## {spec.title}\n")
        w(f"{sizes_text[sc]}.\n")
        ref = [r for r in per_target.get(tusd_key or "", [])
               if "error" not in r and "skipped" not in r]
        headers: list[str] = []
        for c in spec.cols:
            headers.append(c.header)
            if c.ratio and ref:
                headers.append("÷ tusd")
        headers += ["verified", "notes"]
        w("| target | " + " | ".join(headers) + " |")
        w("|---|" + "---|" * len(headers))
        for t in targets:
            runs = per_target.get(t.key, [])
            skipped = [r for r in runs if "skipped" in r]
            ok = [r for r in runs if "error" not in r and "skipped" not in r]
            fails = [r for r in runs if "error" in r]
            if skipped and not ok and not fails:
                w(f"| {t.label} | " + " | ".join(["-"] * (len(headers) - 1))
                  + f" | skipped: {skipped[0]['skipped']} |")
                continue
            if not ok:
                err = fails[0]["error"] if fails else "not run"
                w(f"| {t.label} | **FAIL** | " + " | ".join(["-"] * (len(headers) - 3))
                  + f" | **FAIL** | {err[:160]} |")
                continue
            cells = []
            for i, c in enumerate(spec.cols):
                vals = [float(r[c.key]) for r in ok
                        if r.get(c.key) is not None and r[c.key] == r[c.key]]
                cell = fmt_range(vals, c.fmt)
                if i == 0:
                    cell = f"**{cell}**"
                if c.key == "cpu_per_gib" and any(r.get("redis_cpu_per_gib") is not None
                                                  for r in ok):
                    cell += " + Redis " + fmt_range([r["redis_cpu_per_gib"] for r in ok], ".2f")
                cells.append(cell)
                if c.ratio and ref:
                    cells.append(ratio_cell(ok, ref, c.key) if t.key != tusd_key else "1")
            verified = sorted({r["verified"] for r in ok})
            cells.append(f"{'; '.join(verified)} x{len(ok)}"
                         + (f", **{len(fails)} FAIL**" if fails else ""))
            notes = sorted({r["note"] for r in ok if r.get("note")})
            if fails:
                notes.append("FAIL: " + fails[0]["error"][:120])
            cells.append("; ".join(notes)[:300])
            w(f"| {t.label} | " + " | ".join(cells) + " |")
        w("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- profiling

def summarize_raw(raw: Path, top: int = 25) -> str:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples in {raw}", "", "self (top):"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    out += ["", "inclusive (top):"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="512 MiB single/chunks, 8 x 64 MiB parallel, 256 MiB resume, downloads "
                         "over 8 uploads of 128 MiB (slow clients unchanged: --slow-clients)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--heavy-reps", type=int, default=1,
                    help="repetitions of the slow and download scenarios (at most --reps)")
    ap.add_argument("--targets",
                    default="sink,tpy-fsync,tpy-os,tpy-w2-emb,tpy-w2,tus-node,tusd",
                    help="comma list (also: tpy-redis, tpy-w2-os, tpy-w2-emb-os); tusd is "
                         "dropped from the default list when --tusd does not exist")
    ap.add_argument("--tusd", type=Path, default=DEFAULT_TUSD,
                    help="tusd binary (tusdcore or cmd/tusd; needs -host -port -base-path "
                         "-upload-dir); default: %(default)s when it exists")
    ap.add_argument("--tpy-root", type=Path, default=ROOT,
                    help="tusd-py tree to run (its .venv when it has one): e.g. a `git worktree "
                         "add /tmp/bench-tree HEAD` while the main tree is being edited")
    ap.add_argument("--slow-clients", type=int, default=3000, metavar="N",
                    help="concurrent uploads in the slow-clients scenario")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "tusd-py-bench")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    ap.add_argument("--reinstall-node", action="store_true")
    ap.add_argument("--with-processing", action="store_true",
                    help="leave tusd-py's completion processing on")
    ap.add_argument("--profile", metavar="TARGET:SCENARIO",
                    help="run once with py-spy recording the tusd-py tree; print top functions")
    ap.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return

    if args.quick:
        sizes = Sizes(big=512 * MiB, chunk=8 * MiB, small_n=1000, small_size=64 * 1024,
                      small_conc=32, par_n=8, par_size=64 * MiB, resume=256 * MiB,
                      slow_n=args.slow_clients, dl_files=8, dl_size=128 * MiB, dl_slow_s=4.0)
    else:
        sizes = Sizes(big=1 * GiB, chunk=8 * MiB, small_n=1000, small_size=64 * 1024,
                      small_conc=32, par_n=8, par_size=128 * MiB, resume=512 * MiB,
                      slow_n=args.slow_clients, dl_files=16, dl_size=128 * MiB, dl_slow_s=6.0)
    target_names = args.targets.split(",")
    tusd_ok = args.tusd.is_file() and os.access(args.tusd, os.X_OK)
    if "tusd" in target_names and not tusd_ok:
        if args.targets != ap.get_default("targets"):
            raise SystemExit(f"target tusd: no executable at {args.tusd} (--tusd PATH)")
        print(f"# tusd not found at {args.tusd}: running without it (--tusd PATH)", flush=True)
        target_names.remove("tusd")
    scenarios = args.scenarios.split(",")
    if args.profile:
        tname, _, sc = args.profile.partition(":")
        target_names, scenarios, args.reps = [tname], [sc], 1
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise SystemExit(f"unknown scenario {sc}; known: {', '.join(SCENARIOS)}")
    targets = make_targets(target_names)

    args.scratch.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.scratch))
    venv_python = ROOT / ".venv/bin/python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    node_dir, peer = None, "not run"
    if any(t.kind == "node" for t in targets):
        node_dir, peer = install_node_peer(args.scratch, args.reinstall_node)
    if "tusd" in target_names:
        peer = ("" if peer == "not run" else peer + "; ") + f"tusd: {args.tusd} (sha256 " \
            f"{file_sha256(args.tusd)[0][:12]})"
    env = Env(run_dir, python, node_dir, args.with_processing, args.tpy_root.resolve(),
              args.tusd.resolve() if tusd_ok else None)
    raise_nofile(sizes.slow_n)

    t_start = time.monotonic()
    load_start = loadavg()
    info = {} if args.profile else machine(run_dir, 1024 if not args.quick else 512,
                                           args.tpy_root)
    print("# machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    print("# precomputing expected sha256 ...", flush=True)
    for sc in scenarios:
        if sc == "single":
            expected_sha256(1, sizes.big)
        elif sc == "chunks":
            expected_sha256(2, sizes.big)
        elif sc == "parallel":
            for i in range(sizes.par_n):
                expected_sha256(100 + i, sizes.par_size)
        elif sc == "resume":
            expected_sha256(5, sizes.resume)
        elif sc == "download":
            for k in range(sizes.dl_files):
                expected_crc32(200 + k, sizes.dl_size)

    results: dict[str, dict[str, list[dict[str, Any]]]] = {sc: {} for sc in scenarios}
    for rep in range(args.reps):
        for sc in scenarios:
            if sc in HEAVY and rep >= args.heavy_reps:
                continue
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for t in order:
                label = f"[rep {rep + 1}/{args.reps}] {sc:8s} {t.key:10s}"
                row: dict[str, Any]
                spy = None
                why = SCENARIOS[sc].skip(t)
                if why:
                    results[sc].setdefault(t.key, []).append({"skipped": why})
                    print(f"{label} skipped: {why}", flush=True)
                    continue
                try:
                    run = env.start(t)
                except Exception as e:
                    row = {"error": f"start: {e}"}
                    print(f"{label} FAIL {row['error'][:300]}", flush=True)
                    results[sc].setdefault(t.key, []).append(row)
                    continue
                try:
                    if args.profile:
                        raw = run_dir.parent / f"profile-{t.key}-{sc}.txt"
                        spy = subprocess.Popen(
                            [str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(run.proc.pid),
                             "--subprocesses", "--gil", "-r", "250", "-f", "raw", "-o", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                        time.sleep(1.5)
                    res = SCENARIOS[sc].fn(run, sizes)
                    row = res
                    if "smp" in res:  # one measured window (download accounts for its own)
                        smp: Sampler = res.pop("smp")
                        gib = res["bytes"] / GiB
                        row = {**res, "peak_tree_mib": smp.peak_tree / MiB,
                               "peak_proc_mib": smp.peak_proc / MiB,
                               "idle_tree_mib": smp.idle_tree / MiB,
                               "cpu_s": smp.cpu[0], "cpu_per_gib": smp.cpu[0] / gib,
                               "redis_cpu_per_gib": smp.cpu[1] / gib if len(smp.cpu) > 1
                               else None}
                    extra = ""
                    if sc == "resume":
                        extra = (f" lost {row['lost']:,} B (client unsent {row['unsent']:,}, "
                                 f"server rx queue {row['server_rx']:,}) ({row.get('note')})")
                    if row.get("note") and sc != "resume":
                        extra = f" ({row['note'][:200]})"
                    cols = "  ".join(f"{c.header} {format(float(row[c.key]), c.fmt)}"
                                     for c in SCENARIOS[sc].cols if row.get(c.key) is not None)
                    print(f"{label} {cols}  rss idle {row['idle_tree_mib']:.0f} MiB  "
                          f"{row['verified']}{extra}", flush=True)
                except Exception as e:
                    row = {"error": f"{type(e).__name__}: {e}"}
                    print(f"{label} FAIL {row['error'][:300]}", flush=True)
                    if os.environ.get("BENCH_DEBUG"):
                        traceback.print_exc()
                        if run.log and run.log.exists():
                            print("server log tail:", run.log.read_text(errors="replace")[-3000:])
                finally:
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        try:
                            _, err = spy.communicate(timeout=60)
                        except subprocess.TimeoutExpired:
                            spy.kill()
                            _, err = spy.communicate()
                    # Thousands of files deleted just before the next target's small-upload
                    # run make ext4 scan its recently deleted inodes on every create (for
                    # ~30 s): measured here, that run then does 300-400 uploads/s instead of
                    # 700-1300. Those dirs are removed when the suite ends.
                    env.stop(run, keep_files=sc in ("small", "slow"))
                results[sc].setdefault(t.key, []).append(row)
                if spy is not None:
                    if raw.exists():
                        print(summarize_raw(raw))
                    else:
                        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    if args.profile:
        return
    minutes = (time.monotonic() - t_start) / 60
    cmd = "python benchmarks/suite.py " + " ".join(sys.argv[1:])
    reps = str(args.reps)
    if any(sc in HEAVY for sc in scenarios) and args.heavy_reps < args.reps:
        reps += f" ({args.heavy_reps} for {' and '.join(sc for sc in HEAVY if sc in scenarios)})"
    meta = {"command": cmd.strip(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "reps": reps, "duration": f"{minutes:.1f} min",
            "load_start": load_start, "load_end": loadavg(), "peer": peer}
    text = report(results, targets, sizes, info, meta)
    print()
    print(text)
    (args.scratch / "results.json").write_text(json.dumps(
        {"meta": meta, "machine": info, "sizes": dataclasses.asdict(sizes), "results": results},
        indent=1, default=str))
    if not args.no_write:
        args.out.write_text(text)
        print(f"# wrote {args.out} (raw numbers: {args.scratch / 'results.json'})")


if __name__ == "__main__":
    main()
