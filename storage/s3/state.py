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
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .. import records
from ..base import StorageError, UploadInfo, UploadNotFound, UploadState
from ..ids import is_valid_upload_id
from .client import S3Connection
from .objects import Bucket

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

SUFFIX = ".info"


class S3StateStore(records.DocumentRecords):
    def __init__(self, conn: S3Connection, *, fetch_concurrency: int = 16) -> None:
        self.conn = conn
        self.bucket = conn.options.bucket
        self._objects = Bucket(conn)
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
        raw = await self._objects.get(key)
        if raw is None:
            raise UploadNotFound(upload_id)
        return records.parse(raw, f"state object {key}")

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
        payload = records.dump(info)
        try:
            await self._objects.put(key, payload, "application/json")
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

    async def _update(self, upload_id: str,
                      change: Callable[[UploadInfo], UploadInfo]) -> UploadInfo:
        """Read, change (which may raise) and write the record, under its lock."""
        async with self._lock(upload_id):
            info = change(await self._read(upload_id))
            await self._write(info)
            return info

    async def _load_all(self) -> None:
        keys = [k for k in await self._objects.list_keys(self.prefix) if k.endswith(SUFFIX)]

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

    async def purge(self, upload_id: str) -> None:
        key = self._key(upload_id)
        async with self._lock(upload_id):
            async def delete(c: S3Client) -> Any:
                return await c.delete_object(Bucket=self.bucket, Key=key)

            await self.conn.call(delete)
            self._records.pop(upload_id, None)
