"""S3DataStore against a real S3 server (Swift s3api): parts, tails, instances, crashes.

Two stores with their own spool dirs on the same bucket prefix play two server
instances. The server enforces a 1 MiB minimum part size (see tests/s3_support.py),
and the stores here use 2 MiB preferred parts, so a few MiB exercise every path.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from botocore.exceptions import ClientError

from storage import StorageError, UploadInfo, UploadNotFound, new_upload_id
from storage.s3 import S3Connection, S3DataStore, S3Options, S3StateStore
from storage.s3.client import error_code
from tests.s3_support import S3Server

pytestmark = pytest.mark.anyio
MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def store(options: S3Options, spool: Path) -> AsyncIterator[S3DataStore]:
    """One 'instance': its own connection, spool and background task group."""
    conn = S3Connection(options)
    data = S3DataStore(conn, spool)
    async with anyio.create_task_group() as tg:
        tg.start_soon(data.run)
        await anyio.lowlevel.checkpoint()
        try:
            yield data
        finally:
            tg.cancel_scope.cancel()
    await conn.aclose()
    data.close()


async def read_all(data: S3DataStore, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([c async for c in data.read(upload_id, start, end)])


async def write_in(data: S3DataStore, upload_id: str, offset: int, blob: bytes,
                   chunk: int = 256 * 1024) -> None:
    for i in range(0, len(blob), chunk):
        piece = blob[i:i + chunk]
        assert await data.write(upload_id, offset + i, [piece]) == len(piece)


async def raw(data: S3DataStore, op: str, **kw: Any) -> Any:
    client = await data.conn.client()
    return await getattr(client, op)(Bucket=data.bucket, **kw)


async def manifest_parts(data: S3DataStore, upload_id: str) -> list[int]:
    got = await data._get_manifest(upload_id, with_tail=False)
    assert got is not None
    return [size for _, _, size in got[0].parts]


async def test_parts_upload_while_writing_then_assemble(s3_server: S3Server,
                                                        tmp_path: Path) -> None:
    blob = os.urandom(5 * MiB + MiB // 2)
    async with store(s3_server.options(), tmp_path / "a") as a:
        uid = new_upload_id()
        await a.create(uid)
        await write_in(a, uid, 0, blob[:4 * MiB + 1])
        # Two full parts went up in the background before any sync.
        with anyio.fail_after(20):
            for part in list(a._uploads[uid].parts):
                await part.done.wait()  # set once its background upload ended
        assert sum(1 for p in a._uploads[uid].parts if p.etag) == 2
        await write_in(a, uid, 4 * MiB + 1, blob[4 * MiB + 1:])
        await a.sync(uid)
        assert await manifest_parts(a, uid) == [2 * MiB, 2 * MiB, 3 * MiB // 2]
        await a.finish(uid, len(blob))
        head = await raw(a, "head_object", Key=a.key(uid))
        assert head["ContentLength"] == len(blob) and head["ETag"].endswith('-3"')
        assert await read_all(a, uid, 0, len(blob)) == blob
        assert await read_all(a, uid, MiB - 3, 3 * MiB + 7) == blob[MiB - 3:3 * MiB + 7]
        chunks = [len(c) async for c in a.read(uid, 0, len(blob))]
        assert max(chunks) <= MiB
        with pytest.raises(ClientError) as caught:
            await raw(a, "head_object", Key=a.part_key(uid))
        assert error_code(caught.value) in ("404", "NoSuchKey")


async def test_tiny_tails_move_between_instances(s3_server: S3Server, tmp_path: Path) -> None:
    options = s3_server.options()
    blob = os.urandom(400)
    async with store(options, tmp_path / "a") as a, store(options, tmp_path / "b") as b:
        uid = new_upload_id()
        await a.create(uid)
        offset = 0
        for i, step in enumerate([1, 100, 1, 1, 97, 100, 100]):
            inst = (a, b)[i % 2]
            await inst.truncate(uid, offset)  # every PATCH starts with this
            await inst.write(uid, offset, [blob[offset:offset + step]])
            await inst.sync(uid)
            offset += step
        assert await a.size(uid) == 400
        await b.finish(uid, 400)
        await a.finish(uid, 400)  # idempotent, from the other instance too
        assert await read_all(a, uid, 0, 400) == blob
        with pytest.raises(StorageError):
            await a.finish(uid, 401)


async def test_crash_between_sync_and_commit_keeps_parts(s3_server: S3Server,
                                                         tmp_path: Path) -> None:
    """The committed offset falls inside a synced part: resent bytes are skipped."""
    options = s3_server.options()
    blob = os.urandom(6 * MiB)
    async with store(options, tmp_path / "a") as a, store(options, tmp_path / "b") as b:
        uid = new_upload_id()
        await a.create(uid)
        await write_in(a, uid, 0, blob[:3 * MiB])
        await a.sync(uid)  # ... and the instance dies before its commit of 3 MiB
        assert await manifest_parts(a, uid) == [2 * MiB, MiB]
        committed = MiB + 12345
        await b.truncate(uid, committed)
        assert await b.size(uid) == committed
        await write_in(b, uid, committed, blob[committed:5 * MiB])  # the client resends
        await b.sync(uid)
        await b.truncate(uid, 5 * MiB)
        await write_in(b, uid, 5 * MiB, blob[5 * MiB:])
        await b.sync(uid)
        await a.finish(uid, len(blob))
        assert await read_all(b, uid, 0, len(blob)) == blob


async def test_cut_inside_the_tail_replaces_its_end(s3_server: S3Server,
                                                    tmp_path: Path) -> None:
    options = s3_server.options()
    blob = os.urandom(2 * MiB + 100)
    async with store(options, tmp_path / "a") as a, store(options, tmp_path / "b") as b:
        uid = new_upload_id()
        await a.create(uid)
        await write_in(a, uid, 0, blob)
        await a.sync(uid)
        assert await manifest_parts(a, uid) == [2 * MiB]
        await b.truncate(uid, 2 * MiB + 50)
        await b.write(uid, 2 * MiB + 50, [b"Z" * 70])
        await b.sync(uid)
        await b.finish(uid, 2 * MiB + 120)
        assert await read_all(a, uid, 0, 2 * MiB + 120) == blob[:2 * MiB + 50] + b"Z" * 70


async def test_unsynced_parts_are_dropped_and_overwritten(s3_server: S3Server,
                                                          tmp_path: Path) -> None:
    """A checksum mismatch (same instance) or a crash (other instance) drops unsynced parts."""
    options = s3_server.options()
    first, second = os.urandom(5 * MiB), os.urandom(5 * MiB)
    async with store(options, tmp_path / "a") as a, store(options, tmp_path / "b") as b:
        uid = new_upload_id()
        await a.create(uid)
        await write_in(a, uid, 0, first)
        await a.truncate(uid, 0)  # e.g. the checksum of that PATCH did not match
        await write_in(a, uid, 0, second)
        await a.sync(uid)
        await a.finish(uid, len(second))
        assert await read_all(a, uid, 0, len(second)) == second

        other = new_upload_id()
        await a.create(other)
        await write_in(a, other, 0, first[:MiB])
        await a.sync(other)
        await write_in(a, other, MiB, first[MiB:])  # parts of these go up, never synced
        with anyio.fail_after(20):
            for part in list(a._uploads[other].parts):
                await part.done.wait()  # set once its background upload ended
        assert any(p.etag for p in a._uploads[other].parts)
        await b.truncate(other, MiB)
        await write_in(b, other, MiB, second[MiB:])
        await b.sync(other)
        await b.finish(other, 5 * MiB)
        assert await read_all(b, other, 0, 5 * MiB) == first[:MiB] + second[MiB:]


async def test_equal_part_sizes_for_r2(s3_server: S3Server, tmp_path: Path) -> None:
    options = s3_server.options(part_size=s3_server.min_part_size)
    blob = os.urandom(3 * MiB + 777)
    async with store(options, tmp_path / "a") as a:
        uid = new_upload_id()
        await a.create(uid)
        pos = 0
        for cut in (300_000, 1_500_000, 2_900_000, len(blob)):  # syncs at odd places
            await write_in(a, uid, pos, blob[pos:cut], chunk=100_000)
            await a.sync(uid)
            pos = cut
        assert await manifest_parts(a, uid) == [MiB, MiB, MiB]
        await a.finish(uid, len(blob))
        assert await read_all(a, uid, 0, len(blob)) == blob


async def test_zero_length_and_single_put(s3_server: S3Server, tmp_path: Path) -> None:
    async with store(s3_server.options(), tmp_path / "a") as a:
        empty, small = new_upload_id(), new_upload_id()
        await a.create(empty)
        await a.finish(empty, 0)
        assert (await raw(a, "head_object", Key=a.key(empty)))["ContentLength"] == 0
        await a.create(small)
        await a.write(small, 0, [b"tiny"])
        await a.sync(small)
        await a.finish(small, 4)
        assert await read_all(a, small, 0, 4) == b"tiny"
        uploads = await a.list_multipart_uploads(a.key(small))
        assert not uploads  # a small upload never opened a multipart upload


async def test_concat_server_side_and_streamed(s3_server: S3Server, tmp_path: Path) -> None:
    async with store(s3_server.options(), tmp_path / "a") as a:
        big = [os.urandom(3 * MiB // 2), os.urandom(3 * MiB // 2), b"last bytes"]
        ids = [new_upload_id() for _ in big]
        for uid, blob in zip(ids, big, strict=True):
            await a.create(uid)
            await write_in(a, uid, 0, blob)
            await a.sync(uid)
            await a.finish(uid, len(blob))
        final = new_upload_id()
        await a.create(final)
        assert await a.concat(final, ids) == sum(map(len, big))
        head = await raw(a, "head_object", Key=a.key(final))
        assert head["ETag"].endswith('-3"')  # one UploadPartCopy per source
        assert await read_all(a, final, 0, head["ContentLength"]) == b"".join(big)

        small = [b"abc", os.urandom(MiB + 5), b"", b"de"]  # a 3-byte part cannot be copied
        sids = [new_upload_id() for _ in small]
        for uid, blob in zip(sids, small, strict=True):
            await a.create(uid)
            await a.write(uid, 0, [blob])
            await a.sync(uid)
        streamed = new_upload_id()
        await a.create(streamed)
        assert await a.concat(streamed, sids) == sum(map(len, small))
        assert await read_all(a, streamed, 0, await a.size(streamed)) == b"".join(small)


async def test_delete_aborts_and_removes_everything(s3_server: S3Server,
                                                    tmp_path: Path) -> None:
    async with store(s3_server.options(), tmp_path / "a") as a:
        uid = new_upload_id()
        await a.create(uid)
        await write_in(a, uid, 0, os.urandom(3 * MiB + 10))
        await a.sync(uid)
        assert await a.list_multipart_uploads(a.key(uid))
        await a.delete(uid)
        assert not await a.list_multipart_uploads(a.key(uid))
        listed = await raw(a, "list_objects_v2", Prefix=a.key(uid))
        assert not listed.get("Contents")
        with pytest.raises(UploadNotFound):
            await a.size(uid)
        await a.delete(uid)  # twice is fine


async def test_orphan_sweep_aborts_unreferenced_uploads(s3_server: S3Server,
                                                        tmp_path: Path) -> None:
    options = s3_server.options()
    async with store(options, tmp_path / "a") as a:
        state = S3StateStore(a.conn)
        live, dead = new_upload_id(), new_upload_id()
        await state.create(UploadInfo(id=live, size=None, created_at=time.time()))
        await a.create(live)
        await write_in(a, live, 0, os.urandom(3 * MiB))
        await a.sync(live)
        # A multipart upload for an id without a record, and a stray one for the live id.
        await raw(a, "create_multipart_upload", Key=a.key(dead))
        stray = await raw(a, "create_multipart_upload", Key=a.key(live))
        assert await a.sweep_orphans(state, older_than=3600) == 0  # all too young
        # The behaviour under test: the uploads must age (Swift reports Initiated in whole
        # seconds, rounded up).
        await anyio.sleep(2.5)
        assert await a.sweep_orphans(state, older_than=1) == 2
        left = await a.list_multipart_uploads(options.prefix)
        assert [(k, m) for k, m, _ in left] == [(a.key(live), a._uploads[live].mpu)]
        assert stray["UploadId"] != a._uploads[live].mpu
        await a.finish(live, 3 * MiB)  # the live one still completes


async def test_server_enforces_the_minimum_part_size(s3_server: S3Server,
                                                     tmp_path: Path) -> None:
    """The small parts used in these tests are a real server limit, not a lenient emulator."""
    async with store(s3_server.options(), tmp_path / "a") as a:
        key = a.key(new_upload_id())
        mpu = (await raw(a, "create_multipart_upload", Key=key))["UploadId"]
        parts = []
        for n in (1, 2):
            r = await raw(a, "upload_part", Key=key, UploadId=mpu, PartNumber=n,
                          Body=b"x" * (s3_server.min_part_size // 2))
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        with pytest.raises(ClientError) as caught:
            await raw(a, "complete_multipart_upload", Key=key, UploadId=mpu,
                      MultipartUpload={"Parts": parts})
        assert error_code(caught.value) == "EntityTooSmall"
        await raw(a, "abort_multipart_upload", Key=key, UploadId=mpu)


async def test_final_layout_objects(s3_server: S3Server, tmp_path: Path) -> None:
    async with store(s3_server.options(), tmp_path / "a") as a:
        uid = new_upload_id()
        blob = os.urandom(MiB + 1)
        await a.create(uid)
        await write_in(a, uid, 0, blob)
        await a.sync(uid)
        await a.finish(uid, len(blob))
        key = await a.place_final(uid, f"default/{uid}/scan.bin", len(blob))
        assert key == f"{a.options.finals}default/{uid}/scan.bin"
        assert await a.place_final(uid, f"default/{uid}/scan.bin", len(blob)) == key
        got = await raw(a, "get_object", Key=key)
        assert await got["Body"].read() == blob
        await a.put_output(f"default/{uid}/thumbs/t.jpg", b"jpeg!", "image/jpeg")
        assert await a.read_output(f"default/{uid}/thumbs/t.jpg") == b"jpeg!"
        assert await a.read_output(f"default/{uid}/thumbs/none.jpg") is None
