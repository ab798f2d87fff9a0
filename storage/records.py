"""Upload records as JSON documents, and the rules by which a record may change.

The file and S3 state stores keep each record as one document and change it by
read, check, write under their own lock; the checks and the new record come from
here, so both stores fence, complete and expire uploads alike. (The Redis store
applies the same rules inside its Lua scripts.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .base import (
    Fenced,
    InvalidTransition,
    OffsetMismatch,
    StorageError,
    UploadInfo,
    UploadState,
)

UNFINISHED = frozenset({UploadState.UPLOADING})
TOMBSTONES = frozenset({UploadState.TERMINATED, UploadState.EXPIRED})


# ------------------------------------------------------------------ format


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


def dump(info: UploadInfo) -> bytes:
    return json.dumps(info_to_json(info), separators=(",", ":")).encode()


def parse(raw: bytes, where: str) -> UploadInfo:
    """The record in `raw`; StorageError naming `where` when it is not one."""
    try:
        return info_from_json(json.loads(raw))
    except (ValueError, KeyError) as exc:
        raise StorageError(f"corrupt {where}: {exc}") from exc


# ------------------------------------------------------------------ changes


def commit(info: UploadInfo, *, epoch: int, expected: int, new: int,
           expires_at: float | None, now: float) -> UploadInfo:
    """Fenced compare-and-set of the offset; reaching the size completes the upload."""
    if epoch < info.epoch:
        raise Fenced(f"epoch {epoch} < {info.epoch}")
    if info.state is not UploadState.UPLOADING:
        raise InvalidTransition(f"upload is {info.state}")
    if info.offset != expected:
        raise OffsetMismatch(info.offset)
    if info.size is not None and new > info.size:
        raise StorageError(f"offset {new} past size {info.size}")
    done = info.size is not None and new == info.size
    return info.evolve(
        offset=new, epoch=epoch, updated_at=now,
        expires_at=None if done else (expires_at or info.expires_at),
        state=UploadState.COMPLETED if done else UploadState.UPLOADING,
        completed_at=now if done else None,
    )


def declare_length(info: UploadInfo, *, epoch: int, size: int, now: float) -> UploadInfo:
    if epoch < info.epoch:
        raise Fenced(f"epoch {epoch} < {info.epoch}")
    if info.size is not None and info.size != size:
        raise InvalidTransition("length already declared")
    if size < info.offset:
        raise InvalidTransition("length below offset")
    done = info.state is UploadState.UPLOADING and info.offset == size
    return info.evolve(
        size=size, epoch=epoch, updated_at=now,
        state=UploadState.COMPLETED if done else info.state,
        expires_at=None if done else info.expires_at,
        completed_at=now if done else info.completed_at,
    )


def transition(info: UploadInfo, to: UploadState, *, expect: frozenset[UploadState],
               now: float, **fields: Any) -> UploadInfo:
    if info.state not in expect:
        raise InvalidTransition(f"{info.state} -> {to}")
    return info.evolve(state=to, updated_at=now, **fields)


# ------------------------------------------------------------------ stores


class DocumentRecords:
    """The StateStore changes and sweeps of a store that keeps each record as one document.

    The store supplies its read-modify-write under its lock (`_update`), `scan` and
    `purge`; every change applies one of the rules above.
    """

    async def _update(self, upload_id: str,
                      change: Callable[[UploadInfo], UploadInfo]) -> UploadInfo:
        """Read, change (which may raise) and write the record, atomically."""
        raise NotImplementedError

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]:
        raise NotImplementedError

    async def purge(self, upload_id: str) -> None:
        raise NotImplementedError

    async def commit(
        self, upload_id: str, *, epoch: int, expected: int, new: int,
        expires_at: float | None = None,
    ) -> UploadInfo:
        return await self._update(upload_id, lambda info: commit(
            info, epoch=epoch, expected=expected, new=new, expires_at=expires_at,
            now=time.time()))

    async def declare_length(self, upload_id: str, *, epoch: int, size: int) -> UploadInfo:
        return await self._update(upload_id, lambda info: declare_length(
            info, epoch=epoch, size=size, now=time.time()))

    async def transition(
        self, upload_id: str, to: UploadState, *, expect: frozenset[UploadState],
        **fields: Any,
    ) -> UploadInfo:
        return await self._update(upload_id, lambda info: transition(
            info, to, expect=expect, now=time.time(), **fields))

    async def expired(self, now: float) -> list[UploadInfo]:
        """Unfinished uploads whose expires_at has passed."""
        return [
            info for info in await self.scan(UNFINISHED)
            if info.expires_at is not None and info.expires_at <= now
        ]

    async def purge_tombstones(self, before: float) -> int:
        """Purge terminated/expired records last changed before `before`; returns how many."""
        old = [i for i in await self.scan(TOMBSTONES) if i.updated_at < before]
        for info in old:
            await self.purge(info.id)
        return len(old)
