"""S3StateStore: upload records as `<prefix><id>.info` JSON objects beside the data.

For one instance without Redis (like tusd's s3store `.info` objects). The process
owns the prefix, so every record it wrote or read is kept in memory; the first
scan lists the prefix once and from then on the memory copy is complete, which
keeps scans (expiry, concatenation, /api/uploads) from listing the bucket again.
Read-modify-write cycles are serialised per upload by an in-process lock; one
PUT replaces a record whole, so a crash leaves the old or the new one.
"""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import ClientError

from ..base import (
    Fenced,
    InvalidTransition,
    OffsetMismatch,
    StorageError,
    UploadInfo,
    UploadNotFound,
    UploadState,
)
from ..file_state import info_from_json, info_to_json
from ..ids import is_valid_upload_id
from .client import S3Connection, content_md5, is_missing, md5_of

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

SUFFIX = ".info"
_GONE = frozenset({UploadState.TERMINATED, UploadState.EXPIRED})


class S3StateStore:
    def __init__(self, conn: S3Connection, *, fetch_concurrency: int = 16) -> None:
        self.conn = conn
        self.bucket = conn.options.bucket
        self.prefix = conn.options.prefix
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary())
        self._records: dict[str, UploadInfo] = {}
        self._complete = False  # _records holds every record under the prefix
        self._fetch = anyio.CapacityLimiter(fetch_concurrency)

    def _key(self, upload_id: str) -> str:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return f"{self.prefix}{upload_id}{SUFFIX}"

    def _lock(self, upload_id: str) -> anyio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = anyio.Lock()
        return lock

    async def _load(self, upload_id: str) -> UploadInfo:
        key = self._key(upload_id)

        async def get(c: S3Client) -> Any:
            return await c.get_object(Bucket=self.bucket, Key=key)

        try:
            resp = await self.conn.call(get)
        except ClientError as exc:
            if is_missing(exc):
                raise UploadNotFound(upload_id) from None
            raise
        body = resp["Body"]
        try:
            raw = await body.read()
        finally:
            body.close()
        try:
            return info_from_json(json.loads(raw))
        except (ValueError, KeyError) as exc:
            raise StorageError(f"corrupt state object {key}: {exc}") from exc

    async def _read(self, upload_id: str) -> UploadInfo:
        self._key(upload_id)
        info = self._records.get(upload_id)
        if info is not None:
            return info
        if self._complete:
            raise UploadNotFound(upload_id)
        info = await self._load(upload_id)
        # A write that finished while we read is newer: never put the old record back.
        return self._records.setdefault(upload_id, info)

    async def _write(self, info: UploadInfo) -> None:
        key = self._key(info.id)
        payload = json.dumps(info_to_json(info), separators=(",", ":")).encode()

        async def put(c: S3Client) -> Any:
            return await c.put_object(Bucket=self.bucket, Key=key, Body=payload,
                                      ContentType="application/json",
                                      ContentMD5=content_md5(md5_of(payload)))

        try:
            await self.conn.call(put)
        except BaseException:
            # The write may or may not have landed: forget what memory says, ask S3 next time.
            self._records.pop(info.id, None)
            self._complete = False
            raise
        self._records[info.id] = info

    async def create(self, info: UploadInfo) -> None:
        async with self._lock(info.id):
            try:
                await self._read(info.id)
            except UploadNotFound:
                await self._write(info)
                return
            raise StorageError(f"upload {info.id} exists")

    async def get(self, upload_id: str) -> UploadInfo:
        return await self._read(upload_id)

    async def commit(
        self, upload_id: str, *, epoch: int, expected: int, new: int,
        expires_at: float | None = None,
    ) -> UploadInfo:
        async with self._lock(upload_id):
            info = await self._read(upload_id)
            if epoch < info.epoch:
                raise Fenced(f"epoch {epoch} < {info.epoch}")
            if info.state is not UploadState.UPLOADING:
                raise InvalidTransition(f"upload is {info.state}")
            if info.offset != expected:
                raise OffsetMismatch(info.offset)
            if info.size is not None and new > info.size:
                raise StorageError(f"offset {new} past size {info.size}")
            now = time.time()
            done = info.size is not None and new == info.size
            info = info.evolve(
                offset=new, epoch=epoch, updated_at=now,
                expires_at=None if done else (expires_at or info.expires_at),
                state=UploadState.COMPLETED if done else UploadState.UPLOADING,
                completed_at=now if done else None,
            )
            await self._write(info)
            return info

    async def declare_length(self, upload_id: str, *, epoch: int, size: int) -> UploadInfo:
        async with self._lock(upload_id):
            info = await self._read(upload_id)
            if epoch < info.epoch:
                raise Fenced(f"epoch {epoch} < {info.epoch}")
            if info.size is not None and info.size != size:
                raise InvalidTransition("length already declared")
            if size < info.offset:
                raise InvalidTransition("length below offset")
            done = info.state is UploadState.UPLOADING and info.offset == size
            now = time.time()
            info = info.evolve(
                size=size, epoch=epoch, updated_at=now,
                state=UploadState.COMPLETED if done else info.state,
                expires_at=None if done else info.expires_at,
                completed_at=now if done else info.completed_at,
            )
            await self._write(info)
            return info

    async def transition(
        self, upload_id: str, to: UploadState, *, expect: frozenset[UploadState],
        **fields: Any,
    ) -> UploadInfo:
        async with self._lock(upload_id):
            info = await self._read(upload_id)
            if info.state not in expect:
                raise InvalidTransition(f"{info.state} -> {to}")
            info = info.evolve(state=to, updated_at=time.time(), **fields)
            await self._write(info)
            return info

    async def _load_all(self) -> None:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            async def page(c: S3Client, token: dict[str, str] = token) -> Any:
                return await c.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix,
                                               **token)  # type: ignore[arg-type]

            resp = await self.conn.call(page)
            keys += [o["Key"] for o in resp.get("Contents", []) if o["Key"].endswith(SUFFIX)]
            if not resp.get("IsTruncated"):
                break
            token = {"ContinuationToken": resp["NextContinuationToken"]}

        async def fetch(upload_id: str) -> None:
            async with self._fetch:
                with contextlib.suppress(StorageError):  # UploadNotFound: deleted meanwhile
                    await self._read(upload_id)

        async with anyio.create_task_group() as tg:
            for key in keys:
                upload_id = key[len(self.prefix):-len(SUFFIX)]
                if is_valid_upload_id(upload_id):
                    tg.start_soon(fetch, upload_id)
        self._complete = True

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]:
        if not self._complete:
            await self._load_all()
        return [i for i in list(self._records.values()) if states is None or i.state in states]

    async def expired(self, now: float) -> list[UploadInfo]:
        return [
            info for info in await self.scan(frozenset({UploadState.UPLOADING}))
            if info.expires_at is not None and info.expires_at <= now
        ]

    async def purge_tombstones(self, before: float) -> int:
        old = [i for i in await self.scan(_GONE) if i.updated_at < before]
        for info in old:
            await self.purge(info.id)
        return len(old)

    async def purge(self, upload_id: str) -> None:
        key = self._key(upload_id)
        async with self._lock(upload_id):
            async def delete(c: S3Client) -> Any:
                return await c.delete_object(Bucket=self.bucket, Key=key)

            await self.conn.call(delete)
            self._records.pop(upload_id, None)
