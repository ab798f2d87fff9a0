"""`tusd-py serve --workers 2` WITHOUT Redis: two uvicorn worker processes share the
embedded store (one upload dir) and must behave like one server.

The same concurrency and takeover scenarios as one worker and as several Redis-backed
instances: PATCHes alternating between the workers, racing PATCHes on one upload, a
HEAD on one worker behind a half-open PATCH on the other, kill -9 of the worker in the
middle of a PATCH (uvicorn starts a new one) then resume, exactly-once processing and
one expiry sweeper. Each request is steered onto a known worker: the test opens
connections until the kernel hands one to the wanted process (found through /proc).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    CHECKPOINT,
    SLACK,
    TUS,
    KiB,
    MiB,
    Pattern,
    RawConn,
    Response,
    create_upload,
    download_sha256,
    sha256_of,
    upload_id,
    wait_state,
)
from tests.e2e.support import Start, assert_processed_once, assert_stored, events, wait_event
from tests.tusd_py.helpers import LogWatch, wait_for

# --------------------------------------------------------------------------- helpers


def worker_pids(server: ServerProcess, started: int = 2, n: int = 2,
                timeout: float = 30.0) -> list[int]:
    """The uvicorn worker processes (spawned children of the master), once n serve and
    `started` workers have started in all (a replaced worker counts too)."""
    assert server.proc is not None
    proc = server.proc
    found: list[int] = []

    def ready() -> bool:
        found[:] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid and (
                    b"spawn_main" in cmd):
                found.append(int(entry.name))
        return len(found) == n and server.log().count("Application startup complete.") >= started

    # Child processes appearing have no event to block on: the shared poll.
    assert wait_for(ready, timeout=timeout), f"workers {found}:\n{server.log()}"
    return sorted(found)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _server_side_inode(server_port: int, client_port: int) -> str | None:
    want_local = f"0100007F:{server_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == want_local and cols[2] == want_remote:
                return cols[9]
    return None


def handler_of(conn: RawConn, server_port: int, pids: list[int],
               timeout: float = 5.0) -> int | None:
    """The worker process that accepted this connection."""
    client_port = conn.sock.getsockname()[1]

    def accepted_by() -> int | None:
        inode = _server_side_inode(server_port, client_port)
        if inode is not None and inode != "0":
            for pid in pids:
                if inode in _socket_inodes(pid):
                    return pid
        return None

    # Which process accepted a connection is only visible in /proc: the shared poll.
    return wait_for(accepted_by, timeout=timeout, interval=0.01)  # type: ignore[no-any-return]


def conn_on(server: ServerProcess, url: str, pid: int, pids: list[int],
            timeout: float = 15.0) -> RawConn:
    """A connection accepted by worker `pid` (others are closed unused)."""
    for _ in range(200):
        conn = RawConn(url, timeout=timeout)
        if handler_of(conn, server.port, pids) == pid:
            return conn
        conn.close()
    pytest.fail(f"no connection landed on worker {pid} in 200 tries")


def patch_on(server: ServerProcess, url: str, pid: int, pids: list[int], offset: int,
             data: Pattern, end: int) -> Response:
    conn = conn_on(server, url, pid, pids, timeout=60)
    try:
        conn.start_patch(offset, end - offset)
        conn.send_chunks(data.chunks(offset, end))
        return conn.read_response(60)
    finally:
        conn.close()


def head_on(server: ServerProcess, url: str, pid: int, pids: list[int]) -> Response:
    conn = conn_on(server, url, pid, pids)
    try:
        conn.send_head("HEAD", TUS)
        return conn.read_response(15, head=True)
    finally:
        conn.close()


@pytest.fixture
def workers2(start_server: Start) -> Callable[..., tuple[ServerProcess, list[int]]]:
    def _start(*flags: str) -> tuple[ServerProcess, list[int]]:
        server = start_server("--workers", "2", "--network-timeout", "60",
                              "--lock-timeout", "30", *flags)
        pids = worker_pids(server)
        assert "needs --redis-url" not in server.log()
        return server, pids
    return _start


# -------------------------------------------------------------------------- 1. round robin


def test_patches_alternating_between_workers(
    workers2: Callable[..., tuple[ServerProcess, list[int]]],
) -> None:
    server, pids = workers2()
    data = Pattern(16 * MiB, seed="w2-round-robin")
    url = create_upload(server, data.size, metadata="filename cm9iaW4uYmlu")
    step = 2 * MiB
    for i in range(8):
        start = i * step
        r = patch_on(server, url, pids[i % 2], pids, start, data, start + step)
        assert r.status == 204, (i, r.status, r.headers, r.body)
        assert int(r.headers["upload-offset"]) == start + step, (i, r.headers)
        # The other worker sees the commit at once (no stale cached record).
        h = head_on(server, url, pids[(i + 1) % 2], pids)
        assert h.status == 200, h
        assert int(h.headers["upload-offset"]) == start + step
    info = wait_state(server, url, {"processed"}, timeout=20)
    assert info["offset"] == info["size"] == data.size
    assert info["metadata"] == {"filename": "robin.bin"}
    assert info["file"]["sha256"] == data.sha256()
    assert_stored([server], url, data)
    assert_processed_once([server], url)  # waits for a later upload's processing first


# ------------------------------------------------------------------ 2. racing writers


@pytest.mark.parametrize("round_", range(3))
def test_racing_patches_on_two_workers_one_winner(
    workers2: Callable[..., tuple[ServerProcess, list[int]]], round_: int,
) -> None:
    import threading

    server, pids = workers2()
    size = 8 * MiB
    a, b = Pattern(size, seed=f"w2-race-a{round_}"), Pattern(size, seed=f"w2-race-b{round_}")
    url = create_upload(server, size)
    conns = {"a": conn_on(server, url, pids[0], pids), "b": conn_on(server, url, pids[1], pids)}
    data = {"a": a, "b": b}
    results: dict[str, Response | BaseException] = {}
    go = threading.Barrier(2)

    def run(name: str) -> None:
        try:
            conns[name].start_patch(0, size)
            go.wait(5)
            conns[name].send_chunks(data[name].chunks(chunk=128 * KiB))
            results[name] = conns[name].read_response(timeout=40)
        except BaseException as e:
            results[name] = e

    threads = [threading.Thread(target=run, args=(n,)) for n in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for c in conns.values():
        c.close()
    statuses: dict[str, int] = {}
    for name, res in results.items():
        assert isinstance(res, Response), f"PATCH {name}: no response: {res!r}"
        statuses[name] = res.status
        if res.status in (409, 423):
            assert "upload-offset" in res.headers, res.headers
    # A race: who wins, and whether the loser hears 409 (offset moved) or 423 (locked),
    # depends on timing - both answers are right.
    assert set(statuses.values()) <= {204, 409, 423}, statuses
    assert list(statuses.values()).count(204) <= 1, statuses

    r = httpx.head(url, headers=TUS, timeout=15)
    offset = int(r.headers["Upload-Offset"])
    print(f"round {round_}: statuses {statuses}, offset {offset}")
    winner = [n for n, s in statuses.items() if s == 204]
    if winner:
        assert offset == size
        sha, _ = download_sha256(url)
        assert sha == data[winner[0]].sha256(), "content is not the 204 writer's"
    else:
        if offset < size:
            r2 = patch_on(server, url, pids[1], pids, offset, a, size)
            assert r2.status == 204, (r2.status, r2.headers, r2.body)
        sha, _ = download_sha256(url)
        assert sha in {a.sha256(), sha256_of([*b.chunks(0, offset), *a.chunks(offset)])}, (
            f"interleaved content (statuses {statuses}, offset {offset})")
    wait_state(server, url, {"processed"}, timeout=20)
    assert_processed_once([server], url)


# ----------------------------------------------------- 3. HEAD behind a half-open PATCH


def test_head_on_other_worker_takes_over_half_open_patch(
    workers2: Callable[..., tuple[ServerProcess, list[int]]],
) -> None:
    """Without the release request crossing processes, the HEAD would wait for the
    lock (--lock-timeout 30) or the old PATCH's --network-timeout 60; the client
    timeouts below are far shorter, and the old PATCH must hear it was interrupted."""
    server, pids = workers2()
    data = Pattern(24 * MiB, seed="w2-half-open")
    url = create_upload(server, data.size)
    old = conn_on(server, url, pids[0], pids, timeout=30)
    old.start_patch(0, data.size)
    sent = old.send_chunks(data.chunks(0, 6 * MiB))
    assert sent == 6 * MiB
    old.wait_delivered()  # worker A has read what is in flight; its PATCH holds the lock

    t0 = time.monotonic()
    h = head_on(server, url, pids[1], pids)
    elapsed = time.monotonic() - t0
    assert h.status == 200, h
    offset = int(h.headers["upload-offset"])
    print(f"HEAD on worker B behind worker A's half-open PATCH answered in "
          f"{elapsed * 1000:.0f} ms (connection steering included); sent {sent}, "
          f"saved {offset}")
    assert 0 < offset <= sent and offset >= sent - SLACK, (offset, sent)

    r = old.read_response(timeout=10)  # A's PATCH was asked to let go
    assert r.status == 423, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == offset
    assert r.body.startswith(b"ERR_UPLOAD_INTERRUPTED"), r.body
    old.close()

    r2 = patch_on(server, url, pids[1], pids, offset, data, data.size)
    assert r2.status == 204, (r2.status, r2.body)
    assert_stored([server], url, data)
    wait_state(server, url, {"processed"}, timeout=20)
    assert_processed_once([server], url)


# ------------------------------------------------------------- 4. kill -9 of a worker


def test_worker_killed_mid_patch_is_replaced_and_upload_resumes(
    workers2: Callable[..., tuple[ServerProcess, list[int]]],
) -> None:
    server, pids = workers2()
    data = Pattern(64 * MiB, seed="w2-kill9")
    url = create_upload(server, data.size)
    victim, survivor = pids
    conn = conn_on(server, url, victim, pids, timeout=30)
    conn.start_patch(0, data.size)
    sent = conn.send_chunks(data.chunks(0, 40 * MiB))  # past one 32 MiB checkpoint
    assert sent == 40 * MiB
    conn.wait_delivered()  # the worker has read it all,
    wait_event([server], "upload.checkpoint", upload_id(url))  # and committed 32 MiB of it
    os.kill(victim, signal.SIGKILL)  # its flock on the upload dies with it
    conn.abort()

    r = head_on(server, url, survivor, pids)
    assert r.status == 200, r
    offset = int(r.headers["upload-offset"])
    print(f"after kill -9 of worker {victim}: sent {sent}, offset {offset} "
          f"(lost {(sent - offset) / MiB:.1f} MiB)")
    assert 0 < offset <= sent and offset >= sent - CHECKPOINT - SLACK, (offset, sent)

    # uvicorn replaces the dead worker; the upload finishes through the new one.
    new_pids = worker_pids(server, started=3)
    assert victim not in new_pids and survivor in new_pids, (pids, new_pids)
    replacement = next(p for p in new_pids if p != survivor)
    r2 = patch_on(server, url, replacement, new_pids, offset, data, data.size)
    assert r2.status == 204, (r2.status, r2.body)
    assert int(r2.headers["upload-offset"]) == data.size
    assert_stored([server], url, data)
    info = wait_state(server, url, {"processed"}, timeout=20)
    assert info["file"]["sha256"] == data.sha256()
    assert_processed_once([server], url)


# ------------------------------------------------------- 5. exactly-once completion


def test_completion_exactly_once_with_two_workers(
    workers2: Callable[..., tuple[ServerProcess, list[int]]],
) -> None:
    server, pids = workers2()
    uploads: list[tuple[str, Pattern]] = []
    for i in range(6):
        data = Pattern(64 * KiB + i * 1000, seed=f"w2-once-{i}")
        if i % 3 == 2:  # creation-with-upload: the POST itself completes the upload
            r = httpx.post(server.url, headers={
                **TUS, "Upload-Length": str(data.size),
                "Content-Type": "application/offset+octet-stream",
            }, content=data.read(), timeout=10)
            assert r.status_code == 201, (r.status_code, r.text)
            url = r.headers["Location"]
        else:
            url = create_upload(server, data.size)
            half = data.size // 2
            r1 = patch_on(server, url, pids[i % 2], pids, 0, data, half)
            assert r1.status == 204, (r1.status, r1.body)
            r2 = patch_on(server, url, pids[(i + 1) % 2], pids, half, data, data.size)
            assert r2.status == 204, (r2.status, r2.body)
        uploads.append((url, data))
    for url, data in uploads:
        info = wait_state(server, url, {"processed"}, timeout=20)
        assert info["processing"]["attempts"] == 1, info
        assert info["file"]["sha256"] == data.sha256(), info
    for url, _ in uploads:
        assert_processed_once([server], url)

    # A worker that starts again recovers pending jobs: nothing is processed twice.
    os.kill(pids[0], signal.SIGKILL)
    worker_pids(server, started=3)  # the new worker has recovered pending jobs at startup
    for url, _ in uploads:  # (each waits for a marker upload processed after them)
        assert_processed_once([server], url)


# ------------------------------------------------------------------ 6. one sweeper


def test_expiry_sweeper_elected_once(
    workers2: Callable[..., tuple[ServerProcess, list[int]]],
) -> None:
    server, pids = workers2("--expiration", "1")
    urls = []
    for i in range(4):
        data = Pattern(256 * KiB, seed=f"w2-exp-{i}")
        url = create_upload(server, data.size)
        r = patch_on(server, url, pids[i % 2], pids, 0, data, 64 * KiB)
        assert r.status == 204, r
        urls.append(url)
    marker = create_upload(server, 10)  # expires after them
    log = LogWatch(server, from_start=True)
    for url in urls:
        log.wait_event("upload.expired", upload_id(url), timeout=20)
        assert httpx.head(url, headers=TUS, timeout=10).status_code == 410
    # A later upload expired too: sweeps after theirs have run (a second sweeper, were
    # there one, would have expired them again by now).
    log.wait_event("upload.expired", upload_id(marker), timeout=20)
    for url in urls:
        expired = events([server], "upload.expired", upload_id(url))
        assert len(expired) == 1, expired
    # One worker holds the sweeper's leadership lock for its lifetime.
    leader = server.upload_dir / "locks" / ".leader-sweeper"
    holder = int(leader.read_text().split()[0])
    assert holder in pids, (holder, pids)
    fd = os.open(leader, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)

