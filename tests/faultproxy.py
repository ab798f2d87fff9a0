"""A fault-injecting TCP proxy for tests and benchmarks (loopback only).

Every connection accepted on the listening port is relayed to one target port. Per connection,
the proxy draws a plan from `random.Random(f"{seed}/{n}")` (n = the connection's number, from 0),
so the n-th connection of a run always gets the same plan: after a random number of bytes sent
by the client (`min_bytes` + an exponential draw with mean `every`) one fault, of a kind drawn
with the given weights:

  rst        both sockets are closed with SO_LINGER 0: each peer gets an RST
  fin        both sockets are closed normally: each peer reads EOF (FIN)
  stall      nothing moves, either way, for `stall_seconds` (set it above the server's
             --network-timeout); then the connection carries on (no second fault)
  half_open  everything either side sends is read and dropped silently; after
             `half_open_seconds` both sides get an RST (so nothing hangs forever)

`rate` (bytes/s, each direction of each connection) throttles and `latency` (seconds) delays
every chunk one way; both apply to every connection, faulty or not. Faults are bounded in count
(`max_faults` for the whole run) and in time (none starts later than `window` seconds after
the proxy started). Both addresses must be loopback.

As a module (tests):

    with ProxyThread(target_port, Faults(rst=1, fin=1, every=4 * MiB), seed=7) as proxy:
        ... connect to proxy.port ...
        proxy.stats()          # connections, bytes, faults by kind, one record per fault

As a program (benchmarks, by hand):

    python -m tests.faultproxy --target 127.0.0.1:1080 --rst 1 --fin 1 --stall 1 \\
        --half-open 1 --every 4MiB --rate 1MiB --latency 0.05 --seed 7 --duration 600

It prints `faultproxy.listening port=... seed=...` first, one `faultproxy.fault` line per
fault, and `faultproxy.summary` when it stops (after --duration seconds, or on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

KiB = 1024
MiB = 1024 * KiB
KINDS = ("rst", "fin", "stall", "half_open")
CHUNK = 64 * KiB


def require_loopback(host: str) -> str:
    """The numeric loopback address for `host`; anything else is refused."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"faultproxy: {host!r} is not a loopback address") from None
    if not address.is_loopback:
        raise ValueError(f"faultproxy: {host} is not a loopback address (loopback only)")
    return host


@dataclass(frozen=True)
class Faults:
    """What the proxy does to connections. Weights of 0 everywhere: a plain (throttled,
    delayed) relay."""

    rst: float = 0.0
    fin: float = 0.0
    stall: float = 0.0
    half_open: float = 0.0
    every: int = 4 * MiB        # mean client->server bytes before a connection's fault
    min_bytes: int = 64 * KiB   # no fault before this many client bytes (spares GETs, HEADs)
    stall_seconds: float = 5.0
    half_open_seconds: float = 8.0
    rate: float = 0.0           # bytes/s per direction per connection; 0: unlimited
    latency: float = 0.0        # one-way seconds added to every chunk
    max_faults: int = 100
    window: float = 600.0       # seconds after start during which faults may start

    def weights(self) -> list[float]:
        return [self.rst, self.fin, self.stall, self.half_open]


@dataclass(frozen=True)
class Plan:
    """One connection's fate: `kind` after the client sent `at` bytes (None: no fault)."""

    kind: str | None
    at: int


def plan_for(seed: int, n: int, faults: Faults) -> Plan:
    """The plan of connection number `n`: a pure function of (seed, n, faults)."""
    rng = random.Random(f"{seed}/{n}")
    weights = faults.weights()
    if sum(weights) <= 0:
        return Plan(None, 0)
    at = faults.min_bytes + int(rng.expovariate(1.0 / max(1, faults.every)))
    kind = rng.choices(KINDS, weights=weights)[0]
    return Plan(kind, at)


@dataclass
class FaultRecord:
    conn: int
    kind: str
    at: int       # client->server bytes forwarded before the fault
    t: float      # seconds since the proxy started


@dataclass(eq=False)
class _Conn:
    n: int
    plan: Plan
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    up: int = 0                  # client->server bytes forwarded
    down: int = 0
    fault: str | None = None     # the fault in progress / done
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """The asyncio proxy. `await start()`, then `port`; `await stop()`."""

    def __init__(self, target: tuple[str, int], faults: Faults | None = None,
                 seed: int | None = None, listen: tuple[str, int] = ("127.0.0.1", 0),
                 log: Callable[[str], None] | None = None) -> None:
        self.target = (require_loopback(target[0]), int(target[1]))
        self.listen = (require_loopback(listen[0]), int(listen[1]))
        self.faults = faults or Faults()
        self.seed = int.from_bytes(os.urandom(4), "big") if seed is None else int(seed)
        self.log = log or (lambda line: None)
        self.port = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.records: list[FaultRecord] = []
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._t0 = time.monotonic()
        self._server = await asyncio.start_server(self._accept, *self.listen,
                                                  limit=4 * CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]
        self.log(f"faultproxy.listening port={self.port} target={self.target[0]}:"
                 f"{self.target[1]} seed={self.seed} faults={json.dumps(asdict(self.faults))}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._abort(conn)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.log(f"faultproxy.summary {json.dumps(self.stats(records=False))}")

    def stats(self, records: bool = True) -> dict[str, Any]:
        kinds = Counter(r.kind for r in self.records)
        out: dict[str, Any] = {
            "seed": self.seed, "connections": self.connections, "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down, "faults": len(self.records),
            "by_kind": {k: kinds.get(k, 0) for k in KINDS},
        }
        if records:
            out["records"] = [asdict(r) for r in self.records]
        return out

    # ------------------------------------------------------------------ controls

    def freeze(self) -> None:
        """Stop forwarding on every connection (what was read is held, nothing is written)."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut_all(self) -> int:
        """RST every open connection (bytes held by a freeze are never delivered), then let
        new connections flow again; returns how many were cut."""
        conns = list(self._conns)
        for conn in conns:
            self._abort(conn)
        self._flowing.set()
        return len(conns)

    # ------------------------------------------------------------------ relaying

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target, limit=4 * CHUNK)
        except OSError:
            _rst(writer)
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(n, plan_for(self.seed, n, self.faults), writer, up_writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            pumps = [asyncio.create_task(self._pump(conn, reader, up_writer, upstream=True)),
                     asyncio.create_task(self._pump(conn, up_reader, writer, upstream=False))]
            try:
                await asyncio.gather(*pumps)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            self._abort(conn)
        except asyncio.CancelledError:
            # stop(): this handler is the connection's top level, nothing awaits it.
            self._abort(conn)
        finally:
            self._conns.discard(conn)
            self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, upstream: bool) -> None:
        """One direction: a reading stage (decides the fault) and a writing stage (latency,
        throttle, the fault itself) joined by a bounded queue, so latency does not cap the
        throughput and a fault happens exactly after the bytes before it were written."""
        queue: asyncio.Queue[tuple[float, bytes | str | None]] = asyncio.Queue(32)
        writing = asyncio.create_task(self._write_stage(conn, queue, writer, upstream))
        try:
            await self._read_stage(conn, reader, queue, upstream)
            await writing
        finally:
            writing.cancel()

    async def _read_stage(self, conn: _Conn, reader: asyncio.StreamReader,
                          queue: asyncio.Queue[tuple[float, bytes | str | None]],
                          upstream: bool) -> None:
        faults = self.faults
        chunk = CHUNK if faults.rate <= 0 else max(1024, min(CHUNK, int(faults.rate / 20)))
        read = 0
        while True:
            try:
                data = await reader.read(chunk)
            except OSError:
                self._abort(conn)
                data = b""
            now = time.monotonic()
            if not data:
                await queue.put((now, None))  # EOF (or the connection is gone)
                return
            if conn.fault in ("half_open", "rst", "fin", "closed"):
                continue  # dropped silently (half-open) or nowhere to go
            if upstream and conn.fault is None and conn.plan.kind is not None \
                    and read + len(data) >= conn.plan.at and self._may_fault():
                head = data[:conn.plan.at - read]
                if head:
                    await queue.put((now, head))
                kind = conn.plan.kind
                conn.fault = f"pending-{kind}"
                await queue.put((now, kind))
                data = data[len(head):]
                read += len(head)
                if kind == "stall":
                    await conn.resume.wait()
                    if data:
                        await queue.put((now, data))
                        read += len(data)
                continue
            if conn.fault is not None and conn.fault.startswith("pending-stall"):
                await conn.resume.wait()
            read += len(data)
            await queue.put((now, data))

    async def _write_stage(self, conn: _Conn,
                           queue: asyncio.Queue[tuple[float, bytes | str | None]],
                           writer: asyncio.StreamWriter, upstream: bool) -> None:
        faults = self.faults
        sent = 0
        t_start: float | None = None
        while True:
            read_at, item = await queue.get()
            if conn.fault in ("stall",) and not conn.resume.is_set():
                await conn.resume.wait()
            if item is None:
                if conn.fault is None or conn.fault == "stall":
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                return
            if isinstance(item, str):
                await self._fault(conn, item, writer)
                continue
            if conn.fault in ("half_open", "rst", "fin", "closed"):
                continue
            if not self._flowing.is_set():
                await self._flowing.wait()
            if faults.latency > 0:
                delay = read_at + faults.latency - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if faults.rate > 0:
                if t_start is None:
                    t_start = time.monotonic()
                sent += len(item)
                due = t_start + sent / faults.rate - time.monotonic()
                if due > 0:
                    await asyncio.sleep(due)
            if conn.fault in ("half_open", "rst", "fin", "closed"):
                continue
            try:
                writer.write(item)
                await writer.drain()
            except (OSError, RuntimeError):
                self._abort(conn)  # a peer went away: drop the rest until the reader's EOF
                continue
            if upstream:
                conn.up += len(item)
                self.bytes_up += len(item)
            else:
                conn.down += len(item)
                self.bytes_down += len(item)

    def _may_fault(self) -> bool:
        return (len(self.records) < self.faults.max_faults
                and time.monotonic() - self._t0 <= self.faults.window)

    async def _fault(self, conn: _Conn, kind: str, writer: asyncio.StreamWriter) -> None:
        """Runs in the client->server writing stage, after every byte before it was written."""
        if kind in ("rst", "fin"):
            # Hand every byte before the fault to the kernel first.
            with contextlib.suppress(OSError, RuntimeError):
                writer.transport.set_write_buffer_limits(0)
                await writer.drain()
        conn.fault = kind
        record = FaultRecord(conn.n, kind, conn.up, round(time.monotonic() - self._t0, 3))
        self.records.append(record)
        self.log(f"faultproxy.fault conn={conn.n} kind={kind} at={conn.up} t={record.t}")
        if kind == "rst":
            self._abort(conn)
            conn.fault = "rst"
        elif kind == "fin":
            for w in (conn.client, conn.server):
                with contextlib.suppress(OSError, RuntimeError):
                    if w.can_write_eof():
                        w.write_eof()
                w.close()
            conn.done.set()
        elif kind == "stall":
            loop = asyncio.get_running_loop()
            loop.call_later(self.faults.stall_seconds, conn.resume.set)
            await conn.resume.wait()
        elif kind == "half_open":
            loop = asyncio.get_running_loop()
            loop.call_later(self.faults.half_open_seconds, self._abort, conn)

    def _abort(self, conn: _Conn) -> None:
        if conn.fault not in ("rst", "half_open"):
            conn.fault = "closed"
        for w in (conn.client, conn.server):
            _rst(w)
        conn.resume.set()
        conn.done.set()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, unsent bytes are dropped."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError, RuntimeError):
        writer.transport.abort()


class ProxyThread:
    """A FaultProxy on its own event loop in a background thread, for synchronous tests.

    `with ProxyThread(port, faults, seed=...) as proxy:` -> proxy.port, proxy.stats(),
    proxy.freeze() / thaw() / cut_all(). `lines` holds what the proxy logged.
    """

    def __init__(self, target_port: int, faults: Faults | None = None, seed: int | None = None,
                 target_host: str = "127.0.0.1", echo: bool = False) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._echo = echo
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self.proxy = FaultProxy((target_host, target_port), faults, seed, log=self._log)
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)

    def _log(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()
        if self._echo:
            print(line, flush=True)

    def wait_faults(self, count: int, timeout: float) -> bool:
        """Block until `count` faults happened (True) or `timeout` seconds passed (False)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(line.startswith("faultproxy.fault ") for line in self.lines)
                >= count, timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.proxy.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.proxy.stop())
        self._loop.close()
        self._stopped.set()

    def start(self) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("faultproxy did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def seed(self) -> int:
        return self.proxy.seed

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stats(self, records: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self._call(lambda: self.proxy.stats(records))
        return result

    def freeze(self) -> None:
        self._call(self.proxy.freeze)

    def thaw(self) -> None:
        self._call(self.proxy.thaw)

    def cut_all(self) -> int:
        result: int = self._call(self.proxy.cut_all)
        return result


# ---------------------------------------------------------------------- command line

_SIZE = re.compile(r"(?i)^\s*([0-9.]+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$")
_UNITS = {None: 1, "b": 1, "k": KiB, "kib": KiB, "kb": 1000, "m": MiB, "mib": MiB,
          "mb": 1000 ** 2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000 ** 3}


def parse_size(text: str) -> int:
    """'4MiB', '512k', '2MB', '1000' -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _UNITS[unit])


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return require_loopback(host or "127.0.0.1"), int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faultproxy",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=_hostport, required=True, help="127.0.0.1:PORT to relay to")
    p.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0),
                   help="loopback address to listen on (default 127.0.0.1:0, a free port)")
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    for kind in KINDS:
        p.add_argument(f"--{kind.replace('_', '-')}", type=float, default=0.0,
                       dest=kind, metavar="WEIGHT", help=f"weight of the {kind} fault")
    d = Faults()
    p.add_argument("--every", type=parse_size, default=d.every,
                   help="mean client bytes before a connection's fault (default 4MiB)")
    p.add_argument("--min-bytes", type=parse_size, default=d.min_bytes)
    p.add_argument("--stall-seconds", type=float, default=d.stall_seconds)
    p.add_argument("--half-open-seconds", type=float, default=d.half_open_seconds)
    p.add_argument("--rate", type=parse_size, default=0, help="bytes/s per direction, 0: off")
    p.add_argument("--latency", type=float, default=0.0, help="one-way seconds per chunk")
    p.add_argument("--max-faults", type=int, default=d.max_faults)
    p.add_argument("--window", type=float, default=d.window,
                   help="no fault starts after this many seconds")
    p.add_argument("--duration", type=float, default=3600.0,
                   help="stop after this many seconds (default 3600)")
    args = p.parse_args(argv)
    faults = Faults(rst=args.rst, fin=args.fin, stall=args.stall, half_open=args.half_open,
                    every=args.every, min_bytes=args.min_bytes,
                    stall_seconds=args.stall_seconds, half_open_seconds=args.half_open_seconds,
                    rate=args.rate, latency=args.latency, max_faults=args.max_faults,
                    window=args.window)

    async def run() -> None:
        proxy = FaultProxy(args.target, faults, args.seed, listen=args.listen,
                           log=lambda line: print(line, flush=True))
        await proxy.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
        await proxy.stop()

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
