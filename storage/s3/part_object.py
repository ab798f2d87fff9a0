"""Reading and writing an upload's `.part` object: the manifest line and the tail bytes."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError

from ..base import StorageError, UploadNotFound
from .client import S3Connection, content_md5, error_code, is_missing
from .keys import part_key
from .manifest import MAX_HEADER, CorruptManifest, Manifest, parse_header
from .spool import COPY_CHUNK, Segment, Spool
from .view import UploadView

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class PartObjects:
    def __init__(self, conn: S3Connection, spool: Spool,
                 limiter: anyio.CapacityLimiter) -> None:
        self.conn = conn
        self.bucket = conn.options.bucket
        self.prefix = conn.options.prefix
        self.spool = spool
        self._limiter = limiter

    async def get(
        self, upload_id: str, *, if_none_match: str | None = None, with_tail: bool = True,
    ) -> tuple[Manifest, str, Segment | None] | None:
        """The `.part` object: (manifest, its ETag, the tail in a new spool file).

        None when it still has ETag `if_none_match`; UploadNotFound when there is none.
        """
        key = part_key(self.prefix, upload_id)
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

    async def get_manifest(self, upload_id: str) -> Manifest | None:
        """The manifest without the tail, or None when there is no `.part` object."""
        try:
            got = await self.get(upload_id, with_tail=False)
        except UploadNotFound:
            return None
        assert got is not None
        return got[0]

    async def put(self, up: UploadView, manifest: Manifest) -> str:
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
            key = part_key(self.prefix, up.id)
            with tmp.open("rb") as body:
                async def put(c: S3Client) -> Any:
                    return await c.put_object(Bucket=self.bucket, Key=key, Body=body,
                                              ContentLength=length,
                                              ContentMD5=content_md5(digest))

                resp = await self.conn.call(put)
            return str(resp["ETag"])
        finally:
            tmp.unlink(missing_ok=True)
