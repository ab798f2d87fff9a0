"""A full upload volume (ENOSPC): 507 with a reason, nothing unsynced committed, resume later.

The upload dir is a small tmpfs mounted for each test (we run as root). A ballast file
fills it; the upload fails with 507 at the bytes that fit; the offset HEAD reports is
exactly the bytes in the upload's file; once the ballast is deleted the upload resumes
and completes with the right sha256. Both backends: with Redis the state lives in Redis
and only the bytes are on the full volume.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    TUS,
    MiB,
    Pattern,
    RawConn,
    Response,
    create_upload,
    head_offset,
    resume_and_check,
    upload_id,
)

VOLUME = 32 * MiB
FULL_REASON = b"ERR_STORAGE_FULL: no space left on the upload volume"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A fresh 32 MiB tmpfs; the server's log stays outside it (upload_dir.parent)."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        # Lazy: still correct if a server (stopped after us) has the directory open.
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(params=["embedded", "redis"])
def backend_flags(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "redis":
        return ("--redis-url", request.getfixturevalue("redis_url"))
    return ()


@pytest.fixture
def vserver(volume: Path, backend_flags: tuple[str, ...],
            start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--network-timeout", "5", *backend_flags, upload_dir=volume)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(volume: Path, leave: int) -> Path:
    """Write a ballast file until at most `leave` bytes are free on the volume."""
    ballast = volume / "ballast"
    block = b"\xba" * MiB
    with ballast.open("ab") as f:
        while (room := free_bytes(volume) - leave) > 0:
            try:
                f.write(block[: min(room, MiB)])
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    print(f"ballast {ballast.stat().st_size} bytes, {free_bytes(volume)} bytes free")
    return ballast


def patch_full_body(url: str, data: Pattern, offset: int) -> Response:
    """Send the rest of the upload in one PATCH while reading the answer concurrently:
    the server answers (and closes) before it has read the whole body."""
    conn = RawConn(url, timeout=30)
    conn.start_patch(offset, data.size - offset)
    sender = threading.Thread(target=conn.send_chunks, args=(data.chunks(offset),))
    sender.start()
    try:
        return conn.read_response(timeout=30)
    finally:
        sender.join(30)
        conn.close()


def data_file(volume: Path, url: str) -> Path:
    return volume / "uploads" / upload_id(url)


def assert_offset_is_what_is_on_disk(volume: Path, url: str, data: Pattern) -> int:
    offset = head_offset(url)
    stored = data_file(volume, url).read_bytes()
    assert len(stored) == offset, f"HEAD says {offset}, the file holds {len(stored)} bytes"
    assert stored == data.read(0, offset), "stored prefix differs from what was sent"
    return offset


def test_disk_full_mid_patch_answers_507_keeps_durable_bytes_and_resumes(
        vserver: ServerProcess, volume: Path) -> None:
    data = Pattern(12 * MiB, seed="enospc-patch")
    url = create_upload(vserver, data.size)
    ballast = fill(volume, leave=3 * MiB)

    r = patch_full_body(url, data, 0)
    assert r.status == 507, (r.status, r.headers, r.body)
    assert r.body.startswith(FULL_REASON), r.body
    assert r.body.count(b"\n") == 1, "the reason is one line"
    offset = int(r.headers["upload-offset"])
    assert assert_offset_is_what_is_on_disk(volume, url, data) == offset
    # What fit before the volume filled up is kept (written in 1 MiB batches).
    assert MiB <= offset < 3 * MiB, offset
    log = vserver.log()
    assert f"upload.storage_full upload_id={upload_id(url)}" in log, log
    assert "Traceback" not in log

    # Retrying while the volume is still full: 507 again, and never less than before.
    r = patch_full_body(url, data, offset)
    assert r.status == 507, (r.status, r.headers, r.body)
    again = assert_offset_is_what_is_on_disk(volume, url, data)
    assert again == int(r.headers["upload-offset"]) >= offset

    ballast.unlink()
    resume_and_check(vserver, url, data, again)  # completes, sha256 via GET, processed


def test_creation_on_a_full_volume(vserver: ServerProcess, volume: Path,
                                   backend_flags: tuple[str, ...]) -> None:
    """Embedded: the .info record cannot be written -> 507 and no upload left behind.
    Redis: the record is in Redis, so creation works and the first PATCH answers 507."""
    uploads = volume / "uploads"
    before = set(os.listdir(uploads))
    ballast = fill(volume, leave=0)
    data = Pattern(2 * MiB, seed="enospc-create")
    r = httpx.post(vserver.url, headers={**TUS, "Upload-Length": str(data.size)}, timeout=10)
    if not backend_flags:
        assert r.status_code == 507, (r.status_code, r.text)
        assert r.text.startswith(FULL_REASON.decode()), r.text
        assert "Location" not in r.headers
        left = {n for n in set(os.listdir(uploads)) - before if not n.startswith(".")}
        assert left == set(), f"half-created upload left behind: {left}"
        listed = httpx.get(f"{vserver.origin}/api/uploads", timeout=10).json()["uploads"]
        assert listed == []
        ballast.unlink()
        url = create_upload(vserver, data.size)
    else:
        assert r.status_code == 201, (r.status_code, r.text)
        url = r.headers["Location"]
        r2 = patch_full_body(url, data, 0)
        assert r2.status == 507, (r2.status, r2.headers, r2.body)
        assert r2.body.startswith(FULL_REASON) and r2.headers["upload-offset"] == "0"
        assert assert_offset_is_what_is_on_disk(volume, url, data) == 0
        ballast.unlink()
    resume_and_check(vserver, url, data, 0)
    assert "Traceback" not in vserver.log()


def test_creation_with_upload_on_a_nearly_full_volume(
        vserver: ServerProcess, volume: Path) -> None:
    """POST with a body: 507 still tells the client where the upload is and its offset."""
    data = Pattern(10 * MiB, seed="enospc-post-body")
    ballast = fill(volume, leave=3 * MiB)
    conn = RawConn(vserver.url, timeout=30)
    conn.send_head("POST", {**TUS, "Upload-Length": str(data.size),
                            "Content-Type": "application/offset+octet-stream",
                            "Content-Length": str(data.size)})
    sender = threading.Thread(target=conn.send_chunks, args=(data.chunks(),))
    sender.start()
    try:
        r = conn.read_response(timeout=30)
    finally:
        sender.join(30)
        conn.close()
    assert r.status == 507, (r.status, r.headers, r.body)
    assert r.body.startswith(FULL_REASON), r.body
    url = r.headers["location"]
    offset = int(r.headers["upload-offset"])
    assert assert_offset_is_what_is_on_disk(volume, url, data) == offset
    assert 0 < offset < 3 * MiB
    ballast.unlink()
    resume_and_check(vserver, url, data, offset)
