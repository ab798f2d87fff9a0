"""The multipart upload behind an upload: spooled bytes become parts, parts go up to S3.

A spool that reaches the preferred part size is sealed as the next part and
uploaded in the background (at most `max_concurrent_part_uploads` per upload; a
writer waits beyond that, so the spool on disk stays bounded too). drain()
waits for those uploads and retries failed ones in the foreground; assemble()
completes the multipart upload into the object.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..base import StorageError
from .client import MAX_PARTS, S3Connection, content_md5
from .keys import upload_key
from .objects import Bucket
from .spool import Spool
from .view import Part, UploadView, split_views

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)


class PartUploader:
    def __init__(self, conn: S3Connection, spool: Spool,
                 limiter: anyio.CapacityLimiter) -> None:
        self.conn = conn
        self.options = conn.options
        self.bucket = Bucket(conn)
        self.spool = spool
        self._limiter = limiter
        self.tg: TaskGroup | None = None  # runs background part uploads while it is set

    def _key(self, up: UploadView) -> str:
        return upload_key(self.options.prefix, up.id)

    async def _ensure_mpu(self, up: UploadView) -> str:
        async with up.mpu_lock:
            if up.mpu is None:
                up.mpu = await self.bucket.create_multipart_upload(self._key(up))
            return up.mpu

    async def _upload_part(self, up: UploadView, part: Part) -> None:
        mpu = await self._ensure_mpu(up)
        assert part.segment is not None
        key = self._key(up)
        with part.segment.path.open("rb") as body:
            async def put(c: S3Client) -> Any:
                return await c.upload_part(
                    Bucket=self.bucket.name, Key=key, UploadId=mpu, PartNumber=part.number,
                    Body=body, ContentLength=part.size, ContentMD5=content_md5(part.md5))

            resp = await self.conn.call(put)
        part.etag = str(resp["ETag"])

    async def _run_part(self, up: UploadView, part: Part) -> None:
        try:
            with part.scope or anyio.CancelScope():
                await self._upload_part(up, part)
        except Exception as exc:
            # sync() retries it in the foreground and reports a lasting failure.
            log.warning("s3: part %d of %s failed in the background: %s", part.number, up.id,
                        exc)
        finally:
            part.done.set()

    async def append(self, up: UploadView, views: list[memoryview]) -> None:
        """Spool the bytes, sealing every full part on the way."""
        part_size = self.options.part_size
        while views:
            room = part_size - up.seg.size
            take, views = split_views(views, room)
            await up.seg.append(take, self._limiter)
            up.dirty = True
            if up.seg.size >= part_size:
                await self.seal(up, background=True)

    async def seal(self, up: UploadView, *, background: bool) -> None:
        """The spool becomes the next part; its upload starts (in the background if allowed)."""
        number = len(up.parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"upload {up.id} needs more than {MAX_PARTS} parts: "
                               "raise --s3-part-size")
        seg = up.seg
        part = Part(number=number, start=up.seg_start, size=seg.size, md5=seg.digest(),
                    segment=seg)
        up.parts.append(part)
        up.seg = self.spool.segment(up.id)
        if background and self.tg is not None:
            part.scope = anyio.CancelScope()
            self.tg.start_soon(self._run_part, up, part)
            # Backpressure: past this many parts in flight the body waits for S3.
            while True:
                running = [p for p in up.parts if p.uploading]
                if len(running) <= self.options.max_concurrent_part_uploads:
                    break
                await running[0].done.wait()
        else:
            await self._upload_part(up, part)
            part.done.set()

    async def drain(self, up: UploadView) -> None:
        """Every sealed part confirmed by S3 (retrying failed ones here), or an error."""
        for part in up.parts:
            if part.uploading:
                await part.done.wait()
        for part in up.parts:
            if part.etag is None:
                part.scope = None
                await self._upload_part(up, part)

    async def assemble(self, up: UploadView) -> None:
        """CompleteMultipartUpload with the explicit part list (or one PUT without parts)."""
        key = self._key(up)
        await self.drain(up)
        if not up.parts:
            if up.mpu is not None:
                await self.bucket.abort(key, up.mpu)
            seg = up.seg
            with seg.path.open("rb") as body:
                async def put(c: S3Client) -> Any:
                    return await c.put_object(Bucket=self.bucket.name, Key=key, Body=body,
                                              ContentLength=seg.size,
                                              ContentMD5=content_md5(seg.digest()))

                await self.conn.call(put)
            return
        if up.seg.size:
            await self.seal(up, background=False)
        mpu = up.mpu
        assert mpu is not None
        listed: list[dict[str, Any]] = [{"PartNumber": p.number, "ETag": p.etag or ""}
                                        for p in up.parts]
        await self.bucket.complete_multipart_upload(key, mpu, listed)
