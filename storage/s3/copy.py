"""Server-side joins: objects copied into a new object by UploadPartCopy."""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING, Any

import anyio

from .client import MAX_COPY, S3Options
from .objects import Bucket

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)


def copyable(options: S3Options, sizes: list[int]) -> bool:
    """Can S3 join objects of these sizes by UploadPartCopy (every part but the last big
    enough)?"""
    head = sizes[:-1]
    if any(n < options.min_part_size for n in head):
        return False
    if options.equal_parts:
        return len(set(head)) <= 1 and all(n <= MAX_COPY for n in sizes) and (
            not head or sizes[-1] <= head[0])
    return True


async def copy_parts(bucket: Bucket, key: str, sources: list[tuple[str, int]]) -> None:
    """Join the (source key, size) objects into `key`; no byte passes through this process."""
    mpu = await bucket.create_multipart_upload(key)
    listed: list[dict[str, Any]] = []
    try:
        for source, size in sources:
            pieces = math.ceil(size / MAX_COPY)
            bounds = [size * i // pieces for i in range(pieces + 1)]
            for a, b in itertools.pairwise(bounds):
                number = len(listed) + 1
                extra = {} if (a, b) == (0, size) else {"CopySourceRange":
                                                        f"bytes={a}-{b - 1}"}
                src = {"Bucket": bucket.name, "Key": source}

                async def copy(c: S3Client, number: int = number,
                               extra: dict[str, str] = extra,
                               src: dict[str, str] = src) -> Any:
                    return await c.upload_part_copy(
                        Bucket=bucket.name, Key=key, UploadId=mpu, PartNumber=number,
                        CopySource=src, **extra)  # type: ignore[arg-type]

                resp = await bucket.conn.call(copy)
                listed.append({"PartNumber": number,
                               "ETag": resp["CopyPartResult"]["ETag"]})
        await bucket.complete_multipart_upload(key, mpu, listed)
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await bucket.abort(key, mpu)
            except Exception as exc:
                log.warning("s3: could not abort %s (%s): %s", key, mpu, exc)
        raise
