"""The whole-object and multipart requests the S3 stores make, on one bucket.

A missing key is an answer here, not an error: None, UploadNotFound, or nothing to
do, as each request says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..base import UploadNotFound
from .client import S3Connection, content_md5, is_missing, md5_of

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class Bucket:
    def __init__(self, conn: S3Connection) -> None:
        self.conn = conn
        self.name = conn.options.bucket

    async def size(self, key: str) -> int:
        """The object's length; UploadNotFound(key) when there is none."""
        async def head(c: S3Client) -> Any:
            return await c.head_object(Bucket=self.name, Key=key)

        try:
            return int((await self.conn.call(head))["ContentLength"])
        except ClientError as exc:
            if is_missing(exc):
                raise UploadNotFound(key) from None
            raise

    async def get(self, key: str) -> bytes | None:
        """The whole object, or None when there is none."""
        async def get(c: S3Client) -> Any:
            return await c.get_object(Bucket=self.name, Key=key)

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

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        async def put(c: S3Client) -> Any:
            return await c.put_object(Bucket=self.name, Key=key, Body=data,
                                      ContentType=content_type,
                                      ContentMD5=content_md5(md5_of(data)))

        await self.conn.call(put)

    async def delete(self, key: str) -> None:
        """Delete the object if there is one."""
        # Single DeleteObject calls: DeleteObjects needs Content-MD5 on some servers and a
        # flexible checksum on others.
        async def delete(c: S3Client) -> Any:
            return await c.delete_object(Bucket=self.name, Key=key)

        try:
            await self.conn.call(delete)
        except ClientError as exc:
            if not is_missing(exc):
                raise

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            async def page(c: S3Client, token: dict[str, str] = token) -> Any:
                return await c.list_objects_v2(Bucket=self.name, Prefix=prefix,
                                               **token)  # type: ignore[arg-type]

            resp = await self.conn.call(page)
            keys += [obj["Key"] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    # ------------------------------------------------------------------ multipart uploads

    async def create_multipart_upload(self, key: str) -> str:
        """A new multipart upload on key; returns its UploadId."""
        async def create(c: S3Client) -> Any:
            return await c.create_multipart_upload(Bucket=self.name, Key=key)

        return str((await self.conn.call(create))["UploadId"])

    async def complete_multipart_upload(self, key: str, mpu: str,
                                        parts: list[dict[str, Any]]) -> None:
        """Join the listed parts ({"PartNumber", "ETag"}, in order) into the object."""
        async def complete(c: S3Client) -> Any:
            return await c.complete_multipart_upload(
                Bucket=self.name, Key=key, UploadId=mpu,
                MultipartUpload={"Parts": parts})  # type: ignore[typeddict-item]

        await self.conn.call(complete)

    async def abort(self, key: str, mpu: str) -> None:
        """Abort the multipart upload if it still exists."""
        async def abort(c: S3Client) -> Any:
            return await c.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=mpu)

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
                return await c.list_multipart_uploads(Bucket=self.name, Prefix=prefix,
                                                      **marker)  # type: ignore[arg-type]

            resp = await self.conn.call(page)
            for u in resp.get("Uploads", []):
                initiated = u.get("Initiated") or datetime.now(UTC)
                out.append((u["Key"], u["UploadId"], initiated))
            if not resp.get("IsTruncated"):
                return out
            marker = {"KeyMarker": resp.get("NextKeyMarker", ""),
                      "UploadIdMarker": resp.get("NextUploadIdMarker", "")}
