"""Scale-out end-to-end tests: several `tusd-py serve --redis-url` instances, one Redis,
one shared upload dir, behaving like one server.

Every test asserts what a tus client can observe (status codes, headers, the HEAD offset,
the sha256 of the stored bytes downloaded with GET) plus the servers' structured logs for
exactly-once completion.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage.redis.client import RELEASE_CHANNEL
from tests.conftest import RedisServer, ServerProcess, free_port
from tests.e2e.rawhttp import (
    CHECKPOINT,
    SLACK,
    TUS,
    KiB,
    MiB,
    Pattern,
    RawConn,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    race_patches,
    sha256_of,
    upload_id,
    wait_state,
)
from tests.e2e.support import (
    Start,
    assert_processed_once,
    assert_stored,
    events,
    on,
    process_marker,
    wait_event,
)
from tests.tusd_py.helpers import LogWatch, wait_for

# --------------------------------------------------------------------------- helpers


def cluster(start_server: Start, redis_url: str, shared: Path, n: int,
            *flags: str) -> list[ServerProcess]:
    """n instances sharing one Redis and one upload dir."""
    return [start_server("--redis-url", redis_url, *flags, upload_dir=shared)
            for _ in range(n)]


def finish(url: str, data: Pattern, offset: int) -> None:
    """PATCH the rest of `data` from `offset`; expects 204 at the full size."""
    r = patch(url, offset, data.chunks(offset), data.size - offset)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert r.headers.get("tus-resumable") == "1.0.0"
    assert int(r.headers["upload-offset"]) == data.size
    assert head_offset(url) == data.size


# -------------------------------------------------------------------------- 1. round robin


def test_round_robin_chunks_across_three_instances(
    start_server: Start, redis_url: str, tmp_path: Path,
) -> None:
    servers = cluster(start_server, redis_url, tmp_path / "shared", 3)
    data = Pattern(16 * MiB, seed="round-robin")
    url = create_upload(servers[0], data.size, metadata="filename cm9iaW4uYmlu")

    t0 = time.monotonic()
    for i in range(16):
        target = on(servers[i % 3], url)
        start = i * MiB
        r = patch(target, start, data.chunks(start, start + MiB), MiB, timeout=20)
        assert r.status == 204, (i, r.status, r.headers, r.body)
        assert r.headers.get("tus-resumable") == "1.0.0"
        assert int(r.headers["upload-offset"]) == start + MiB, (i, r.headers)
        # Every instance sees the same offset right after the commit.
        assert head_offset(on(servers[(i + 1) % 3], url)) == start + MiB
    print(f"16 PATCHes round-robin over 3 instances in {time.monotonic() - t0:.2f}s")

    info = wait_state(servers[2], url, {"processed"}, timeout=15)
    assert info["offset"] == info["size"] == data.size, info
    assert info["metadata"] == {"filename": "robin.bin"}, info
    for s in servers:  # every instance reads the same record
        assert wait_state(s, url, {"processed"}, timeout=5)["offset"] == data.size
    assert_stored(servers, url, data)
    assert_processed_once(servers, url)  # waits for a later upload's processing first


# ------------------------------------------------------------- 2. cut on A, resume on B


@pytest.mark.parametrize("how", ["half-open", "close"])
def test_cut_patch_on_a_resumes_on_b(
    start_server: Start, redis_url: str, tmp_path: Path, how: str,
) -> None:
    a, b = cluster(start_server, redis_url, tmp_path / "shared", 2, "--network-timeout", "30")
    data = Pattern(24 * MiB, seed=f"cut-{how}")
    url = create_upload(a, data.size)

    old = RawConn(on(a, url))
    old.start_patch(0, data.size)
    sent = old.send_chunks(data.chunks(0, 6 * MiB))
    assert sent == 6 * MiB
    old.wait_delivered()  # A has read all that is in flight (far below --network-timeout 30)
    if how == "close":
        old.close()  # FIN after the kernel delivered everything

    t0 = time.monotonic()
    offset = head_offset(on(b, url), timeout=10)
    takeover = time.monotonic() - t0
    print(f"[{how}] takeover latency: HEAD on B answered in {takeover * 1000:.0f} ms; "
          f"sent {sent}, A saved {offset} (lost {sent - offset})")
    assert takeover < 2.0, f"HEAD on B took {takeover:.2f}s behind A's {how} PATCH"
    assert 0 < offset <= sent, (offset, sent)
    assert offset >= sent - SLACK, f"A saved only {offset} of {sent} bytes"

    if how == "half-open":
        # A's PATCH was asked to let go: it answers 423 with the offset it saved.
        r = old.read_response(timeout=5)
        assert r.status == 423, (r.status, r.headers, r.body)
        assert int(r.headers["upload-offset"]) == offset, r.headers
        assert r.body.startswith(b"ERR_UPLOAD_INTERRUPTED"), r.body
        old.close()

    t1 = time.monotonic()
    finish(on(b, url), data, offset)
    print(f"[{how}] resumed on B from {offset} and finished in {time.monotonic() - t1:.2f}s")
    assert_stored([a, b], url, data)
    wait_state(a, url, {"processed"}, timeout=15)
    assert_processed_once([a, b], url)


# ---------------------------------------------------------------- 3. SIGKILL on A


def test_instance_killed_mid_patch_resumes_on_other(
    start_server: Start, redis_url: str, tmp_path: Path,
) -> None:
    a, b = cluster(start_server, redis_url, tmp_path / "shared", 2, "--network-timeout", "30")
    data = Pattern(64 * MiB, seed="sigkill")
    url = create_upload(a, data.size)

    conn = RawConn(on(a, url), timeout=30)
    conn.start_patch(0, data.size)
    sent = conn.send_chunks(data.chunks(0, 40 * MiB))  # past one 32 MiB checkpoint
    assert sent == 40 * MiB
    conn.wait_delivered()  # A has read it all,
    wait_event([a], "upload.checkpoint", upload_id(url))  # and committed its first 32 MiB
    a.kill()  # SIGKILL: no release, the lock stays in Redis until A's heartbeat expires
    conn.abort()

    t0 = time.monotonic()
    r = httpx.head(on(b, url), headers=TUS, timeout=15)
    takeover = time.monotonic() - t0
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers.get("Cache-Control") == "no-store"
    assert int(r.headers["Upload-Length"]) == data.size
    offset = int(r.headers["Upload-Offset"])
    print(f"after SIGKILL of A: HEAD on B in {takeover:.2f}s, sent {sent}, offset {offset} "
          f"(lost {(sent - offset) / MiB:.1f} MiB)")
    assert takeover < 6.0, f"dead holder's lock taken over only after {takeover:.2f}s"
    assert 0 < offset <= sent, (offset, sent)
    assert offset >= sent - CHECKPOINT - SLACK, f"only {offset} of {sent} bytes survived"

    finish(on(b, url), data, offset)
    assert_stored([b], url, data)
    wait_state(b, url, {"processed"}, timeout=15)
    assert_processed_once([a, b], url)


# ------------------------------------------------------------------ 4. racing writers


@pytest.mark.parametrize("round_", range(3))
def test_racing_patches_across_instances_do_not_interleave(
    start_server: Start, redis_url: str, tmp_path: Path, round_: int,
) -> None:
    a_srv, b_srv = cluster(start_server, redis_url, tmp_path / "shared", 2,
                           "--network-timeout", "10")
    size = 8 * MiB
    a, b = Pattern(size, seed=f"xrace-a{round_}"), Pattern(size, seed=f"xrace-b{round_}")
    url = create_upload(a_srv, size)

    results = race_patches({"a": on(a_srv, url), "b": on(b_srv, url)}, {"a": a, "b": b}, size)
    statuses = {name: res.status for name, res in results.items()}
    for res in results.values():
        if res.status in (409, 423):
            assert "upload-offset" in res.headers, res.headers
    # A race: who wins, and whether the loser hears 409 (offset moved) or 423 (locked),
    # depends on timing - both answers are right.
    assert set(statuses.values()) <= {204, 409, 423}, statuses
    assert list(statuses.values()).count(204) <= 1, statuses

    offset = head_offset(on(a_srv, url))
    print(f"round {round_}: statuses {statuses}, offset {offset}")
    winner = [n for n, s in statuses.items() if s == 204]
    if winner:
        assert offset == size
        sha, _ = download_sha256(on(b_srv, url))
        assert sha == {"a": a, "b": b}[winner[0]].sha256(), "content is not the 204 writer's"
    else:
        # Nobody finished: the stored prefix is one writer's. Finish with A's remainder
        # (through B): the result is A, or B's prefix + A's rest, never a mix.
        if offset < size:
            r = patch(on(b_srv, url), offset, a.chunks(offset), size - offset)
            assert r.status == 204, (r.status, r.headers, r.body)
        sha, _ = download_sha256(on(a_srv, url))
        candidates = {
            a.sha256(),
            sha256_of([*b.chunks(0, offset), *a.chunks(offset)]),
        }
        assert sha in candidates, f"interleaved content (statuses {statuses}, offset {offset})"
    wait_state(b_srv, url, {"processed"}, timeout=15)
    assert_processed_once([a_srv, b_srv], url)


# ------------------------------------------------------------- 5. exactly-once completion


def test_completion_exactly_once_across_instances(
    start_server: Start, redis_url: str, tmp_path: Path,
) -> None:
    servers = cluster(start_server, redis_url, tmp_path / "shared", 3)
    uploads: list[tuple[str, Pattern]] = []
    for i in range(5):
        data = Pattern(64 * KiB + i * 1000, seed=f"once-{i}")
        creator, writer = servers[i % 3], servers[(i + 1) % 3]
        if i == 4:
            # creation-with-upload: the POST itself completes the upload.
            r = httpx.post(creator.url, headers={
                **TUS, "Upload-Length": str(data.size),
                "Content-Type": "application/offset+octet-stream",
            }, content=data.read(), timeout=10)
            assert r.status_code == 201, (r.status_code, r.text)
            assert int(r.headers["Upload-Offset"]) == data.size
            url = r.headers["Location"]
        else:
            url = create_upload(creator, data.size)
            half = data.size // 2
            r1 = patch(on(writer, url), 0, data.chunks(0, half), half)
            assert r1.status == 204, (r1.status, r1.body)
            r2 = patch(on(creator, url), half, data.chunks(half), data.size - half)
            assert r2.status == 204, (r2.status, r2.body)
            assert int(r2.headers["upload-offset"]) == data.size
        uploads.append((url, data))

    for i, (url, data) in enumerate(uploads):
        info = wait_state(servers[(i + 2) % 3], url, {"processed"}, timeout=15)
        assert info["offset"] == data.size, info
        assert info["processing"]["attempts"] == 1, info
        # The processor hashed the stored bytes itself: the same sha256 as the client's.
        assert info["file"]["sha256"] == data.sha256(), info
        assert info["file"]["size"] == data.size, info
        assert_stored([servers[i % 3]], url, data)
    process_marker(servers)  # any duplicate delivery was taken by now
    for url, _ in uploads:
        assert_processed_once(servers, url)
    workers = {
        s.port for s in servers for url, _ in uploads
        if events([s], "processing.done", upload_id(url))
    }
    print(f"5 uploads processed by instances {sorted(workers)}")


# --------------------------------------------------------------------- 6. Redis restart


def assert_unavailable(method: str, url: str, **kwargs: object) -> None:
    """The request fails fast with 503 (HEAD: 423, so clients retry instead of starting over)
    and a one-line reason."""
    t0 = time.monotonic()
    try:
        r = httpx.request(method, url, timeout=15, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException:
        pytest.fail(f"{method} hung with Redis down (no answer in 15 s)")
    elapsed = time.monotonic() - t0
    print(f"{method} with Redis down: {r.status_code} in {elapsed:.2f}s: {r.text!r}")
    assert r.status_code == (423 if method == "HEAD" else 503), (r.status_code, r.text)
    assert r.headers.get("Retry-After") == "1"
    assert elapsed < 10.0, f"{method} took {elapsed:.2f}s to fail"
    assert r.headers.get("Tus-Resumable") == "1.0.0"
    body = r.text
    if method != "HEAD":
        assert body.endswith("\n") and "\n" not in body[:-1], f"not one line: {body!r}"
        assert body.startswith("ERR_STORAGE_UNAVAILABLE: "), body


def test_redis_restart_mid_upload(
    start_server: Start, redis_server: RedisServer, redis_url: str, tmp_path: Path,
) -> None:
    if redis_server.external_url:
        pytest.skip("needs our own redis-server to stop and restart")
    a, b = cluster(start_server, redis_url, tmp_path / "shared", 2, "--network-timeout", "10")
    data = Pattern(16 * MiB, seed="redis-restart")
    half = data.size // 2
    url = create_upload(a, data.size)
    r = patch(on(a, url), 0, data.chunks(0, half), half)
    assert r.status == 204, (r.status, r.body)
    assert int(r.headers["upload-offset"]) == half

    outage = LogWatch(a, b)
    redis_server.stop()
    try:
        patch_headers = {**TUS, "Content-Type": "application/offset+octet-stream",
                         "Upload-Offset": str(half)}
        assert_unavailable("PATCH", on(a, url), headers=patch_headers,
                           content=data.read(half, half + 64 * KiB))
        assert_unavailable("HEAD", on(a, url), headers=TUS)
        assert_unavailable("HEAD", on(b, url), headers=TUS)
        assert_unavailable("POST", a.url, headers={**TUS, "Upload-Length": "10"})
        # Every background loop of both instances has noticed the outage, and lives on.
        for event in ("lock.pubsub_reconnect", "processing.queue_unavailable"):
            outage.wait_event(event, count=2)
        for s in (a, b):
            assert s.proc is not None and s.proc.poll() is None, "an instance died"
    finally:
        redis_server.start()

    # The AOF kept the committed offset; both instances reconnect by themselves (no event
    # marks a reconnection: the shared poll).
    assert wait_for(lambda: httpx.head(on(b, url), headers=TUS, timeout=15).status_code
                    not in (423, 503), timeout=10)
    r_head = httpx.head(on(b, url), headers=TUS, timeout=15)
    assert r_head.status_code == 200, (r_head.status_code, r_head.text)
    assert int(r_head.headers["Upload-Offset"]) == half
    assert head_offset(on(a, url)) == half

    problems: list[str] = []
    # After the outage the instances must again hear release requests: a half-open PATCH
    # on A is stopped (423) as soon as B asks for the upload, as before the outage.
    # Both are subscribed to release requests again (Redis counts the subscribers).
    import redis

    store = redis.Redis.from_url(redis_url)
    assert wait_for(lambda: store.pubsub_numsub(RELEASE_CHANNEL)[0][1] == 2, timeout=10), \
        store.pubsub_numsub(RELEASE_CHANNEL)
    old = RawConn(on(a, url))
    old.start_patch(half, data.size - half)
    assert old.send_chunks(data.chunks(half, half + 2 * MiB)) == 2 * MiB
    old.wait_delivered()
    t0 = time.monotonic()
    offset = head_offset(on(b, url))
    print(f"after the restart: HEAD on B behind A's half-open PATCH in "
          f"{time.monotonic() - t0:.2f}s, offset {offset}")
    assert half <= offset <= half + 2 * MiB, offset
    try:
        r_old = old.read_response(timeout=3)
        if r_old.status != 423:
            problems.append(f"A's taken-over PATCH answered {r_old.status}, not 423")
    except TimeoutError:
        problems.append("A's half-open PATCH was not stopped when B took the upload over "
                        "(A no longer hears release requests after the Redis outage)")
    old.close()

    finish(on(a, url), data, head_offset(on(a, url)))
    assert_stored([a, b], url, data)
    try:
        info = wait_state(a, url, {"processed"}, timeout=15)
        assert info["offset"] == data.size, info
        assert_processed_once([a, b], url)
    except AssertionError as exc:
        problems.append(f"completion after the outage: {exc}")

    alive = store.keys("tus:instance:*")
    if len(alive) != 2:
        problems.append(f"{len(alive)} of 2 instances heart-beat after the outage: {alive}")
    assert not problems, "after a Redis restart:\n" + "\n".join(problems)


# ------------------------------------------------------------ 7. startup without Redis


def test_startup_refuses_unreachable_redis(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_PY_")}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tusd_py", "serve", "--port", str(free_port()),
         "--upload-dir", str(tmp_path / "data"),
         "--redis-url", f"redis://127.0.0.1:{closed}/0"],
        capture_output=True, timeout=30, env=env, cwd=Path(__file__).parents[2],
    )
    elapsed = time.monotonic() - t0
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    print(f"exit {proc.returncode} after {elapsed:.2f}s: {out!r}")
    assert proc.returncode == 2, (proc.returncode, out)
    assert elapsed < 10.0, f"took {elapsed:.2f}s to give up"
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert "cannot reach Redis" in lines[0], lines[0]
