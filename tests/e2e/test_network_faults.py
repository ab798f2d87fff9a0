"""End-to-end network-fault tests, speaking HTTP/1.1 by hand over raw sockets.

Every test asserts what a tus client can observe: status codes, the HEAD offset,
and the sha256 of the finished upload downloaded with GET.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    CHECKPOINT,
    NETWORK_TIMEOUT,
    SLACK,
    KiB,
    MiB,
    Pattern,
    RawConn,
    assert_within_slack,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    race_patches,
    resume_and_check,
    sha256_of,
    upload_id,
)
from tests.tusd_py.helpers import LogWatch, event_re, log_field, wait_log


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """The default server, logging at debug level: `upload.patch` marks a PATCH that holds
    its upload."""
    return start_server("--network-timeout", "3", "--log-level", "debug")


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
        wait_log(server, event_re("upload.interrupted", upload_id(url)))  # saved what it got
    else:
        conn.wait_delivered()  # the server has drained its receive buffer: RST discards it
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
    old.wait_delivered()  # well below --network-timeout 3: the old PATCH holds the upload

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

    log = LogWatch(server)
    old = RawConn(url)
    old.start_patch(0, size)
    log.wait_event("upload.patch", upload_id(url))  # the idle PATCH holds the upload

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

    responses = race_patches({"a": url, "b": url}, {"a": a, "b": b}, size, timeout=15)
    statuses = {name: res.status for name, res in responses.items()}
    # A race: who wins, and whether the loser hears 409 (offset moved) or 423 (locked),
    # depends on timing - both answers are right.
    assert set(statuses.values()) <= {204, 409, 423}, statuses
    assert list(statuses.values()).count(204) <= 1, statuses
    for res in responses.values():
        if res.status == 409:
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
        time.sleep(0.5)  # the behaviour under test: a client that trickles
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
    # The server has caught up with what is in flight and committed all but the last
    # checkpoint's worth of it.
    conn.wait_delivered(timeout=30)
    LogWatch(server, from_start=True).wait(
        event_re("upload.checkpoint", upload_id(url)), timeout=30,
        where=lambda line: int(log_field(line, "offset")) >= sent - CHECKPOINT)
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
