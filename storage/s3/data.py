"""S3DataStore: each upload is one multipart upload on key `<prefix><id>`.

Objects per upload:

- `<prefix><id>`       the multipart upload while uploading, the whole object once finished;
- `<prefix><id>.part`  the manifest of confirmed parts plus the tail (see manifest.py),
                       written by every sync() and deleted by finish().

Bytes written to an upload go to a local spool file and from there to S3 as parts
(parts.py), partly while the body keeps arriving. sync() waits for those parts,
uploads the rest as a part when it is at least `min_part_size`, and stores what is
left as the tail of the `.part` object. Nothing counts as durable before S3
confirmed it, and the state store's committed offset stays the authority on what
is an upload's content.

Each instance keeps a local view of the uploads it writes (view.py). truncate(),
called at the start of every PATCH, checks the ETag of the `.part` object the view
matches with a conditional GET: another instance that wrote meanwhile changed it,
and the view is rebuilt from S3.
"""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import ClientError

from ..base import StateStore, StorageError, UploadNotFound
from .client import MAX_PARTS, S3Connection, is_missing
from .copy import copy_parts, copyable
from .keys import part_key, upload_key
from .manifest import Manifest
from .objects import Bucket
from .orphans import sweep_orphans
from .outputs import FinalOutputs
from .part_object import PartObjects
from .parts import PartUploader
from .spool import Segment, Spool
from .view import Part, UploadView, split_views

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
IDLE_SECONDS = 600.0  # a local view unused this long is dropped (S3 has what matters)
EVICT_EVERY = 60.0
FINISHED_CACHE = 10_000


class S3DataStore:
    def __init__(self, conn: S3Connection, spool_dir: Path, *, io_threads: int = 8) -> None:
        self.conn = conn
        self.options = conn.options
        self.bucket = conn.options.bucket
        self.spool = Spool(spool_dir)
        self._objects = Bucket(conn)
        self._uploads: dict[str, UploadView] = {}
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary())
        self._finished: OrderedDict[str, int] = OrderedDict()  # id -> size of the object
        self._limiter = anyio.CapacityLimiter(io_threads)
        self._part_objects = PartObjects(conn, self.spool, self._limiter)
        self._parts = PartUploader(conn, self.spool, self._limiter)
        self._outputs = FinalOutputs(self._objects, self.options)

    # ------------------------------------------------------------------ keys, locks

    def key(self, upload_id: str) -> str:
        return upload_key(self.options.prefix, upload_id)

    def part_key(self, upload_id: str) -> str:
        return part_key(self.options.prefix, upload_id)

    def _lock(self, upload_id: str) -> anyio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = anyio.Lock()
        return lock

    async def run(self) -> None:
        """Service: owns the background part uploads and drops idle local views."""
        async with anyio.create_task_group() as tg:
            self._parts.tg = tg
            try:
                while True:
                    await anyio.sleep(EVICT_EVERY)
                    self._evict_idle()
            finally:
                self._parts.tg = None

    def _evict_idle(self) -> None:
        now = time.monotonic()
        for upload_id, up in list(self._uploads.items()):
            lock = self._locks.get(upload_id)
            busy = (lock is not None and lock.locked()) or any(p.uploading for p in up.parts)
            if not busy and now - up.touched > IDLE_SECONDS:
                self._forget(up)

    def _forget(self, up: UploadView) -> None:
        up.remove_spool()
        if self._uploads.get(up.id) is up:
            del self._uploads[up.id]

    async def _discard(self, up: UploadView) -> None:
        """Stop the view's part uploads and remove it with its spool files."""
        await up.stop_part_uploads()
        self._forget(up)

    def _remember_finished(self, upload_id: str, size: int) -> None:
        self._finished[upload_id] = size
        self._finished.move_to_end(upload_id)
        while len(self._finished) > FINISHED_CACHE:
            self._finished.popitem(last=False)

    async def list_multipart_uploads(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """(key, UploadId, initiated) of every multipart upload under prefix."""
        return await self._objects.list_multipart_uploads(prefix)

    async def _get_manifest(
        self, upload_id: str, *, if_none_match: str | None = None, with_tail: bool = True,
    ) -> tuple[Manifest, str, Segment | None] | None:
        return await self._part_objects.get(upload_id, if_none_match=if_none_match,
                                            with_tail=with_tail)

    # ------------------------------------------------------------------ local view

    async def _refresh(self, upload_id: str) -> UploadView:
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
        up = UploadView(id=upload_id, seg=seg, mpu=manifest.mpu, manifest_etag=new_etag)
        start = 0
        for number, etag_, size in manifest.parts:
            up.parts.append(Part(number=number, start=start, size=size, md5=b"",
                                 segment=None, etag=etag_, synced=True))
            start += size
        up.pos = up.local_end
        self._uploads[upload_id] = up
        return up

    async def _current(self, upload_id: str) -> UploadView:
        up = self._uploads.get(upload_id)
        if up is None:
            up = await self._refresh(upload_id)
        up.touched = time.monotonic()
        return up

    async def _sync(self, up: UploadView) -> None:
        # A rest of at least the minimum part size becomes a part now, so the tail that every
        # sync re-uploads stays small. Past half of the part limit only full parts are cut.
        # It goes up alongside the parts still in flight; drain waits for all of them.
        threshold = (self.options.min_part_size if len(up.parts) < MAX_PARTS // 2
                     else self.options.part_size)
        if up.seg.size >= threshold:
            await self._parts.seal(up, background=True)
        await self._parts.drain(up)
        manifest = Manifest(mpu=up.mpu, tail=up.seg.size,
                            parts=tuple((p.number, p.etag or "", p.size) for p in up.parts))
        up.manifest_etag = await self._part_objects.put(up, manifest)
        for part in up.parts:
            if not part.synced:
                part.synced = True
                if part.segment is not None:
                    part.segment.remove()
                    part.segment = None
        up.dirty = False

    async def _cut(self, up: UploadView, length: int) -> UploadView:
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

    # ------------------------------------------------------------------ DataStore

    async def create(self, upload_id: str, content: bytes = b"") -> None:
        async with self._lock(upload_id):
            up = UploadView(id=upload_id, seg=self.spool.segment(upload_id))
            self._uploads[upload_id] = up
            try:
                up.manifest_etag = await self._part_objects.put(up, Manifest())
            except BaseException:
                self._forget(up)
                raise
        if content:
            await self.write(upload_id, 0, [content])
            await self.sync(upload_id)

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
                _, views = split_views(views, skip)
            await self._parts.append(up, views)
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
                await old.stop_part_uploads()
            up = await self._refresh(upload_id)
            await self._cut(up, length)

    async def size(self, upload_id: str) -> int:
        async with self._lock(upload_id):
            up = self._uploads.get(upload_id)
            if up is not None:
                return up.pos
            if upload_id in self._finished:
                return self._finished[upload_id]
            manifest = await self._part_objects.get_manifest(upload_id)
            if manifest is not None:
                return manifest.durable
            return await self._objects.size(self.key(upload_id))

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
                size = await self._objects.size(key)
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
                await self._parts.assemble(up)
            except ClientError as exc:
                # A crash after CompleteMultipartUpload left the `.part` object behind: the
                # upload id is gone now, and the object is there.
                if not is_missing(exc):
                    raise
                try:
                    size = await self._objects.size(key)
                except UploadNotFound:
                    raise StorageError(f"{key}: {exc}") from exc
                if size != total:
                    raise StorageError(f"{key}: {exc}") from exc
            await self._objects.delete(self.part_key(upload_id))
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
            if pairs and copyable(self.options, [n for _, n in pairs]):
                await copy_parts(self._objects, key, [(self.key(s), n) for s, n in pairs])
            else:
                await self._stream_concat(upload_id, pairs)
            await self._objects.delete(self.part_key(upload_id))
            total = sum(sizes)
            self._remember_finished(upload_id, total)
            return total

    async def _stream_concat(self, upload_id: str, sources: list[tuple[str, int]]) -> None:
        """Sources too small to be parts: their bytes pass through the spool."""
        up = UploadView(id=upload_id, seg=self.spool.segment(upload_id))
        self._uploads[upload_id] = up
        try:
            for source, size in sources:
                async for chunk in self.read(source, 0, size):
                    await self._parts.append(up, [memoryview(chunk)])
                    up.pos += len(chunk)
            await self._parts.assemble(up)
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
            manifest = await self._part_objects.get_manifest(upload_id)
            if manifest is not None and manifest.mpu is not None:
                mpus.add(manifest.mpu)
            # Also those created for parts that were never synced.
            mpus.update(m for k, m, _ in await self.list_multipart_uploads(key) if k == key)
            for mpu in mpus:
                await self._objects.abort(key, mpu)
            await self._objects.delete(self.part_key(upload_id))
            await self._objects.delete(key)

    async def sweep_orphans(self, state: StateStore, *, older_than: float) -> int:
        """Abort multipart uploads that no live upload uses; returns how many."""
        def local_mpu(upload_id: str) -> str | None:
            up = self._uploads.get(upload_id)
            return up.mpu if up is not None else None

        return await sweep_orphans(self._objects, self._part_objects, state, local_mpu,
                                   older_than=older_than)

    # ------------------------------------------------------------------ final objects

    async def place_final(self, upload_id: str, relative: str, size: int) -> str:
        """Server-side copy of a finished upload to `<final prefix><relative>`; idempotent."""
        return await self._outputs.place_final(self.key(upload_id), relative, size)

    async def put_output(self, relative: str, content: bytes | Path,
                         content_type: str = "application/octet-stream") -> str:
        """Store a processing output (thumbnail, upload.json) under the final prefix."""
        return await self._outputs.put_output(relative, content, content_type)

    async def read_output(self, relative: str) -> bytes | None:
        return await self._outputs.read_output(relative)

    async def delete_outputs(self, relative_dir: str) -> int:
        return await self._outputs.delete_outputs(relative_dir)

    def close(self) -> None:
        shutil.rmtree(self.spool.dir, ignore_errors=True)
