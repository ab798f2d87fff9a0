"""S3 end to end: `tusd-py serve` instances that share nothing but Redis and a bucket.

Every instance has its own --upload-dir (only its spool lives there) and the same
--s3-bucket/--s3-prefix on a real S3 server (Swift s3api, tests/s3_support.py).
The checks are what clients see: offsets, GET bytes (sha256), processing results.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image
from tusclient import client as tus_client

from storage.s3 import S3Connection, S3DataStore
from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    CHECKPOINT,
    SLACK,
    TUS,
    MiB,
    Pattern,
    RawConn,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    upload_id,
    wait_state,
)
from tests.e2e.support import (
    RssSampler,
    Start,
    assert_processed_once,
    assert_stored,
    on,
    wait_event,
)
from tests.s3_support import S3Server

PART = 2 * MiB  # the server under test enforces a 1 MiB minimum part


def cluster(start_server: Start, s3: S3Server, redis_url: str, tmp_path: Path, n: int,
            *flags: str, prefix: str | None = None) -> list[ServerProcess]:
    """n instances, one Redis, one bucket prefix, separate upload dirs."""
    prefix = prefix or f"e2e-{uuid.uuid4().hex[:8]}/"
    return [start_server("--redis-url", redis_url, *s3.flags(prefix),
                         "--s3-part-size", str(PART), *flags,
                         upload_dir=tmp_path / f"instance{i}")
            for i in range(n)]


def finish(url: str, data: Pattern, offset: int) -> None:
    r = patch(url, offset, data.chunks(offset), data.size - offset, timeout=60)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == data.size


def test_round_robin_chunks_across_three_instances(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    servers = cluster(start_server, s3_server, redis_url, tmp_path, 3)
    data = Pattern(13 * MiB + 12345, seed="s3-robin")
    url = create_upload(servers[0], data.size, metadata="filename cm9iaW4uYmlu")
    step = 1536 * 1024  # parts and tails fall at different places every time
    t0 = time.monotonic()
    for i, start in enumerate(range(0, data.size, step)):
        end = min(start + step, data.size)
        r = patch(on(servers[i % 3], url), start, data.chunks(start, end), end - start)
        assert r.status == 204, (i, r.status, r.headers, r.body)
        assert int(r.headers["upload-offset"]) == end
        assert head_offset(on(servers[(i + 1) % 3], url)) == end
    print(f"round-robin over 3 S3 instances in {time.monotonic() - t0:.2f}s")
    info = wait_state(servers[1], url, {"processed"}, timeout=30)
    assert info["offset"] == info["size"] == data.size
    assert_stored(servers, url, data)
    assert_processed_once(servers, url)  # waits for a later upload's processing first
    for s in servers:  # at most a stale tail copy is left (dropped after 10 idle minutes)
        spooled = sum(p.stat().st_size for p in (s.upload_dir / "s3-spool").rglob("*")
                      if p.is_file())
        assert spooled < s3_server.min_part_size, spooled


def test_reset_mid_patch_resumes_on_another_instance(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    a, b = cluster(start_server, s3_server, redis_url, tmp_path, 2, "--network-timeout", "30")
    data = Pattern(24 * MiB, seed="s3-rst")
    url = create_upload(a, data.size)
    old = RawConn(on(a, url))
    old.start_patch(0, data.size)
    assert old.send_chunks(data.chunks(0, 7 * MiB)) == 7 * MiB
    old.wait_delivered()  # A has read all of it
    old.abort()  # RST: A saves what arrived (its S3 parts and tail) and lets go
    t0 = time.monotonic()
    offset = head_offset(on(b, url), timeout=10)
    print(f"RST on A: HEAD on B after {time.monotonic() - t0:.2f}s, offset {offset}")
    assert 0 < offset <= 7 * MiB and offset >= 7 * MiB - SLACK
    finish(on(b, url), data, offset)
    assert_stored([a, b], url, data)
    wait_state(a, url, {"processed"}, timeout=30)


def test_sigkill_of_the_instance_holding_a_patch(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    a, b = cluster(start_server, s3_server, redis_url, tmp_path, 2, "--network-timeout", "30")
    data = Pattern(56 * MiB, seed="s3-kill")
    url = create_upload(a, data.size)
    conn = RawConn(on(a, url), timeout=30)
    conn.start_patch(0, data.size)
    assert conn.send_chunks(data.chunks(0, 40 * MiB)) == 40 * MiB
    conn.wait_delivered()
    # past a checkpoint: parts and tail confirmed by S3, offset committed
    wait_event([a], "upload.checkpoint", upload_id(url), timeout=30)
    a.kill()
    conn.abort()
    t0 = time.monotonic()
    offset = head_offset(on(b, url), timeout=15)
    print(f"SIGKILL of A: HEAD on B after {time.monotonic() - t0:.2f}s, offset {offset}")
    assert 0 < offset <= 40 * MiB and offset >= 40 * MiB - CHECKPOINT - SLACK
    finish(on(b, url), data, offset)
    assert_stored([b], url, data)
    wait_state(b, url, {"processed"}, timeout=30)


def test_one_and_hundred_byte_chunks(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    """Tails far below the minimum part size, from tuspy and across instances."""
    a, b = cluster(start_server, s3_server, redis_url, tmp_path, 2)
    for size, chunk in ((120, 1), (20_000, 100)):
        path = tmp_path / f"tiny-{chunk}.bin"
        path.write_bytes(os.urandom(size))
        uploader = tus_client.TusClient(a.url).uploader(
            str(path), chunk_size=chunk, metadata={"filename": path.name})
        uploader.upload()
        assert uploader.url is not None
        sha, got = download_sha256(on(b, uploader.url))
        assert got == size and sha == hashlib.sha256(path.read_bytes()).hexdigest()
    # A tail that becomes part of a part: 100 bytes on A, 1-byte on B, 1.5 MiB on A, ...
    data = Pattern(3 * MiB + 201, seed="s3-tails")
    url = create_upload(a, data.size)
    offset = 0
    for i, n in enumerate((100, 1, 1536 * 1024, 1, 100, MiB, None)):
        end = data.size if n is None else offset + n
        r = patch(on((a, b)[i % 2], url), offset, data.chunks(offset, end), end - offset)
        assert r.status == 204 and int(r.headers["upload-offset"]) == end, r
        offset = end
    assert_stored([a, b], url, data)


def test_large_upload_default_parts_bounded_rss(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    """One big PATCH with the default 50 MiB parts: memory stays flat, bytes intact."""
    size = int(os.environ.get("S3_E2E_LARGE_MIB", "1024")) * MiB
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    server = start_server("--redis-url", redis_url, "--s3-bucket", s3_server.bucket,
                          "--s3-endpoint", s3_server.endpoint, "--s3-region", s3_server.region,
                          "--s3-prefix", prefix, "--no-processing",
                          upload_dir=tmp_path / "big")
    data = Pattern(size, seed="s3-large")
    url = create_upload(server, data.size)
    baseline = min(server.rss_bytes() for _ in range(3))
    t0 = time.monotonic()
    with RssSampler(server) as rss:
        r = patch(url, 0, data.chunks(chunk=4 * MiB), data.size, timeout=600)
    elapsed = time.monotonic() - t0
    assert r.status == 204, (r.status, r.headers, r.body)
    growth = rss.peak - baseline
    print(f"S3 upload of {size / MiB:.0f} MiB in {elapsed:.1f}s "
          f"({size / elapsed / 1e6:.0f} MB/s); RSS baseline {baseline / MiB:.0f} MiB, "
          f"peak {rss.peak / MiB:.0f} MiB, growth {growth / MiB:.0f} MiB, "
          f"{len(rss.samples)} samples")
    assert growth < 96 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
    t1 = time.monotonic()
    sha, got = download_sha256(url)
    print(f"GET of {size / MiB:.0f} MiB in {time.monotonic() - t1:.1f}s")
    assert got == size and sha == data.sha256()


def test_concatenation_of_four_partials(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    servers = cluster(start_server, s3_server, redis_url, tmp_path, 2)
    parts = [Pattern(3 * MiB // 2 + i * 1000, seed=f"s3-concat-{i}") for i in range(4)]
    urls = []
    for i, part in enumerate(parts):
        srv = servers[i % 2]
        r = httpx.post(srv.url, headers={**TUS, "Upload-Length": str(part.size),
                                         "Upload-Concat": "partial"})
        assert r.status_code == 201
        finish(r.headers["Location"], part, 0)
        urls.append(r.headers["Location"])
    r = httpx.post(servers[1].url, headers={
        **TUS, "Upload-Concat": "final;" + " ".join(urls)})
    assert r.status_code == 201, r.text
    final = r.headers["Location"]
    assert head_offset(final) == sum(p.size for p in parts)
    expected = hashlib.sha256()
    for part in parts:
        for chunk in part.chunks():
            expected.update(chunk)
    for s in servers:
        sha, got = download_sha256(on(s, final))
        assert got == sum(p.size for p in parts) and sha == expected.hexdigest()
    wait_state(servers[0], final, {"processed"}, timeout=30)


def test_crash_between_sync_and_commit(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    """S3 holds more than the committed offset (parts included): resuming stays exact."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    a, b = cluster(start_server, s3_server, redis_url, tmp_path, 2, prefix=prefix)
    data = Pattern(9 * MiB, seed="s3-sync-commit")
    url = create_upload(a, data.size)
    r = patch(on(a, url), 0, data.chunks(0, 3 * MiB), 3 * MiB)
    assert r.status == 204
    uid = upload_id(url)

    async def crashed_instance() -> None:
        # What an instance leaves when it dies after sync() and before its commit:
        # bytes 3..7.5 MiB stored (two parts and a tail), the offset still at 3 MiB.
        conn = S3Connection(s3_server.options(prefix=prefix, part_size=PART))
        store = S3DataStore(conn, tmp_path / "crashed")
        try:
            await store.truncate(uid, 3 * MiB)
            await store.write(uid, 3 * MiB, list(data.chunks(3 * MiB, 7 * MiB + MiB // 2)))
            await store.sync(uid)
        finally:
            await conn.aclose()
            store.close()

    anyio.run(crashed_instance)
    offset = head_offset(on(b, url))
    assert offset == 3 * MiB
    # The client resends from the committed offset, in pieces, through both instances.
    for i, end in enumerate((4 * MiB, 6 * MiB + 5, 8 * MiB, data.size)):
        r = patch(on((b, a)[i % 2], url), offset, data.chunks(offset, end), end - offset)
        assert r.status == 204 and int(r.headers["upload-offset"]) == end
        offset = end
    assert_stored([a, b], url, data)
    assert any("skipping resent bytes" in s.log() for s in (a, b))


def test_pipeline_processes_a_tiff_stored_in_s3(
    start_server: Start, s3_server: S3Server, redis_url: str, tmp_path: Path,
) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    a, b = cluster(start_server, s3_server, redis_url, tmp_path, 2, prefix=prefix)
    path = tmp_path / "scan.tif"
    Image.linear_gradient("L").resize((3000, 2000)).convert("RGB").save(
        path, compression="tiff_lzw")
    uploader = tus_client.TusClient(a.url).uploader(
        str(path), chunk_size=MiB, metadata={"filename": "scan.tif", "project": "mars"})
    uploader.upload()
    assert uploader.url is not None
    doc = wait_state(b, uploader.url, {"processed", "failed"}, timeout=60)
    assert doc["state"] == "processed", doc
    uid = doc["id"]
    assert doc["file"]["path"] == f"mars/{uid}/scan.tif"
    assert doc["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert doc["image"]["width"] == 3000 and doc["image"]["height"] == 2000
    names = {t["name"] for t in doc["thumbnails"]}
    assert names == {"thumb-256.jpg", "thumb-1024.jpg"}

    async def final_objects() -> dict[str, int]:
        conn = S3Connection(s3_server.options(prefix=prefix))
        try:
            client = await conn.client()
            listed = await client.list_objects_v2(Bucket=s3_server.bucket,
                                                  Prefix=f"{prefix}final/mars/{uid}/")
            return {o["Key"][len(prefix):]: o["Size"] for o in listed.get("Contents", [])}
        finally:
            await conn.aclose()

    objects = anyio.run(final_objects)
    assert objects[f"final/mars/{uid}/scan.tif"] == path.stat().st_size
    assert {f"final/mars/{uid}/thumbs/{n}" for n in names} <= set(objects)
    assert f"final/mars/{uid}/upload.json" in objects
    # No copy of the upload stays on the processing instance's disk.
    assert not list(tmp_path.rglob("scan.tif.download")) and not [
        p for p in tmp_path.glob("instance*/final/**/scan.tif")]
    assert httpx.get(uploader.url).content == path.read_bytes()
    # Every instance serves the thumbnails (they are objects), not only the one that made them.
    for server in (a, b):
        for thumb in doc["thumbnails"]:
            got = httpx.get(server.origin + thumb["url"])
            assert got.status_code == 200 and got.content[:3] == b"\xff\xd8\xff", server.port
    # Termination removes the final objects too.
    assert httpx.delete(uploader.url, headers=TUS).status_code == 204
    assert anyio.run(final_objects) == {}


@pytest.mark.parametrize("flags", [[]])
def test_embedded_s3_without_redis(start_server: Start, s3_server: S3Server, tmp_path: Path,
                                   flags: list[str]) -> None:
    """--s3-bucket alone: `.info` objects in the bucket, one instance; state survives restarts."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    server = start_server(*s3_server.flags(prefix), "--s3-part-size", str(PART), *flags,
                          upload_dir=tmp_path / "solo")
    data = Pattern(5 * MiB + 3, seed="s3-embedded")
    url = create_upload(server, data.size)
    r = patch(url, 0, data.chunks(0, 2 * MiB + 1), 2 * MiB + 1)
    assert r.status == 204
    server.restart()
    assert head_offset(url) == 2 * MiB + 1
    finish(url, data, 2 * MiB + 1)
    assert_stored([server], url, data)
    wait_state(server, url, {"processed"}, timeout=30)
