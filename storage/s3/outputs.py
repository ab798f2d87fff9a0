"""Processed uploads and their outputs (thumbnails, upload.json) under the final prefix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..base import UploadNotFound
from .client import MAX_COPY, S3Options
from .copy import copy_parts
from .objects import Bucket

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class FinalOutputs:
    def __init__(self, bucket: Bucket, options: S3Options) -> None:
        self.bucket = bucket
        self.options = options

    async def place_final(self, source: str, relative: str, size: int) -> str:
        """Server-side copy of the object `source` to `<final prefix><relative>`; idempotent."""
        target = self.options.finals + relative
        try:
            if await self.bucket.size(target) == size:
                return target
        except UploadNotFound:
            pass
        if size == 0 or size > MAX_COPY:
            if size == 0:
                await self.put_output(relative, b"")
            else:
                await copy_parts(self.bucket, target, [(source, size)])
            return target
        src = {"Bucket": self.bucket.name, "Key": source}

        async def copy(c: S3Client) -> Any:
            return await c.copy_object(Bucket=self.bucket.name, Key=target,
                                       CopySource=src)  # type: ignore[arg-type]

        await self.bucket.conn.call(copy)
        return target

    async def put_output(self, relative: str, content: bytes | Path,
                         content_type: str = "application/octet-stream") -> str:
        target = self.options.finals + relative
        if isinstance(content, bytes):
            data = content
        else:
            data = await anyio.to_thread.run_sync(content.read_bytes)
        await self.bucket.put(target, data, content_type)
        return target

    async def read_output(self, relative: str) -> bytes | None:
        target = self.options.finals + relative
        if ".." in relative.split("/"):
            return None
        return await self.bucket.get(target)

    async def delete_outputs(self, relative_dir: str) -> int:
        prefix = self.options.finals + relative_dir.strip("/") + "/"
        if ".." in prefix.split("/"):
            return 0
        keys = await self.bucket.list_keys(prefix)
        for key in keys:
            await self.bucket.delete(key)  # one by one: no DeleteObjects (Content-MD5 quirks)
        return len(keys)
