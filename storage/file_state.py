"""Upload records as `<id>.info` JSON files beside the data, replaced atomically."""

from __future__ import annotations

import json
import os
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .base import (
    Fenced,
    InvalidTransition,
    OffsetMismatch,
    StorageError,
    UploadInfo,
    UploadNotFound,
    UploadState,
)
from .fsync import fsync_path
from .ids import is_valid_upload_id

CACHE_SIZE = 10_000


def info_to_json(info: UploadInfo) -> dict[str, Any]:
    return {
        "id": info.id, "size": info.size, "offset": info.offset,
        "metadata": dict(info.metadata), "state": info.state.value, "epoch": info.epoch,
        "created_at": info.created_at, "updated_at": info.updated_at,
        "expires_at": info.expires_at, "partial": info.partial, "parts": list(info.parts),
        "completed_at": info.completed_at, "attempts": info.attempts,
        "started_at": info.started_at, "finished_at": info.finished_at,
        "error": info.error, "result": info.result, "owner": info.owner,
    }


def info_from_json(raw: dict[str, Any]) -> UploadInfo:
    return UploadInfo(
        id=raw["id"], size=raw["size"], offset=raw["offset"], metadata=raw["metadata"],
        state=UploadState(raw["state"]), epoch=raw["epoch"], created_at=raw["created_at"],
        updated_at=raw["updated_at"], expires_at=raw["expires_at"], partial=raw["partial"],
        parts=tuple(raw["parts"]), completed_at=raw.get("completed_at"),
        attempts=raw["attempts"], started_at=raw.get("started_at"),
        finished_at=raw.get("finished_at"), error=raw["error"], result=raw["result"],
        owner=raw.get("owner"),
    )


class FileStateStore:
    """The embedded state store: one process owns the directory.

    Read-modify-write cycles are serialised per upload by an in-process lock;
    every change is written to a temp file, fsynced and renamed over the old one,
    so a crash leaves either the old or the new record, never a torn one.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.dir = root / "uploads"
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        # Weak values: a lock lives only while some task holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary())
        self._limiter = anyio.CapacityLimiter(4)
        # The process owns the directory, so recently written records can be served from
        # memory: saves a thread hop and a JSON parse on every commit and HEAD.
        self._cache: OrderedDict[str, UploadInfo] = OrderedDict()

    def _path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return self.dir / f"{upload_id}.info"

    def _lock(self, upload_id: str) -> anyio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = anyio.Lock()
        return lock

    def _remember(self, info: UploadInfo) -> None:
        self._cache[info.id] = info
        self._cache.move_to_end(info.id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _read(self, upload_id: str) -> UploadInfo:
        path = self._path(upload_id)
        cached = self._cache.get(upload_id)
        if cached is not None:
            return cached

        def _load() -> UploadInfo:
            try:
                return info_from_json(json.loads(path.read_bytes()))
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
            except (ValueError, KeyError) as exc:
                raise StorageError(f"corrupt state file {path}: {exc}") from exc

        info = await anyio.to_thread.run_sync(_load, limiter=self._limiter)
        self._remember(info)
        return info

    async def _write(self, info: UploadInfo, *, new: bool = False) -> None:
        path = self._path(info.id)
        payload = json.dumps(info_to_json(info), separators=(",", ":")).encode()
        self._cache.pop(info.id, None)  # a failed write must not leave a phantom record
        await anyio.to_thread.run_sync(_atomic_write, path, payload, self.fsync, new,
                                       limiter=self._limiter)
        self._remember(info)

    async def create(self, info: UploadInfo) -> None:
        async with self._lock(info.id):
            try:
                await self._write(info, new=True)
            except FileExistsError:
                raise StorageError(f"upload {info.id} exists") from None

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

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]:
        names = await anyio.to_thread.run_sync(os.listdir, self.dir)
        out: list[UploadInfo] = []
        for name in names:
            if not name.endswith(".info"):
                continue
            try:
                info = await self._read(name[: -len(".info")])
            except StorageError:
                continue
            if states is None or info.state in states:
                out.append(info)
        return out

    async def expired(self, now: float) -> list[UploadInfo]:
        return [
            info for info in await self.scan(frozenset({UploadState.UPLOADING}))
            if info.expires_at is not None and info.expires_at <= now
        ]

    async def purge_tombstones(self, before: float) -> int:
        gone = frozenset({UploadState.TERMINATED, UploadState.EXPIRED})
        old = [i for i in await self.scan(gone) if i.updated_at < before]
        for info in old:
            await self.purge(info.id)
        return len(old)

    async def purge(self, upload_id: str) -> None:
        path = self._path(upload_id)
        async with self._lock(upload_id):
            self._cache.pop(upload_id, None)
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def _atomic_write(path: Path, payload: bytes, fsync: bool = True, new: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
    try:
        os.write(fd, payload)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        # link() refuses to replace: the existence check and the creation are one step.
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
    else:
        os.replace(tmp, path)
    if fsync and new:
        # A new record exists only once the directory is synced. An update needs no such
        # sync: if a power cut loses the rename, the old record comes back, whose offset is
        # behind the bytes on disk, never ahead; the client re-sends the difference.
        fsync_path(path.parent)
