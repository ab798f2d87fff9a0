"""One aiobotocore S3 client per backend, configured for any S3-compatible server.

Credentials come from botocore's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE and ~/.aws, container and instance roles); only the endpoint, region and
bucket are ours to set.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ..base import StorageUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MiB = 1 << 20
GiB = 1 << 30
MAX_PARTS = 10_000  # AWS's limit on parts of one multipart upload
MAX_COPY = 5 * GiB  # the largest CopyObject / UploadPartCopy source range

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    endpoint: str | None = None  # None: AWS, from the region
    region: str | None = None  # None: from AWS_DEFAULT_REGION / the config file
    prefix: str = ""  # key prefix of every object this server writes
    part_size: int = 50 * MiB  # preferred part size: a full spool is uploaded in the background
    min_part_size: int = 5 * MiB  # smallest non-last part the server accepts
    max_concurrent_part_uploads: int = 4  # per upload: also bounds its spool on disk
    final_prefix: str | None = None  # where processed uploads go; default <prefix>final/

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 bucket is required")
        if self.min_part_size <= 0 or self.part_size < self.min_part_size:
            raise ValueError("need 0 < --s3-min-part-size <= --s3-part-size")
        if self.part_size > MAX_COPY:
            raise ValueError("--s3-part-size is at most 5 GiB")
        if self.max_concurrent_part_uploads < 1:
            raise ValueError("--s3-max-concurrent-part-uploads must be at least 1")

    @property
    def equal_parts(self) -> bool:
        """R2 and some others want every part but the last of one size."""
        return self.min_part_size == self.part_size

    @property
    def finals(self) -> str:
        return self.prefix + "final/" if self.final_prefix is None else self.final_prefix


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or error_code(exc) in ("NoSuchKey", "NoSuchUpload", "404", "NotFound")


def content_md5(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def md5_of(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


class S3Connection:
    """Opens the client on first use inside the running event loop; aclose() ends it."""

    def __init__(self, options: S3Options, *, max_connections: int = 64) -> None:
        self.options = options
        self._config = AioConfig(
            # Several S3-compatible servers (Swift, older MinIO and Ceph) reject or ignore
            # flexible checksums and aws-chunked bodies: send the classic headers only.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Parts are protected by Content-MD5 instead of a signed SHA-256 of the body, which
            # would make botocore read every part twice on the event loop over plain HTTP.
            s3={"payload_signing_enabled": False,
                "addressing_style": "path" if options.endpoint else "auto"},
            retries={"max_attempts": 4, "mode": "standard"},
            max_pool_connections=max_connections,
            connect_timeout=10, read_timeout=120,
        )
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None
        self._opening = anyio.Lock()

    async def client(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                stack = AsyncExitStack()
                session = get_session()
                client: S3Client = await stack.enter_async_context(session.create_client(
                    "s3", endpoint_url=self.options.endpoint,
                    region_name=self.options.region, config=self._config))
                self._client, self._stack = client, stack
            return self._client

    async def call(self, op: Callable[[S3Client], Awaitable[T]]) -> T:
        """Run one S3 request; network failures and 5xx answers become StorageUnavailable.

        4xx answers stay ClientError so callers can tell a missing key from an outage.
        """
        client = await self.client()
        try:
            return await op(client)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if int(status) >= 500:
                raise StorageUnavailable(f"S3: {exc}") from exc
            raise
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailable(f"S3: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()


async def ensure_bucket(conn: S3Connection) -> None:
    """Create the bucket when it does not exist (tests and first runs); never fails on 'exists'."""
    bucket = conn.options.bucket

    async def head(c: S3Client) -> Any:
        return await c.head_bucket(Bucket=bucket)

    try:
        await conn.call(head)
        return
    except ClientError as exc:
        if not is_missing(exc):
            raise

    async def create(c: S3Client) -> Any:
        return await c.create_bucket(Bucket=bucket)

    try:
        await conn.call(create)
    except ClientError as exc:
        if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
