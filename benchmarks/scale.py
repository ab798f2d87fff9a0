"""Scale run (issue #18 part 5): 3 tusd-py instances x --workers 2 sharing one redis-server and
one upload dir, N slow mobile uploads spread across them through the fault proxy, plus resume
storms. Benchmark only: not part of the test command.

    .venv/bin/python benchmarks/scale.py                       # 3,000 uploads, 120 s steady state
    .venv/bin/python benchmarks/scale.py --uploads 300 --duration 20 --no-write   # a smoke run

What runs (all on loopback, all started here by PID and stopped by PID):

  redis-server   its own, on a free port: --save '' --appendonly no
  3 instances    tusd-py serve --workers 2 --redis-url ... --upload-dir <one shared dir>
                 (defaults otherwise: fsync durability, processing on, 10 s leases), run from a
                 snapshot of HEAD (`git archive`) so edits in the working tree do not leak in
  3 proxies      python -m tests.faultproxy, one in front of each instance, latency only
                 (--latency 0.05 one way, no faults, no throttle: the clients pace themselves)
  clients        this process, asyncio on uvloop, one raw socket per request: each of N clients
                 uploads one file after another (sizes drawn from --size-min..--size-max) as one
                 PATCH whose body arrives 8 KiB every 0.5 s (a weak mobile link, 16 KiB/s); it
                 never bursts to catch up when the server holds it back. A --flaky fraction of the
                 clients drops its connection every --drop-min..--drop-max s (RST or FIN), waits
                 0.2-1 s and resumes: HEAD + PATCH from the returned offset on a randomly chosen
                 instance (so usually another one)
  probe          a child process: a HEAD of an idle upload every 100 ms straight to each
                 instance (not through the proxy), on a keep-alive connection

Phases: clients start evenly over --ramp s; steady state is measured for --duration s from
ramp + 5 s; then no client starts a new upload and the ones in flight send the rest of their
body at once (drain, bounded by --drain-timeout); then every completed upload's stored file is
hashed and compared with the sha256 of what its client sent.

Measured over the steady-state window: per instance CPU-s (utime+stime of its process tree from
/proc), peak RSS (sum of its processes), HEAD p50/p99/max of its probe; Redis ops/s
(total_commands_processed delta, and INFO instantaneous_ops_per_sec sampled each second),
commands by type (INFO commandstats delta), Redis CPU-s (/proc of its pid), both per active
upload; the proxies' and the client's own CPU. Everything is seeded (--seed) and bounded in
count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import (  # shared with the suite (benchmarks/ is on sys.path)
    host_facts,
    proc_stat,
    stop_proc,
    tree,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB

PIECE = 8 * KiB  # one piece every GAP: a weak mobile link (16 KiB/s)
GAP = 0.5
PROBE_EVERY = 0.1
SETTLE = 5.0  # seconds after the ramp before the steady-state window opens
IDLE_SECONDS = 5.0  # idle baseline before the clients start
POOL_SIZE = 8 * MiB  # upload bodies are seeded slices of this pool


def tree_usage(root: int, pids: list[int]) -> tuple[int, float]:
    """(rss summed over `pids`, cpu seconds of them plus the root's reaped children)"""
    rss = 0
    cpu = 0.0
    for pid in pids:
        try:
            r, own, reaped = proc_stat(pid)
        except (OSError, IndexError):
            continue
        rss += r
        cpu += own + (reaped if pid == root else 0.0)
    return rss, cpu


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def http(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str]]:
    """One blocking request on its own connection (setup and checks only)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n"
                  f"{head}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                raise ConnectionError(f"{method} {path}: closed before a response")
            data += part
    return parse_head(data.split(b"\r\n\r\n", 1)[0])


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers


def path_of(location: str) -> str:
    if "://" in location:
        location = "/" + location.split("://", 1)[1].split("/", 1)[1]
    return location


class Redis:
    """A minimal RESP client (blocking) for INFO and a few read commands."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.buf = b""
        self.lock = threading.Lock()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            part = self.sock.recv(65536)
            if not part:
                raise ConnectionError("redis closed")
            self.buf += part
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                part = self.sock.recv(65536)
                if not part:
                    raise ConnectionError("redis closed")
                self.buf += part
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError(f"RESP: {line!r}")

    def call(self, *args: str) -> Any:
        with self.lock:
            out = f"*{len(args)}\r\n".encode()
            for a in args:
                b = a.encode()
                out += b"$%d\r\n%s\r\n" % (len(b), b)
            self.sock.sendall(out)
            return self._read()

    def info(self, section: str) -> dict[str, str]:
        text = self.call("INFO", section)
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, _, v = line.partition(":")
                out[k] = v
        return out

    def commandstats(self) -> dict[str, int]:
        out = {}
        for k, v in self.info("commandstats").items():
            calls = dict(p.split("=", 1) for p in v.split(","))
            out[k.removeprefix("cmdstat_")] = int(calls["calls"])
        return out


@dataclass
class Instance:
    index: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    proxy: subprocess.Popen[bytes] | None = None
    proxy_port: int = 0
    pids: list[int] = field(default_factory=list)


def wait_instance(inst: Instance, workers: int) -> None:
    deadline = time.monotonic() + 90
    ok = 0
    while time.monotonic() < deadline:
        if inst.proc.poll() is not None:
            raise RuntimeError(f"instance {inst.index} exited with {inst.proc.returncode}: "
                               f"{inst.log.read_text(errors='replace')[-2000:]}")
        try:
            status, _ = http(inst.port, "OPTIONS", "/files/", timeout=2)
            ok += status in (200, 204)
        except OSError:
            time.sleep(0.1)
        if ok >= 4 * workers and len(tree(inst.proc.pid)) >= workers + 1:
            return
        time.sleep(0.05)
    raise RuntimeError(f"instance {inst.index} not ready: "
                       f"{inst.log.read_text(errors='replace')[-2000:]}")


def start_proxy(python: str, cwd: Path, target: int, latency: float, seed: int,
                log: Path) -> tuple[subprocess.Popen[bytes], int]:
    # tests/faultproxy.py as a program, on uvloop (like the servers and the clients): on the
    # default loop the three proxies cost about a fifth of what the servers do.
    argv = ["--target", f"{HOST}:{target}", "--latency", str(latency), "--seed", str(seed),
            "--duration", "3600"]
    code = ("import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
            "from tests.faultproxy import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [python, "-c", code, *argv],
        cwd=cwd, stdout=subprocess.PIPE, stderr=log.open("wb"), start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("faultproxy.listening port="):
        stop_proc(proc)
        raise RuntimeError(f"faultproxy did not start: {line!r} {log.read_text()[-1000:]}")
    port = int(line.split("port=", 1)[1].split()[0])
    # Keep draining its stdout (it logs nothing more without faults, but never block it).
    threading.Thread(target=lambda: proc.stdout.read() if proc.stdout else None,
                     daemon=True).start()
    return proc, port


# ---------------------------------------------------------------- bodies

class Bodies:
    """Upload (client k, number j, size) -> deterministic bytes: a 16-byte (k, j) prefix, then
    a seeded slice of a random pool, so two uploads never share their bytes at one offset."""

    def __init__(self, seed: int, max_size: int) -> None:
        self.pool = random.Random(f"{seed}/pool").randbytes(POOL_SIZE + max_size)
        self.seed = seed

    def start(self, k: int, j: int) -> int:
        return random.Random(f"{self.seed}/body/{k}/{j}").randrange(POOL_SIZE)

    def piece(self, k: int, j: int, start: int, pos: int, end: int) -> bytes | memoryview:
        """Bytes [pos, end) of upload (k, j) without building the whole body."""
        if pos >= 16:
            return memoryview(self.pool)[start + pos:start + end]
        return struct.pack(">QQ", k, j)[pos:min(end, 16)] + self.pool[start + 16:start + end]

    def body(self, k: int, j: int, size: int) -> bytes:
        return bytes(self.piece(k, j, self.start(k, j), 0, size))


# ---------------------------------------------------------------- clients

@dataclass
class Upload:
    k: int
    j: int
    size: int
    path: str = ""
    done: bool = False
    offset: int = 0
    attempts: int = 0  # PATCHes sent (1 + resumes)


@dataclass
class Stats:
    instances: int
    requests: Counter[str] = field(default_factory=Counter)  # "i METHOD status"
    errors: Counter[str] = field(default_factory=Counter)
    sent: list[int] = field(default_factory=list)  # body bytes sent, per instance
    active: int = 0  # uploads created and not yet completed
    uploads: list[Upload] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    cross_resumes: int = 0  # resumed on another instance than the one that had it
    resume_head_ms: list[float] = field(default_factory=list)
    resume_gap_ms: list[float] = field(default_factory=list)  # drop -> accepted resumed PATCH
    lag_ms: list[float] = field(default_factory=list)  # the client's own event-loop lag

    def __post_init__(self) -> None:
        self.sent = [0] * self.instances


class Conn:
    """One raw non-blocking socket with a small read buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.buf = b""

    async def response(self, method: str) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            part = await self.loop.sock_recv(self.sock, 65536)
            if not part:
                raise ConnectionError("closed before a response")
            self.buf += part
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, headers = parse_head(head)
        n = 0 if method == "HEAD" or status in (204, 304) else int(
            headers.get("content-length", "0"))
        while len(self.buf) < n:
            part = await self.loop.sock_recv(self.sock, 65536)
            if not part:
                raise ConnectionError("closed inside a response body")
            self.buf += part
        self.buf = self.buf[n:]
        return status, headers

    def close(self, rst: bool = False) -> None:
        if rst:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        self.sock.close()


class Dropped(Exception):
    pass


class Load:
    def __init__(self, args: argparse.Namespace, ports: list[int], bodies: Bodies) -> None:
        self.args = args
        self.ports = ports
        self.bodies = bodies
        self.stats = Stats(len(ports))
        self.stop_new = asyncio.Event()  # window over: no new uploads, the rest drain
        self.draining = False
        self.connecting = asyncio.Semaphore(256)
        n = args.uploads
        self.flaky = set(random.Random(f"{args.seed}/flaky").sample(
            range(n), round(n * args.flaky)))

    async def connect(self, inst: int) -> Conn:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with self.connecting:
                await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.ports[inst])), 30)
        except BaseException:
            sock.close()
            raise
        return Conn(loop, sock)

    async def request(self, conn: Conn, inst: int, method: str, path: str,
                      headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await conn.loop.sock_sendall(
            conn.sock, f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
                       f"{head}\r\n".encode())
        status, h = await asyncio.wait_for(conn.response(method), 60)
        self.stats.requests[f"{inst} {method} {status}"] += 1
        return status, h

    async def patch(self, conn: Conn, inst: int, up: Upload, start: int, drop_at: float,
                    rng: random.Random) -> tuple[int, dict[str, str]]:
        """One PATCH from up.offset to the end, 8 KiB every 0.5 s (the rest at once while
        draining); raises Dropped when the client cuts its own connection at drop_at."""
        loop = conn.loop
        head = (f"PATCH {up.path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Offset: {up.offset}\r\nContent-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {up.size - up.offset}\r\n\r\n").encode()
        pos = up.offset
        at = loop.time()
        first = True
        while pos < up.size:
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() >= drop_at and not self.draining:
                rst = rng.random() < 0.5
                conn.close(rst=rst)
                self.stats.drops["rst" if rst else "fin"] += 1
                raise Dropped
            end = up.size if self.draining else min(up.size, pos + PIECE)
            piece = self.bodies.piece(up.k, up.j, start, pos, end)
            await asyncio.wait_for(
                loop.sock_sendall(conn.sock, head + bytes(piece) if first else piece), 120)
            first = False
            self.stats.sent[inst] += end - pos
            pos = end
            at = max(at + GAP, loop.time())  # never burst to catch up
        status, headers = await asyncio.wait_for(conn.response("PATCH"), 120)
        self.stats.requests[f"{inst} PATCH {status}"] += 1
        return status, headers

    async def one_upload(self, k: int, j: int, rng: random.Random) -> None:
        a = self.args
        size = rng.randrange(a.size_min, a.size_max + 1)
        up = Upload(k, j, size)
        start = self.bodies.start(k, j)
        inst = rng.randrange(len(self.ports))
        conn: Conn | None = None
        for attempt in range(5):
            conn = await self.connect(inst)
            status, h = await self.request(conn, inst, "POST", "/files/",
                                           {"Upload-Length": str(size), "Content-Length": "0"})
            if status == 201:
                up.path = path_of(h["location"])
                break
            conn.close()
            conn = None
            self.stats.errors[f"POST {status}"] += 1
            await asyncio.sleep(1 + attempt)
        if conn is None:
            return
        self.stats.uploads.append(up)
        self.stats.active += 1
        loop = asyncio.get_running_loop()
        flaky = k in self.flaky
        prev_inst = inst
        dropped_at: float | None = None
        try:
            while True:
                if conn is None:  # resume: HEAD + PATCH on a randomly chosen instance
                    inst = rng.randrange(len(self.ports))
                    conn = await self.connect(inst)
                    t = time.perf_counter()
                    status, h = await self.request(conn, inst, "HEAD", up.path, {})
                    if status != 200:
                        self.stats.errors[f"resume HEAD {status}"] += 1
                        conn.close()
                        conn = None
                        await asyncio.sleep(rng.uniform(0.5, 1.0))
                        continue
                    self.stats.resume_head_ms.append((time.perf_counter() - t) * 1000)
                    self.stats.resumes += 1
                    self.stats.cross_resumes += inst != prev_inst
                    up.offset = int(h["upload-offset"])
                    if up.offset >= up.size:
                        up.done = True
                        break
                up.attempts += 1
                drop_at = (loop.time() + rng.uniform(a.drop_min, a.drop_max)
                           if flaky else float("inf"))
                try:
                    status, h = await self.patch(conn, inst, up, start, drop_at, rng)
                except Dropped:
                    conn = None
                    prev_inst = inst
                    dropped_at = time.perf_counter()
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    continue
                conn.close()
                conn = None
                prev_inst = inst
                if dropped_at is not None and status == 204:
                    self.stats.resume_gap_ms.append((time.perf_counter() - dropped_at) * 1000)
                    dropped_at = None
                if status == 204 and int(h.get("upload-offset", -1)) == up.size:
                    up.offset = up.size
                    up.done = True
                    break
                self.stats.errors[f"PATCH {status} (resumed)"] += 1
                await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                conn.close()
            self.stats.active -= 1

    async def client(self, k: int, start: float) -> None:
        rng = random.Random(f"{self.args.seed}/client/{k}")
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start - loop.time()))
        j = 0
        while not self.stop_new.is_set():
            try:
                await self.one_upload(k, j, rng)
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as e:
                self.stats.errors[f"client {type(e).__name__}"] += 1
                await asyncio.sleep(1.0)
            j += 1

    async def lag_monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            self.stats.lag_ms.append(max(0.0, loop.time() - t - 0.1) * 1000)


# ---------------------------------------------------------------- probe child

def probe_child(spec: str, out: str) -> None:
    """HEAD every 100 ms to each (port, path), straight to the instance; on SIGTERM, write
    [[instance, wall time, ms, status], ...] as JSON to `out`."""
    targets = [(int(p), path) for p, path in (t.split(",", 1) for t in spec.split(";"))]
    results: list[list[Any]] = []

    async def one(i: int, port: int, path: str, stop: asyncio.Event) -> None:
        req = f"HEAD {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nTus-Resumable: 1.0.0\r\n\r\n"
        loop = asyncio.get_running_loop()
        reader = writer = None
        at = loop.time()
        while not stop.is_set():
            await asyncio.sleep(max(0.0, at - loop.time()))
            t = time.perf_counter()
            status = 0
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, port), 10)
                writer.write(req.encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status, h = parse_head(head[:-4])
                if h.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError):
                if writer is not None:
                    writer.close()
                reader = writer = None
            results.append([i, time.time(), (time.perf_counter() - t) * 1000, status])
            at = max(at + PROBE_EVERY, loop.time())

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await asyncio.gather(*(one(i, p, path, stop) for i, (p, path) in enumerate(targets)))

    run_loop(main())
    Path(out).write_text(json.dumps(results))


def run_loop(coro: Any) -> Any:
    try:
        import uvloop  # type: ignore[import-not-found]
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ---------------------------------------------------------------- sampling

class Sampler:
    """Every 0.5 s: RSS and CPU of each instance tree, the proxies and redis; Redis INFO once a
    second. Window snapshots are taken with snapshot()."""

    def __init__(self, instances: list[Instance], redis_pid: int, redis: Redis,
                 load: Load) -> None:
        self.instances = instances
        self.redis_pid = redis_pid
        self.redis = redis
        self.load = load
        self.peak = [0] * len(instances)  # bytes, tree sum, steady state + drain
        self.peak_proc = [0] * len(instances)
        self.redis_peak = 0
        self.in_window = False
        self.ops: list[int] = []
        self.active: list[int] = []
        self.listed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self, tick: int) -> None:
        now = time.monotonic()
        if now - self.listed > 2.0:
            for inst in self.instances:
                inst.pids = tree(inst.proc.pid)
            self.listed = now
        for n, inst in enumerate(self.instances):
            total = 0
            for pid in inst.pids:
                with contextlib.suppress(OSError, IndexError):
                    rss = proc_stat(pid)[0]
                    total += rss
                    if self.in_window:
                        self.peak_proc[n] = max(self.peak_proc[n], rss)
            if self.in_window:
                self.peak[n] = max(self.peak[n], total)
        with contextlib.suppress(OSError, IndexError):
            self.redis_peak = max(self.redis_peak, proc_stat(self.redis_pid)[0])
        if self.in_window and tick % 2 == 0:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.ops.append(int(self.redis.info("stats")["instantaneous_ops_per_sec"]))
            self.active.append(self.load.stats.active)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            self._sample(tick)
            tick += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self, proxies: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
        insts = [tree_usage(i.proc.pid, tree(i.proc.pid))[1] for i in self.instances]
        prox = sum(tree_usage(p.pid, [p.pid])[1] for p in proxies)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        info = self.redis.info("stats")
        return {"t": time.monotonic(), "inst_cpu": insts, "proxy_cpu": prox,
                "client_cpu": ru.ru_utime + ru.ru_stime,
                "redis_cpu": proc_stat(self.redis_pid)[1],
                "redis_cmds": int(info["total_commands_processed"]),
                "redis_cmdstats": self.redis.commandstats(),
                "sent": list(self.load.stats.sent),
                "requests": Counter(self.load.stats.requests),
                "resumes": self.load.stats.resumes,
                "completed": sum(u.done for u in self.load.stats.uploads),
                "xlen": self.redis.call("XLEN", "tus:completed"),
                "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


# ---------------------------------------------------------------- verification

def verify(uploads: list[Upload], upload_dir: Path, bodies: Bodies) -> tuple[int, list[str]]:
    ok = 0
    bad: list[str] = []
    for up in uploads:
        if not up.done:
            continue
        uid = up.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            stored = (upload_dir / "uploads" / uid).read_bytes()
        except OSError as e:
            bad.append(f"{uid}: {e}")
            continue
        want = bodies.body(up.k, up.j, up.size)
        if hashlib.sha256(stored).hexdigest() == hashlib.sha256(want).hexdigest():
            ok += 1
            continue
        # What differs: length, first differing byte, whether the stored bytes there are zeros.
        first = next((i for i, (x, y) in enumerate(zip(stored, want, strict=False)) if x != y),
                     min(len(stored), len(want)))
        zeros = not any(stored[first:first + 4096])
        bad.append(f"{uid}: sha256 differs (stored {len(stored)} of {len(want)} bytes, first "
                   f"difference at {first}{', zeros there' if zeros else ''}, "
                   f"{up.attempts} PATCHes)")
    return ok, bad


# ---------------------------------------------------------------- report

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def machine(redis_version: str, commit: str) -> dict[str, str]:
    info = host_facts()
    info["redis-server"] = redis_version
    info["tusd-py commit"] = commit
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uploads", type=int, default=3000, help="concurrent slow clients")
    ap.add_argument("--duration", type=float, default=120.0, help="steady-state seconds")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flaky", type=float, default=0.10,
                    help="fraction of clients that drop and resume every few seconds")
    ap.add_argument("--drop-min", type=float, default=2.0)
    ap.add_argument("--drop-max", type=float, default=6.0)
    ap.add_argument("--size-min", type=int, default=256 * KiB)
    ap.add_argument("--size-max", type=int, default=2 * MiB)
    ap.add_argument("--ramp", type=float, default=20.0, help="clients start over this long")
    ap.add_argument("--latency", type=float, default=0.05, help="proxy one-way latency, s")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--tpy-root", type=Path, default=None,
                    help="run tusd-py from this tree (default: a git archive of HEAD)")
    ap.add_argument("--out", type=Path, default=HERE / "SCALE.md")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--probe-child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_child:
        probe_child(*args.probe_child)
        return

    raise_nofile(4 * args.uploads + 4096)
    python = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() \
        else sys.executable
    scratch = Path(tempfile.mkdtemp(prefix="tusd-scale-"))
    print(f"# scratch {scratch}; seed {args.seed}", flush=True)
    if args.tpy_root is None:
        tpy_root = scratch / "tree"
        tpy_root.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tpy_root)], input=archive, check=True)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    else:
        tpy_root = args.tpy_root.resolve()
        commit = subprocess.run(["git", "-C", str(tpy_root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=False).stdout.strip()
    upload_dir = scratch / "uploads"
    upload_dir.mkdir()
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=False).stdout.split()[2]

    procs: list[subprocess.Popen[bytes]] = []
    instances: list[Instance] = []
    probe: subprocess.Popen[bytes] | None = None
    try:
        rport = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
             "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(redis_proc)
        redis = None
        for _ in range(200):
            try:
                redis = Redis(rport)
                if redis.call("PING") == "PONG":
                    break
            except OSError:
                time.sleep(0.025)
        assert redis is not None
        for n in range(args.instances):
            port = free_port()
            log = scratch / f"instance{n}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [python, "-m", "tusd_py", "serve", "--host", HOST, "--port", str(port),
                     "--workers", str(args.workers), "--upload-dir", str(upload_dir),
                     "--redis-url", f"redis://{HOST}:{rport}/0", "--no-dashboard",
                     "--log-level", "warning"],
                    cwd=tpy_root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            instances.append(Instance(n, port, proc, log))
        for inst in instances:
            wait_instance(inst, args.workers)
        for inst in instances:
            inst.proxy, inst.proxy_port = start_proxy(
                python, tpy_root, inst.port, args.latency, args.seed,
                scratch / f"proxy{inst.index}.log")
            procs.append(inst.proxy)
        print(f"# redis :{rport}; instances {[i.port for i in instances]} behind proxies "
              f"{[i.proxy_port for i in instances]}; tusd-py {commit} from {tpy_root}", flush=True)

        # The probes' idle uploads, and the probe child.
        spec = []
        for inst in instances:
            status, h = http(inst.port, "POST", "/files/", {"Upload-Length": "1024"})
            assert status == 201, status
            spec.append(f"{inst.port},{path_of(h['location'])}")
        probe_out = scratch / "probe.json"
        probe = subprocess.Popen([python, str(Path(__file__).resolve()), "--probe-child",
                                  ";".join(spec), str(probe_out)], start_new_session=True)
        procs.append(probe)

        bodies = Bodies(args.seed, args.size_max)
        result = run_loop(run(args, instances, redis, redis_proc.pid, bodies))
        load: Load = result["load"]
        stop_proc(probe)
        probes = json.loads(probe_out.read_text()) if probe_out.exists() else []

        # Processing backlog: give the completion stream up to 30 s to drain, then verify.
        backlog = "?"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            groups = redis.call("XINFO", "GROUPS", "tus:completed")
            g = {groups[0][i]: groups[0][i + 1] for i in range(0, len(groups[0]), 2)} \
                if isinstance(groups, list) and groups else {}
            backlog = f"pending {g.get('pending', '?')}, lag {g.get('lag', '?')}"
            if g.get("pending") == 0 and g.get("lag") == 0:
                break
            time.sleep(1)
        t = time.monotonic()
        ok, bad = verify(load.stats.uploads, upload_dir, bodies)
        print(f"# verified {ok} in {time.monotonic() - t:.1f} s; bad {len(bad)} {bad[:5]}",
              flush=True)
        result.update(probes=probes, verified=ok, bad=bad, backlog=backlog)
        text = report(args, result, instances, machine(redis_version, commit), tpy_root)
        print(text, flush=True)
        if not args.no_write:
            args.out.write_text(text)
            print(f"# wrote {args.out}", flush=True)
    finally:
        for p in reversed(procs):
            stop_proc(p)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


async def run(args: argparse.Namespace, instances: list[Instance], redis: Redis,
              redis_pid: int, bodies: Bodies) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = Load(args, [i.proxy_port for i in instances], bodies)
    sampler = Sampler(instances, redis_pid, redis, load)
    sampler.start()
    proxies = [i.proxy for i in instances if i.proxy is not None]
    # Idle baseline (probes, heartbeats, queue polls; no uploads) before any client starts.
    idle0 = sampler.snapshot(proxies)
    await asyncio.sleep(IDLE_SECONDS)
    idle1 = sampler.snapshot(proxies)
    t0 = loop.time() + 0.2
    n = args.uploads
    lag = asyncio.create_task(load.lag_monitor())
    tasks = [asyncio.create_task(load.client(k, t0 + args.ramp * k / n)) for k in range(n)]
    await asyncio.sleep(t0 + args.ramp + SETTLE - loop.time())
    lag0 = len(load.stats.lag_ms)
    start = sampler.snapshot(proxies)
    wall0 = time.time()
    sampler.in_window = True
    print(f"# steady state from t={args.ramp + SETTLE:.0f} s: {load.stats.active} active uploads,"
          f" load {start['loadavg']}", flush=True)
    await asyncio.sleep(args.duration)
    end = sampler.snapshot(proxies)
    wall1 = time.time()
    sampler.in_window = False
    lag_window = load.stats.lag_ms[lag0:]
    print(f"# window over: {load.stats.active} active, {end['completed']} completed; draining",
          flush=True)
    load.stop_new.set()
    load.draining = True
    t_drain = loop.time()
    _, pending = await asyncio.wait(tasks, timeout=args.drain_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    drain_s = loop.time() - t_drain
    lag.cancel()
    sampler.stop()
    print(f"# drained in {drain_s:.0f} s ({len(pending)} clients cut at the drain timeout)",
          flush=True)
    return {"load": load, "start": start, "end": end, "wall": (wall0, wall1),
            "sampler": sampler, "drain_s": drain_s, "cut": len(pending),
            "lag": lag_window, "idle": (idle0, idle1)}


def report(args: argparse.Namespace, r: dict[str, Any], instances: list[Instance],
           mach: dict[str, str], tpy_root: Path) -> str:
    load: Load = r["load"]
    st = load.stats
    s0, s1 = r["start"], r["end"]
    smp: Sampler = r["sampler"]
    secs = s1["t"] - s0["t"]
    w0, w1 = r["wall"]
    active = statistics.mean(smp.active) if smp.active else float("nan")
    lines = []
    p = lines.append
    p("# Scale run: 3 instances x 2 workers + Redis, slow mobile uploads, resume storms\n")
    p(f"Generated by `benchmarks/scale.py` ({' '.join(sys.argv[1:]) or 'defaults'}) on "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Seed {args.seed}.\n")
    p("Machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()) +
      f". Load average at the window's start / end: {s0['loadavg']} / {s1['loadavg']} "
      "(other work shares the 2 cores).\n")
    p(f"Setup: {args.instances} `tusd-py serve --workers {args.workers} --redis-url` instances "
      "(fsync durability, processing on, defaults otherwise) sharing one redis-server "
      "(`--save '' --appendonly no`) and one upload dir; each behind its own "
      f"`tests/faultproxy.py` (latency {args.latency * 1000:.0f} ms one way, no faults, no "
      f"throttle). {args.uploads:,} clients each upload one file after another "
      f"({args.size_min // KiB} KiB-{args.size_max // KiB} KiB, one PATCH, 8 KiB every 0.5 s = "
      f"16 KiB/s, never bursting to catch up); {len(load.flaky):,} of them "
      f"({args.flaky:.0%}) drop their connection every {args.drop_min:g}-{args.drop_max:g} s "
      "(RST or FIN, half each), wait 0.2-1 s and resume with HEAD + PATCH on a random instance. "
      f"Clients start over {args.ramp:g} s; the window below is {secs:.0f} s of steady state "
      f"from {args.ramp + SETTLE:g} s; afterwards the uploads in flight send their rest at once "
      "(drain) and every completed upload is verified.\n")

    p("## Per instance (steady-state window)\n")
    i0, i1 = r["idle"]
    isecs = i1["t"] - i0["t"]
    p("| instance | CPU-s | cores (idle before: probes only) | processes | "
      "peak RSS, tree sum MiB | largest process MiB | "
      "HEAD probe p50 / p99 / max ms | probes (non-200) | requests in window | "
      "client body MiB/s in |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    tot_cpu = 0.0
    for n, _inst in enumerate(instances):
        cpu = s1["inst_cpu"][n] - s0["inst_cpu"][n]
        tot_cpu += cpu
        lat = [x[2] for x in r["probes"] if x[0] == n and w0 <= x[1] <= w1]
        non200 = sum(1 for x in r["probes"] if x[0] == n and w0 <= x[1] <= w1 and x[3] != 200)
        req = sum(v - s0["requests"].get(k, 0) for k, v in s1["requests"].items()
                  if k.startswith(f"{n} "))
        mibps = (s1["sent"][n] - s0["sent"][n]) / secs / MiB
        idle = (i1["inst_cpu"][n] - i0["inst_cpu"][n]) / isecs
        p(f"| {n} | {cpu:.1f} | {cpu / secs:.2f} ({idle:.3f}) | {len(_inst.pids)} | "
          f"{smp.peak[n] / MiB:.0f} | "
          f"{smp.peak_proc[n] / MiB:.0f} | {pct(lat, .5):.0f} / {pct(lat, .99):.0f} / "
          f"{max(lat, default=float('nan')):.0f} | {len(lat)} ({non200}) | {req:,} | "
          f"{mibps:.2f} |")
    sent = (sum(s1["sent"]) - sum(s0["sent"])) / secs
    p(f"| **all** | **{tot_cpu:.1f}** | **{tot_cpu / secs:.2f}** | | "
      f"{sum(smp.peak) / MiB:.0f} | | | | | **{sent / MiB:.2f}** |\n")

    rcpu = s1["redis_cpu"] - s0["redis_cpu"]
    cmds = s1["redis_cmds"] - s0["redis_cmds"]
    ops = cmds / secs
    per_cmd = Counter({k: v - s0["redis_cmdstats"].get(k, 0)
                       for k, v in s1["redis_cmdstats"].items()})
    top = ", ".join(f"{k} {v / secs:,.0f}/s" for k, v in per_cmd.most_common(12) if v > 0)
    completions = s1["completed"] - s0["completed"]
    resumes = s1["resumes"] - s0["resumes"]
    p("## Redis and per active upload (steady-state window)\n")
    p("| figure | value |")
    p("|---|---|")
    p(f"| active uploads (mean of 1 s samples; created, not yet complete) | {active:,.0f} |")
    p(f"| client body bytes in, all instances | {sent / MiB:.2f} MiB/s "
      f"({sent / max(active, 1) / KiB:.1f} KiB/s per active upload; nominal 16) |")
    p(f"| completions / resumes in the window | {completions:,} ({completions / secs:.1f}/s) / "
      f"{resumes:,} ({resumes / secs:.1f}/s) |")
    p(f"| Redis commands/s (total_commands_processed delta) | {ops:,.0f} |")
    p(f"| Redis instantaneous_ops_per_sec, mean / max of 1 s samples | "
      f"{statistics.mean(smp.ops) if smp.ops else float('nan'):,.0f} / "
      f"{max(smp.ops, default=0):,} |")
    p(f"| Redis commands/s per active upload | {ops / max(active, 1):.2f} |")
    ridle = (i1["redis_cmds"] - i0["redis_cmds"]) / isecs
    p(f"| Redis commands/s idle (before the clients: heartbeats, queue polls, probes) | "
      f"{ridle:,.0f} |")
    p(f"| Redis CPU-s (window) / cores | {rcpu:.1f} / {rcpu / secs:.3f} |")
    p(f"| Redis CPU per active upload | {rcpu / secs / max(active, 1) * 1e6:.1f} µs/s |")
    p(f"| Redis peak RSS | {smp.redis_peak / MiB:.0f} MiB |")
    p(f"| commands by type (commandstats, incl. those run inside scripts) | {top} |")
    p(f"| tusd-py CPU per active upload | {tot_cpu / secs / max(active, 1) * 1e3:.2f} ms/s "
      f"({tot_cpu / max(sent * secs / MiB, 1e-9):.2f} CPU-s per MiB received) |")
    pcpu = s1["proxy_cpu"] - s0["proxy_cpu"]
    ccpu = s1["client_cpu"] - s0["client_cpu"]
    p(f"| fault proxies / load client CPU-s (same 2 cores) | {pcpu:.1f} / {ccpu:.1f} |")
    lag = r["lag"]
    p(f"| load client's event-loop lag p50 / p99 / max | {pct(lag, .5):.0f} / "
      f"{pct(lag, .99):.0f} / {max(lag, default=float('nan')):.0f} ms |")
    p(f"| completion stream length at the window's end (XLEN) | {s1['xlen']:,} |\n")

    created = len(st.uploads)
    done = sum(u.done for u in st.uploads)
    p("## Whole run (ramp, window, drain)\n")
    p("| figure | value |")
    p("|---|---|")
    p(f"| uploads created / completed (204 at full length) / verified (sha256 of the stored "
      f"file = sha256 of what the client sent) | {created:,} / {done:,} / **{r['verified']:,}**"
      f" |")
    p(f"| sha256 mismatches or missing files | {len(r['bad'])}"
      f"{' (' + '; '.join(r['bad'][:3]) + ')' if r['bad'] else ''} |")
    p(f"| drain after the window | {r['drain_s']:.0f} s, {r['cut']} clients cut at "
      f"--drain-timeout |")
    p(f"| drops (client-side RST / FIN) | {st.drops['rst']:,} / {st.drops['fin']:,} |")
    p(f"| resumes (HEAD 200 then PATCH) / on another instance | {st.resumes:,} / "
      f"{st.cross_resumes:,} |")
    p(f"| resume HEAD through the proxy p50 / p99 / max | {pct(st.resume_head_ms, .5):.0f} / "
      f"{pct(st.resume_head_ms, .99):.0f} / {max(st.resume_head_ms, default=float('nan')):.0f}"
      " ms |")
    p(f"| drop -> resumed PATCH answered 204, p50 / p99 | {pct(st.resume_gap_ms, .5) / 1000:.1f}"
      f" / {pct(st.resume_gap_ms, .99) / 1000:.1f} s (includes the 0.2-1 s reconnect pause and"
      " the rest of the body at 16 KiB/s) |")
    statuses = Counter()
    for k, v in st.requests.items():
        _, method, status = k.split()
        statuses[f"{method} {status}"] += v
    answered = ", ".join(f"{k} x{v:,}" for k, v in sorted(statuses.items()))
    p(f"| responses, all instances | {answered} |")
    errors = ", ".join(f"{k} x{v}" for k, v in st.errors.most_common()) or "none"
    p(f"| client-side errors | {errors} |")
    p(f"| completion stream after the drain (+ up to 30 s) | {r['backlog']} |\n")
    p(f"tusd-py ran from `{tpy_root.name if tpy_root.name == 'tree' else tpy_root}` "
      "(a `git archive` of the commit above unless --tpy-root). CPU-s = utime+stime of each "
      "instance's process tree (supervisor, 2 workers, anything they spawned) from /proc during "
      "the window; RSS = sum over that tree, sampled every 0.5 s; HEAD probes go straight to "
      "each instance (no proxy latency) every 100 ms on a keep-alive connection, for an idle "
      "upload. Client body MiB/s counts bytes the clients handed to the proxy.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
