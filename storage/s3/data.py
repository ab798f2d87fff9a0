"""S3DataStore: each upload is one multipart upload on key `<prefix><id>`.

Objects per upload:

- `<prefix><id>`       the multipart upload while uploading, the whole object once finished;
- `<prefix><id>.part`  the manifest of confirmed parts plus the tail (see manifest.py),
                       written by every sync() and deleted by finish().

Bytes written to an upload go to a local spool file. When the spool holds a
preferred part (`part_size`) it is uploaded in the background while the body
keeps arriving (at most `max_concurrent_part_uploads` per upload; a writer
waits beyond that, so the spool on disk stays bounded too). sync() waits for
those parts, uploads the rest as a part when it is at least `min_part_size`,
and stores what is left as the tail of the `.part` object. Nothing counts as
durable before S3 confirmed it, and the state store's committed offset stays
the authority on what is an upload's content.

Each instance keeps a local view of the uploads it writes (parts, spool, the
ETag of the `.part` object it last wrote or read). truncate(), called at the
start of every PATCH, checks that ETag with a conditional GET: another
instance that wrote meanwhile changed it, and the view is rebuilt from S3.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import shutil
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from botocore.exceptions import ClientError

from ..base import StateStore, StorageError, UploadNotFound
from ..ids import is_valid_upload_id
from .client import (
    MAX_COPY,
    MAX_PARTS,
    S3Connection,
    content_md5,
    error_code,
    is_missing,
    md5_of,
)
from .manifest import MAX_HEADER, CorruptManifest, Manifest, parse_header
from .spool import COPY_CHUNK, Segment, Spool

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
IDLE_SECONDS = 600.0  # a local view unused this long is dropped (S3 has what matters)
EVICT_EVERY = 60.0
FINISHED_CACHE = 10_000


@dataclass(eq=False)
class _Part:
    number: int
    start: int
    size: int
    md5: bytes
    segment: Segment | None  # the local copy, kept until a manifest lists the part
    etag: str | None = None  # set once S3 confirmed the part
    synced: bool = False  # listed in the `.part` manifest S3 holds
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None  # of its background upload, if one runs

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def uploading(self) -> bool:
        return self.scope is not None and not self.done.is_set()


@dataclass(eq=False)
class _Upload:
    id: str
    seg: Segment  # bytes after the last part: the tail
    parts: list[_Part] = field(default_factory=list)
    mpu: str | None = None
    manifest_etag: str | None = None  # of the `.part` object this view matches
    pos: int = 0  # the next write offset
    dirty: bool = False  # written or cut since the last manifest
    touched: float = field(default_factory=time.monotonic)
    mpu_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def seg_start(self) -> int:
        return self.parts[-1].end if self.parts else 0

    @property
    def local_end(self) -> int:
        return self.seg_start + self.seg.size


class S3DataStore:
    def __init__(self, conn: S3Connection, spool_dir: Path, *, io_threads: int = 8) -> None:
        self.conn = conn
        self.options = conn.options
        self.bucket = conn.options.bucket
        self.spool = Spool(spool_dir)
        self._uploads: dict[str, _Upload] = {}
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary())
        self._finished: OrderedDict[str, int] = OrderedDict()  # id -> size of the object
        self._limiter = anyio.CapacityLimiter(io_threads)
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------------ keys, locks

    def key(self, upload_id: str) -> str:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return self.options.prefix + upload_id

    def part_key(self, upload_id: str) -> str:
        return self.key(upload_id) + ".part"

    def _lock(self, upload_id: str) -> anyio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = anyio.Lock()
        return lock

    async def run(self) -> None:
        """Service: owns the background part uploads and drops idle local views."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    await anyio.sleep(EVICT_EVERY)
                    self._evict_idle()
            finally:
                self._tg = None

    def _evict_idle(self) -> None:
        now = time.monotonic()
        for upload_id, up in list(self._uploads.items()):
            lock = self._locks.get(upload_id)
            busy = (lock is not None and lock.locked()) or any(p.uploading for p in up.parts)
            if not busy and now - up.touched > IDLE_SECONDS:
                self._forget(up)

    def _forget(self, up: _Upload) -> None:
        for part in up.parts:
            if part.segment is not None:
                part.segment.remove()
        up.seg.remove()
        if self._uploads.get(up.id) is up:
            del self._uploads[up.id]

    async def _discard(self, up: _Upload) -> None:
        """Stop the view's part uploads and remove it with its spool files."""
        running = [p for p in up.parts if p.uploading]
        for part in running:
            assert part.scope is not None
            part.scope.cancel()
        for part in running:
            await part.done.wait()
        self._forget(up)

    def _remember_finished(self, upload_id: str, size: int) -> None:
        self._finished[upload_id] = size
        self._finished.move_to_end(upload_id)
        while len(self._finished) > FINISHED_CACHE:
            self._finished.popitem(last=False)

    # ------------------------------------------------------------------ S3 requests

    async def _object_size(self, key: str) -> int:
        async def head(c: S3Client) -> Any:
            return await c.head_object(Bucket=self.bucket, Key=key)

        try:
            return int((await self.conn.call(head))["ContentLength"])
        except ClientError as exc:
            if is_missing(exc):
                raise UploadNotFound(key) from None
            raise

    async def _delete_key(self, key: str) -> None:
        # Single DeleteObject calls: DeleteObjects needs Content-MD5 on some servers and a
        # flexible checksum on others, and an upload has two keys at most.
        async def delete(c: S3Client) -> Any:
            return await c.delete_object(Bucket=self.bucket, Key=key)

        try:
            await self.conn.call(delete)
        except ClientError as exc:
            if not is_missing(exc):
                raise

    async def _abort(self, key: str, mpu: str) -> None:
        async def abort(c: S3Client) -> Any:
            return await c.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=mpu)

        try:
            await self.conn.call(abort)
        except ClientError as exc:
            if not is_missing(exc):
                raise

    async def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """(key, UploadId, initiated) of every multipart upload under prefix."""
        out: list[tuple[str, str, datetime]] = []
        marker: dict[str, str] = {}
        while True:
            async def page(c: S3Client, marker: dict[str, str] = marker) -> Any:
                return await c.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix,
                                                      **marker)  # type: ignore[arg-type]

            resp = await self.conn.call(page)
            for u in resp.get("Uploads", []):
                initiated = u.get("Initiated") or datetime.now(UTC)
                out.append((u["Key"], u["UploadId"], initiated))
            if not resp.get("IsTruncated"):
                return out
            marker = {"KeyMarker": resp.get("NextKeyMarker", ""),
                      "UploadIdMarker": resp.get("NextUploadIdMarker", "")}

    async def _get_manifest(
        self, upload_id: str, *, if_none_match: str | None = None, with_tail: bool = True,
    ) -> tuple[Manifest, str, Segment | None] | None:
        """The `.part` object: (manifest, its ETag, the tail in a new spool file).

        None when it still has ETag `if_none_match`; UploadNotFound when there is none.
        """
        key = self.part_key(upload_id)
        extra: dict[str, str] = {"IfNoneMatch": if_none_match} if if_none_match else {}

        async def get(c: S3Client) -> Any:
            return await c.get_object(Bucket=self.bucket, Key=key, **extra)  # type: ignore[arg-type]

        try:
            resp = await self.conn.call(get)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304 or error_code(exc) in ("304", "NotModified"):
                return None
            if is_missing(exc):
                raise UploadNotFound(upload_id) from None
            raise
        body = resp["Body"]
        seg: Segment | None = None
        try:
            head = bytearray()
            rest = b""
            while True:
                chunk = await body.read(COPY_CHUNK)
                if not chunk:
                    raise StorageError(f"{key}: manifest without end of line")
                newline = chunk.find(b"\n")
                if newline >= 0:
                    head += chunk[:newline]
                    rest = chunk[newline + 1:]
                    break
                head += chunk
                if len(head) > MAX_HEADER:
                    raise StorageError(f"{key}: manifest longer than {MAX_HEADER} bytes")
            manifest = parse_header(bytes(head))
            if with_tail:
                seg = self.spool.segment(upload_id)
                while rest:
                    await seg.append([memoryview(rest)], self._limiter)
                    rest = await body.read(COPY_CHUNK)
                if seg.size != manifest.tail:
                    raise StorageError(f"{key}: tail of {seg.size} bytes, manifest says "
                                       f"{manifest.tail}")
        except CorruptManifest as exc:
            if seg is not None:
                seg.remove()
            raise StorageError(f"{key}: {exc}") from exc
        except BaseException:
            if seg is not None:
                seg.remove()
            raise
        finally:
            body.close()
        return manifest, str(resp["ETag"]), seg

    async def _put_manifest(self, up: _Upload, manifest: Manifest) -> str:
        """Manifest line + tail bytes in one PUT; returns the new ETag."""
        header = manifest.header()
        tmp = self.spool.temp_path(up.id)
        seg = up.seg

        def build() -> tuple[int, bytes]:
            h = hashlib.md5(usedforsecurity=False)
            with tmp.open("wb") as out, seg.path.open("rb") as inp:
                out.write(header)
                h.update(header)
                left = seg.size
                while left > 0:
                    chunk = inp.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise StorageError(f"spool file of {up.id} is short")
                    out.write(chunk)
                    h.update(chunk)
                    left -= len(chunk)
            return len(header) + seg.size, h.digest()

        try:
            length, digest = await anyio.to_thread.run_sync(build, limiter=self._limiter)
            key = self.part_key(up.id)
            with tmp.open("rb") as body:
                async def put(c: S3Client) -> Any:
                    return await c.put_object(Bucket=self.bucket, Key=key, Body=body,
                                              ContentLength=length,
                                              ContentMD5=content_md5(digest))

                resp = await self.conn.call(put)
            return str(resp["ETag"])
        finally:
            tmp.unlink(missing_ok=True)

    async def _ensure_mpu(self, up: _Upload) -> str:
        async with up.mpu_lock:
            if up.mpu is None:
                key = self.key(up.id)

                async def create(c: S3Client) -> Any:
                    return await c.create_multipart_upload(Bucket=self.bucket, Key=key)

                up.mpu = str((await self.conn.call(create))["UploadId"])
            return up.mpu

    async def _upload_part(self, up: _Upload, part: _Part) -> None:
        mpu = await self._ensure_mpu(up)
        assert part.segment is not None
        key = self.key(up.id)
        with part.segment.path.open("rb") as body:
            async def put(c: S3Client) -> Any:
                return await c.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=mpu, PartNumber=part.number,
                    Body=body, ContentLength=part.size, ContentMD5=content_md5(part.md5))

            resp = await self.conn.call(put)
        part.etag = str(resp["ETag"])

    async def _run_part(self, up: _Upload, part: _Part) -> None:
        try:
            with part.scope or anyio.CancelScope():
                await self._upload_part(up, part)
        except Exception as exc:
            # sync() retries it in the foreground and reports a lasting failure.
            log.warning("s3: part %d of %s failed in the background: %s", part.number, up.id,
                        exc)
        finally:
            part.done.set()

    # ------------------------------------------------------------------ local view

    async def _refresh(self, upload_id: str) -> _Upload:
        """The local view, rebuilt from S3 unless S3 still holds the manifest it matches."""
        up = self._uploads.get(upload_id)
        etag = up.manifest_etag if up is not None else None
        got = await self._get_manifest(upload_id, if_none_match=etag)
        if got is None:
            assert up is not None
            return up
        manifest, new_etag, seg = got
        assert seg is not None
        if up is not None:
            await self._discard(up)
        up = _Upload(id=upload_id, seg=seg, mpu=manifest.mpu, manifest_etag=new_etag)
        start = 0
        for number, etag_, size in manifest.parts:
            up.parts.append(_Part(number=number, start=start, size=size, md5=b"",
                                  segment=None, etag=etag_, synced=True))
            start += size
        up.pos = up.local_end
        self._uploads[upload_id] = up
        return up

    async def _current(self, upload_id: str) -> _Upload:
        up = self._uploads.get(upload_id)
        if up is None:
            up = await self._refresh(upload_id)
        up.touched = time.monotonic()
        return up

    async def _append(self, up: _Upload, views: list[memoryview]) -> None:
        part_size = self.options.part_size
        while views:
            room = part_size - up.seg.size
            take, views = _split(views, room)
            await up.seg.append(take, self._limiter)
            up.dirty = True
            if up.seg.size >= part_size:
                await self._seal(up, background=True)

    async def _seal(self, up: _Upload, *, background: bool) -> None:
        """The spool becomes the next part; its upload starts (in the background if allowed)."""
        number = len(up.parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"upload {up.id} needs more than {MAX_PARTS} parts: "
                               "raise --s3-part-size")
        seg = up.seg
        part = _Part(number=number, start=up.seg_start, size=seg.size, md5=seg.digest(),
                     segment=seg)
        up.parts.append(part)
        up.seg = self.spool.segment(up.id)
        if background and self._tg is not None:
            part.scope = anyio.CancelScope()
            self._tg.start_soon(self._run_part, up, part)
            # Backpressure: past this many parts in flight the body waits for S3.
            while True:
                running = [p for p in up.parts if p.uploading]
                if len(running) <= self.options.max_concurrent_part_uploads:
                    break
                await running[0].done.wait()
        else:
            await self._upload_part(up, part)
            part.done.set()

    async def _drain(self, up: _Upload) -> None:
        """Every sealed part confirmed by S3 (retrying failed ones here), or an error."""
        for part in up.parts:
            if part.uploading:
                await part.done.wait()
        for part in up.parts:
            if part.etag is None:
                part.scope = None
                await self._upload_part(up, part)

    async def _sync(self, up: _Upload) -> None:
        # A rest of at least the minimum part size becomes a part now, so the tail that every
        # sync re-uploads stays small. Past half of the part limit only full parts are cut.
        # It goes up alongside the parts still in flight; _drain waits for all of them.
        threshold = (self.options.min_part_size if len(up.parts) < MAX_PARTS // 2
                     else self.options.part_size)
        if up.seg.size >= threshold:
            await self._seal(up, background=True)
        await self._drain(up)
        manifest = Manifest(mpu=up.mpu, tail=up.seg.size,
                            parts=tuple((p.number, p.etag or "", p.size) for p in up.parts))
        up.manifest_etag = await self._put_manifest(up, manifest)
        for part in up.parts:
            if not part.synced:
                part.synced = True
                if part.segment is not None:
                    part.segment.remove()
                    part.segment = None
        up.dirty = False

    async def _cut(self, up: _Upload, length: int) -> _Upload:
        if length >= up.local_end:
            if length > up.local_end:
                log.error("s3: %s should hold %d bytes, S3 has %d", up.id, length,
                          up.local_end)
            up.pos = up.local_end
            return up
        if length >= up.seg_start:
            if up.seg.size != length - up.seg_start:
                await up.seg.cut(length - up.seg_start, self._limiter)
                up.dirty = True
            up.pos = length
            return up
        k = next(i for i, p in enumerate(up.parts) if p.end > length)
        if up.parts[k].synced:
            # The cut falls inside a part that a manifest already lists: an instance crashed
            # (or was fenced) between sync() and the commit. Those bytes were written at their
            # offsets by the lock holder, and a tus client resends the same bytes for the same
            # offsets, so the parts are kept: writes below the durable end are skipped, and
            # the next sync and commit move forward from there. Only what S3 holds counts.
            log.warning("s3: %s: committed offset %d is inside stored part %d; keeping the "
                        "parts and skipping resent bytes up to %d", up.id, length,
                        up.parts[k].number, up.local_end)
            await self._discard(up)
            up = await self._refresh(up.id)
            if length >= up.seg_start:
                return await self._cut(up, length)
            up.pos = length
            return up
        # Unsynced parts: the cut one becomes the spool again, later ones are dropped. Their
        # part numbers are uploaded again later, and the manifest lists only what was synced.
        cut = up.parts[k]
        for part in up.parts[k + 1:]:
            if part.segment is not None:
                part.segment.remove()
        up.seg.remove()
        del up.parts[k:]
        assert cut.segment is not None
        if length == cut.start:
            cut.segment.remove()
            up.seg = self.spool.segment(up.id)
        else:
            up.seg = cut.segment
            await up.seg.cut(length - cut.start, self._limiter)
        up.pos = length
        up.dirty = True
        return up

    async def _assemble(self, up: _Upload) -> None:
        """CompleteMultipartUpload with the explicit part list (or one PUT without parts)."""
        key = self.key(up.id)
        await self._drain(up)
        if not up.parts:
            if up.mpu is not None:
                await self._abort(key, up.mpu)
            seg = up.seg
            with seg.path.open("rb") as body:
                async def put(c: S3Client) -> Any:
                    return await c.put_object(Bucket=self.bucket, Key=key, Body=body,
                                              ContentLength=seg.size,
                                              ContentMD5=content_md5(seg.digest()))

                await self.conn.call(put)
            return
        if up.seg.size:
            await self._seal(up, background=False)
        mpu = up.mpu
        assert mpu is not None
        listed = [{"PartNumber": p.number, "ETag": p.etag or ""} for p in up.parts]

        async def complete(c: S3Client) -> Any:
            return await c.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=mpu,
                MultipartUpload={"Parts": listed})  # type: ignore[typeddict-item]

        await self.conn.call(complete)

    # ------------------------------------------------------------------ DataStore

    async def create(self, upload_id: str) -> None:
        async with self._lock(upload_id):
            up = _Upload(id=upload_id, seg=self.spool.segment(upload_id))
            self._uploads[upload_id] = up
            try:
                up.manifest_etag = await self._put_manifest(up, Manifest())
            except BaseException:
                self._forget(up)
                raise

    async def write(self, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
        async with self._lock(upload_id):
            up = await self._current(upload_id)
            if offset != up.pos:
                raise StorageError(f"write to {upload_id} at {offset}, expected {up.pos}")
            views = [memoryview(c) for c in chunks if c]
            total = sum(len(v) for v in views)
            skip = min(up.local_end - up.pos, total)  # > 0 only after the cut described in _cut
            up.pos += total
            if skip > 0:
                _, views = _split(views, skip)
            await self._append(up, views)
            return total

    async def sync(self, upload_id: str) -> None:
        async with self._lock(upload_id):
            up = self._uploads.get(upload_id)
            if up is not None and up.dirty:
                await self._sync(up)

    async def truncate(self, upload_id: str, length: int) -> None:
        async with self._lock(upload_id):
            old = self._uploads.get(upload_id)
            if old is not None:
                # Parts still in flight are not synced: stop them (those below the cut are
                # uploaded again by the next sync).
                for part in old.parts:
                    if part.uploading:
                        assert part.scope is not None
                        part.scope.cancel()
                for part in old.parts:
                    if part.uploading:
                        await part.done.wait()
            up = await self._refresh(upload_id)
            await self._cut(up, length)

    async def size(self, upload_id: str) -> int:
        async with self._lock(upload_id):
            up = self._uploads.get(upload_id)
            if up is not None:
                return up.pos
            if upload_id in self._finished:
                return self._finished[upload_id]
            try:
                got = await self._get_manifest(upload_id, with_tail=False)
                assert got is not None
                return got[0].durable
            except UploadNotFound:
                return await self._object_size(self.key(upload_id))

    async def finish(self, upload_id: str, size: int) -> None:
        await self._finish(upload_id, size)

    async def _finish(self, upload_id: str, expected: int | None) -> int:
        """Assemble the object from the parts and the tail; idempotent. Returns its size."""
        async with self._lock(upload_id):
            key = self.key(upload_id)
            if upload_id in self._finished:
                size = self._finished[upload_id]
                if expected is not None and size != expected:
                    raise StorageError(f"{key} holds {size} bytes, expected {expected}")
                return size
            try:
                up = await self._refresh(upload_id)
            except UploadNotFound:
                # Finished before (the `.part` object goes last), or never existed.
                size = await self._object_size(key)
                if expected is not None and size != expected:
                    raise StorageError(f"{key} holds {size} bytes, expected {expected}") from None
                self._remember_finished(upload_id, size)
                return size
            if up.dirty:
                await self._sync(up)
            total = up.local_end
            if expected is not None and total != expected:
                raise StorageError(f"S3 holds {total} bytes of {upload_id}, expected {expected}")
            try:
                await self._assemble(up)
            except ClientError as exc:
                # A crash after CompleteMultipartUpload left the `.part` object behind: the
                # upload id is gone now, and the object is there.
                if not is_missing(exc):
                    raise
                try:
                    size = await self._object_size(key)
                except UploadNotFound:
                    raise StorageError(f"{key}: {exc}") from exc
                if size != total:
                    raise StorageError(f"{key}: {exc}") from exc
            await self._delete_key(self.part_key(upload_id))
            await self._discard(up)
            self._remember_finished(upload_id, total)
            log.info("s3: assembled %s (%d bytes, %d parts)", key, total, len(up.parts))
            return total

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            return
        key = self.key(upload_id)

        async def get(c: S3Client) -> Any:
            return await c.get_object(Bucket=self.bucket, Key=key,
                                      Range=f"bytes={start}-{end - 1}")

        try:
            resp = await self.conn.call(get)
        except ClientError as exc:
            if is_missing(exc):
                raise UploadNotFound(upload_id) from None
            raise
        body = resp["Body"]
        try:
            pending = bytearray()
            got = 0
            while got < end - start:
                chunk = await body.read(min(READ_CHUNK, end - start - got))
                if not chunk:
                    raise UploadNotFound(f"{upload_id} is shorter than {end}")
                got += len(chunk)
                pending += chunk
                if len(pending) >= READ_CHUNK // 4:
                    yield bytes(pending)
                    pending.clear()
            if pending:
                yield bytes(pending)
        finally:
            body.close()

    async def concat(self, upload_id: str, sources: Sequence[str]) -> int:
        sizes = [await self._finish(source, None) for source in sources]
        key = self.key(upload_id)
        async with self._lock(upload_id):
            old = self._uploads.get(upload_id)
            if old is not None:
                await self._discard(old)
            self._finished.pop(upload_id, None)
            pairs = [(s, n) for s, n in zip(sources, sizes, strict=True) if n > 0]
            if pairs and self._copyable([n for _, n in pairs]):
                await self._copy_parts(key, pairs)
            else:
                await self._stream_concat(upload_id, pairs)
            await self._delete_key(self.part_key(upload_id))
            total = sum(sizes)
            self._remember_finished(upload_id, total)
            return total

    def _copyable(self, sizes: list[int]) -> bool:
        """Can S3 join these objects by UploadPartCopy (every part but the last big enough)?"""
        head = sizes[:-1]
        if any(n < self.options.min_part_size for n in head):
            return False
        if self.options.equal_parts:
            return len(set(head)) <= 1 and all(n <= MAX_COPY for n in sizes) and (
                not head or sizes[-1] <= head[0])
        return True

    async def _copy_parts(self, key: str, sources: list[tuple[str, int]]) -> None:
        """Server-side: no byte of the sources passes through this process."""
        async def create(c: S3Client) -> Any:
            return await c.create_multipart_upload(Bucket=self.bucket, Key=key)

        mpu = str((await self.conn.call(create))["UploadId"])
        listed: list[dict[str, Any]] = []
        try:
            for source, size in sources:
                pieces = math.ceil(size / MAX_COPY)
                bounds = [size * i // pieces for i in range(pieces + 1)]
                for a, b in itertools.pairwise(bounds):
                    number = len(listed) + 1
                    extra = {} if (a, b) == (0, size) else {"CopySourceRange":
                                                            f"bytes={a}-{b - 1}"}
                    src = {"Bucket": self.bucket, "Key": self.key(source)}

                    async def copy(c: S3Client, number: int = number,
                                   extra: dict[str, str] = extra,
                                   src: dict[str, str] = src) -> Any:
                        return await c.upload_part_copy(
                            Bucket=self.bucket, Key=key, UploadId=mpu, PartNumber=number,
                            CopySource=src, **extra)  # type: ignore[arg-type]

                    resp = await self.conn.call(copy)
                    listed.append({"PartNumber": number,
                                   "ETag": resp["CopyPartResult"]["ETag"]})

            async def complete(c: S3Client) -> Any:
                return await c.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=mpu,
                    MultipartUpload={"Parts": listed})  # type: ignore[typeddict-item]

            await self.conn.call(complete)
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self._abort(key, mpu)
                except Exception as exc:
                    log.warning("s3: could not abort %s (%s): %s", key, mpu, exc)
            raise

    async def _stream_concat(self, upload_id: str, sources: list[tuple[str, int]]) -> None:
        """Sources too small to be parts: their bytes pass through the spool."""
        up = _Upload(id=upload_id, seg=self.spool.segment(upload_id))
        self._uploads[upload_id] = up
        try:
            for source, size in sources:
                async for chunk in self.read(source, 0, size):
                    await self._append(up, [memoryview(chunk)])
                    up.pos += len(chunk)
            await self._assemble(up)
        finally:
            await self._discard(up)

    async def delete(self, upload_id: str) -> None:
        key = self.key(upload_id)
        async with self._lock(upload_id):
            up = self._uploads.get(upload_id)
            mpus: set[str] = set()
            if up is not None:
                if up.mpu is not None:
                    mpus.add(up.mpu)
                await self._discard(up)
            self._finished.pop(upload_id, None)
            try:
                got = await self._get_manifest(upload_id, with_tail=False)
                assert got is not None
                if got[0].mpu is not None:
                    mpus.add(got[0].mpu)
            except UploadNotFound:
                pass
            # Also those created for parts that were never synced.
            mpus.update(m for k, m, _ in await self.list_multipart_uploads(key) if k == key)
            for mpu in mpus:
                await self._abort(key, mpu)
            await self._delete_key(self.part_key(upload_id))
            await self._delete_key(key)

    async def sweep_orphans(self, state: StateStore, *, older_than: float) -> int:
        """Abort multipart uploads that no live upload uses; returns how many.

        An upload's multipart upload is created with its first part and listed in its
        manifest by the next sync, seconds later: one older than `older_than` that no
        manifest lists was left by a crash, a cut, or an upload whose record is gone.
        """
        prefix = self.options.prefix
        now = datetime.now(UTC)
        aborted = 0
        for key, mpu, initiated in await self.list_multipart_uploads(prefix):
            upload_id = key[len(prefix):]
            if not is_valid_upload_id(upload_id):
                continue  # not an upload's key (a final object's multipart copy, say)
            if (now - initiated).total_seconds() < older_than:
                continue
            try:
                live = not (await state.get(upload_id)).state.gone
            except UploadNotFound:
                live = False
            if live:
                local = self._uploads.get(upload_id)
                if local is not None and local.mpu == mpu:
                    continue
                try:
                    got = await self._get_manifest(upload_id, with_tail=False)
                except UploadNotFound:
                    got = None
                if got is not None and got[0].mpu == mpu:
                    continue
            else:
                await self._delete_key(self.part_key(upload_id))
            await self._abort(key, mpu)
            aborted += 1
            log.info("s3: aborted orphan multipart upload %s of %s", mpu, key)
        return aborted

    # ------------------------------------------------------------------ final objects

    async def place_final(self, upload_id: str, relative: str, size: int) -> str:
        """Server-side copy of a finished upload to `<final prefix><relative>`; idempotent."""
        target = self.options.finals + relative
        try:
            if await self._object_size(target) == size:
                return target
        except UploadNotFound:
            pass
        if size == 0 or size > MAX_COPY:
            if size == 0:
                await self.put_output(relative, b"")
            else:
                await self._copy_parts(target, [(upload_id, size)])
            return target
        src = {"Bucket": self.bucket, "Key": self.key(upload_id)}

        async def copy(c: S3Client) -> Any:
            return await c.copy_object(Bucket=self.bucket, Key=target,
                                       CopySource=src)  # type: ignore[arg-type]

        await self.conn.call(copy)
        return target

    async def put_output(self, relative: str, content: bytes | Path,
                         content_type: str = "application/octet-stream") -> str:
        """Store a processing output (thumbnail, upload.json) under the final prefix."""
        target = self.options.finals + relative
        if isinstance(content, bytes):
            data = content
        else:
            data = await anyio.to_thread.run_sync(content.read_bytes)

        async def put(c: S3Client) -> Any:
            return await c.put_object(Bucket=self.bucket, Key=target, Body=data,
                                      ContentType=content_type,
                                      ContentMD5=content_md5(md5_of(data)))

        await self.conn.call(put)
        return target

    async def read_output(self, relative: str) -> bytes | None:
        target = self.options.finals + relative
        if ".." in relative.split("/"):
            return None

        async def get(c: S3Client) -> Any:
            return await c.get_object(Bucket=self.bucket, Key=target)

        try:
            resp = await self.conn.call(get)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        body = resp["Body"]
        try:
            return bytes(await body.read())
        finally:
            body.close()

    async def delete_outputs(self, relative_dir: str) -> int:
        prefix = self.options.finals + relative_dir.strip("/") + "/"
        if ".." in prefix.split("/"):
            return 0
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            async def page(c: S3Client, token: dict[str, str] = token) -> Any:
                return await c.list_objects_v2(Bucket=self.bucket, Prefix=prefix,
                                               **token)  # type: ignore[arg-type]

            resp = await self.conn.call(page)
            keys += [obj["Key"] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            token = {"ContinuationToken": resp["NextContinuationToken"]}
        for key in keys:
            await self._delete_key(key)  # one by one: no DeleteObjects (Content-MD5 quirks)
        return len(keys)

    def close(self) -> None:
        shutil.rmtree(self.spool.dir, ignore_errors=True)


def _split(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first n bytes of views, and the rest."""
    head: list[memoryview] = []
    for i, view in enumerate(views):
        if n <= 0:
            return head, views[i:]
        if len(view) <= n:
            head.append(view)
            n -= len(view)
        else:
            head.append(view[:n])
            return head, [view[n:], *views[i + 1:]]
    return head, []
