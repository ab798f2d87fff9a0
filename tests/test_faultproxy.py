"""In-process tests of tests/faultproxy.py: each mode against a recording TCP server on
loopback, plus the plan's reproducibility and bounds, and the command line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import (
    FaultProxy,
    Faults,
    KiB,
    MiB,
    ProxyThread,
    parse_size,
    plan_for,
    require_loopback,
)

SEED = 1234


@dataclass
class Peer:
    """What the server behind the proxy saw on one connection."""

    data: bytearray = field(default_factory=bytearray)
    times: list[tuple[float, int]] = field(default_factory=list)  # (t, total) per read
    end: str = ""  # "eof" or "reset"
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Recorder:
    """A TCP server that records what arrives; `reply` bytes are sent on connect."""

    def __init__(self, reply: bytes = b"", echo: bool = False) -> None:
        self.reply = reply
        self.echo = echo
        self.peers: list[Peer] = []
        self.changed = asyncio.Condition()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer()
        self.peers.append(peer)
        await self._notify()
        if self.reply:
            writer.write(self.reply)
        try:
            while True:
                block = await reader.read(256 * KiB)
                if not block:
                    peer.end = "eof"
                    break
                peer.data += block
                peer.times.append((time.monotonic(), len(peer.data)))
                await self._notify()
                if self.echo:
                    writer.write(block)
                    await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            peer.end = "reset"
        finally:
            peer.ended.set()
            writer.close()
            await self._notify()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, cond: Callable[[], bool]) -> None:
        """Wait for `cond()` to hold; it is checked whenever something arrives."""
        async with self.changed:
            await self.changed.wait_for(cond)

    async def close(self) -> None:
        if self._server:
            self._server.close()


async def with_proxy(faults: Faults, body: Callable[[FaultProxy, Recorder],
                                                      Awaitable[None]],
                     recorder: Recorder | None = None, seed: int = SEED) -> FaultProxy:
    rec = recorder or Recorder()
    await rec.start()
    proxy = FaultProxy(("127.0.0.1", rec.port), faults, seed=seed)
    await proxy.start()
    try:
        await asyncio.wait_for(body(proxy, rec), 30)
    finally:
        await proxy.stop()
        await rec.close()
    return proxy


async def send_all(port: int, total: int, piece: int = 64 * KiB) -> tuple[int, str]:
    """Send `total` bytes (a counter pattern), then read until the end; returns
    (bytes the client's socket accepted, how the connection ended for the client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    how = "eof"
    try:
        while sent < total:
            n = min(piece, total - sent)
            writer.write(pattern(sent, n))
            await writer.drain()
            sent += n
        writer.write_eof()
        while await reader.read(64 * KiB):
            pass
    except (ConnectionResetError, BrokenPipeError):
        how = "reset"
    finally:
        writer.close()
    return sent, how


def pattern(start: int, n: int) -> bytes:
    """Bytes whose value depends on their position, so a shifted or lost byte shows."""
    return bytes((start + i) * 7 % 251 for i in range(n))


def assert_prefix(data: bytes) -> None:
    assert data == pattern(0, len(data)), "relayed bytes differ from what was sent"


# ------------------------------------------------------------------------------ plain relay


def test_plain_relay_is_exact_both_ways_and_passes_fin() -> None:
    async def body(proxy: FaultProxy, rec: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = pattern(0, 3 * MiB + 17)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        back = bytearray()
        while block := await reader.read(MiB):
            back += block
        writer.close()
        await rec.peers[0].ended.wait()
        assert bytes(rec.peers[0].data) == payload
        assert bytes(back) == payload  # the echo, through the proxy
        assert rec.peers[0].end == "eof"

    proxy = asyncio.run(with_proxy(Faults(), body, Recorder(echo=True)))
    assert proxy.stats()["faults"] == 0
    assert proxy.stats()["bytes_up"] == 3 * MiB + 17


# ------------------------------------------------------------------------------- the faults


@pytest.mark.parametrize("kind", ["rst", "fin"])
def test_cut_at_the_planned_byte(kind: str) -> None:
    faults = Faults(**{kind: 1.0}, every=MiB, min_bytes=100 * KiB)
    at = plan_for(SEED, 0, faults).at
    assert at >= 100 * KiB

    async def body(proxy: FaultProxy, rec: Recorder) -> None:
        sent, how = await send_all(proxy.port, at + 8 * MiB)
        await rec.peers[0].ended.wait()
        peer = rec.peers[0]
        assert_prefix(bytes(peer.data))
        if kind == "fin":
            assert len(peer.data) == at, (len(peer.data), at)
            assert peer.end == "eof"
        else:
            # The RST discards what the kernel had not delivered yet: at most `at` bytes.
            assert 0 < len(peer.data) <= at, (len(peer.data), at)
            assert peer.end == "reset"
            assert how == "reset"
        assert sent < at + 8 * MiB or how == "reset", "the client never noticed the cut"

    proxy = asyncio.run(with_proxy(faults, body))
    stats = proxy.stats()
    assert stats["by_kind"][kind] == 1
    assert stats["records"][0]["at"] == at and stats["records"][0]["conn"] == 0


def test_stall_holds_both_ways_then_carries_on() -> None:
    faults = Faults(stall=1.0, every=256 * KiB, min_bytes=64 * KiB, stall_seconds=1.5)
    at = plan_for(SEED, 0, faults).at
    total = at + 2 * MiB

    async def body(proxy: FaultProxy, rec: Recorder) -> None:
        t0 = time.monotonic()
        sent, how = await send_all(proxy.port, total)
        await rec.peers[0].ended.wait()
        peer = rec.peers[0]
        assert (sent, how) == (total, "eof")
        assert bytes(peer.data) == pattern(0, total)  # nothing lost, only late
        assert peer.end == "eof"
        # The biggest gap between two reads on the server is the stall, at byte `at`.
        gaps = [(b[0] - a[0], a[1]) for a, b in zip(peer.times, peer.times[1:], strict=False)]
        gap, before = max(gaps)
        assert gap >= 1.4, gaps
        assert before == at, (before, at)
        assert time.monotonic() - t0 >= 1.5

    asyncio.run(with_proxy(faults, body))


def test_half_open_drops_everything_then_resets_both_sides() -> None:
    faults = Faults(half_open=1.0, every=256 * KiB, min_bytes=64 * KiB, half_open_seconds=1.0)
    at = plan_for(SEED, 0, faults).at

    async def body(proxy: FaultProxy, rec: Recorder) -> None:
        t0 = time.monotonic()
        # The client can send all it wants: the proxy reads and drops it.
        sent, how = await send_all(proxy.port, at + 4 * MiB)
        elapsed = time.monotonic() - t0
        await rec.peers[0].ended.wait()
        peer = rec.peers[0]
        assert sent == at + 4 * MiB
        assert len(peer.data) == at  # not a byte after the fault
        assert_prefix(bytes(peer.data))
        assert how == "reset" and peer.end == "reset"
        assert elapsed >= 0.9, elapsed  # silence first, the RST only at the bound

    asyncio.run(with_proxy(faults, body))


def test_throttle_and_latency() -> None:
    rate = 2 * MiB

    async def throttled(proxy: FaultProxy, rec: Recorder) -> None:
        t0 = time.monotonic()
        sent, how = await send_all(proxy.port, MiB)
        await rec.peers[0].ended.wait()
        elapsed = time.monotonic() - t0
        assert (sent, how, len(rec.peers[0].data)) == (MiB, "eof", MiB)
        assert elapsed >= 0.45, f"1 MiB at 2 MiB/s took {elapsed:.2f}s"

    asyncio.run(with_proxy(Faults(rate=rate), throttled))

    async def delayed(proxy: FaultProxy, rec: Recorder) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        rtts = []
        for i in range(3):
            t0 = time.monotonic()
            writer.write(b"ping%d" % i)
            await writer.drain()
            assert await reader.readexactly(5) == b"ping%d" % i
            rtts.append(time.monotonic() - t0)
        writer.close()
        assert min(rtts) >= 0.19, rtts  # 0.1 s each way

    asyncio.run(with_proxy(Faults(latency=0.1), delayed, Recorder(echo=True)))

    async def bulk(proxy: FaultProxy, rec: Recorder) -> None:
        # Latency does not cap the throughput: 8 MiB do not take 128 x 0.1 s.
        t0 = time.monotonic()
        sent, how = await send_all(proxy.port, 8 * MiB)
        await rec.peers[0].ended.wait()
        assert (sent, how, len(rec.peers[0].data)) == (8 * MiB, "eof", 8 * MiB)
        assert time.monotonic() - t0 < 5

    asyncio.run(with_proxy(Faults(latency=0.1), bulk))


# --------------------------------------------------------------- plans, bounds, loopback


def test_plans_are_reproducible_and_cut_every_few_mib() -> None:
    faults = Faults(rst=1, fin=1, stall=1, half_open=1, every=4 * MiB)
    a = [plan_for(7, n, faults) for n in range(400)]
    assert a == [plan_for(7, n, faults) for n in range(400)]
    assert a != [plan_for(8, n, faults) for n in range(400)]
    mean = sum(p.at for p in a) / len(a)
    assert 3 * MiB < mean < 5.5 * MiB, mean
    kinds = {p.kind for p in a}
    assert kinds == {"rst", "fin", "stall", "half_open"}
    assert {plan_for(7, n, Faults()).kind for n in range(10)} == {None}


def test_fault_count_and_window_are_bounded() -> None:
    async def five_connections(proxy: FaultProxy, rec: Recorder) -> None:
        for _ in range(5):
            await send_all(proxy.port, 2 * MiB)
        await rec.until(lambda: len(rec.peers) == 5 and all(p.ended.is_set() for p in rec.peers))

    limited = Faults(fin=1, every=64 * KiB, min_bytes=1, max_faults=2)
    proxy = asyncio.run(with_proxy(limited, five_connections))
    assert proxy.stats()["faults"] == 2
    assert proxy.stats()["connections"] == 5
    closed = Faults(fin=1, every=64 * KiB, min_bytes=1, window=0.0)
    proxy = asyncio.run(with_proxy(closed, five_connections))
    assert proxy.stats()["faults"] == 0


def test_loopback_only() -> None:
    assert require_loopback("127.0.0.1") == "127.0.0.1"
    assert require_loopback("::1") == "::1"
    assert require_loopback("localhost") == "127.0.0.1"
    for host in ("10.0.0.1", "0.0.0.0", "example.com", "192.168.1.1"):
        with pytest.raises(ValueError, match="loopback"):
            require_loopback(host)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("10.1.2.3", 80))
    assert parse_size("4MiB") == 4 * MiB and parse_size("512k") == 512 * KiB
    assert parse_size("2MB") == 2_000_000 and parse_size("100") == 100


def test_freeze_holds_bytes_and_cut_all_drops_them() -> None:
    """What the replication-lag test relies on: frozen bytes never reach the other side."""
    async def body(proxy: FaultProxy, rec: Recorder) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"before")
        await writer.drain()
        await rec.until(lambda: bool(rec.peers) and bytes(rec.peers[0].data) == b"before")
        proxy.freeze()
        writer.write(b"held")
        await writer.drain()
        await asyncio.sleep(0.3)  # proving a negative: nothing arrives in this time
        assert bytes(rec.peers[0].data) == b"before"
        assert proxy.cut_all() == 1
        await rec.peers[0].ended.wait()
        assert bytes(rec.peers[0].data) == b"before" and rec.peers[0].end == "reset"
        writer.close()

    asyncio.run(with_proxy(Faults(), body))


def test_proxy_thread_for_synchronous_tests() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with ProxyThread(listener.getsockname()[1], Faults(fin=1, every=1, min_bytes=10),
                         seed=5) as proxy:
            assert proxy.seed == 5
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
                server_side, _ = listener.accept()
                with server_side:
                    server_side.settimeout(5)
                    c.sendall(b"x" * 100)
                    got = b""
                    while block := server_side.recv(100):
                        got += block
                    assert len(got) == plan_for(5, 0, proxy.proxy.faults).at
            stats: dict[str, Any] = proxy.stats()
            assert stats["by_kind"]["fin"] == 1
        assert any("faultproxy.fault conn=0 kind=fin" in line for line in proxy.lines)


def test_command_line(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "tests.faultproxy", "--target", "127.0.0.1:9",
         "--rst", "1", "--every", "2MiB", "--seed", "42", "--duration", "0.5"],
        capture_output=True, text=True, timeout=30, cwd=root, check=False)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("faultproxy.listening port=") and "seed=42" in first, first
    assert "faultproxy.summary" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "tests.faultproxy", "--target", "10.0.0.1:80"],
        capture_output=True, text=True, timeout=30, cwd=root, check=False)
    assert refused.returncode == 2 and "loopback" in refused.stderr, refused.stderr
