"""Upload records in Redis: one hash per upload, changed only by Lua scripts."""

from __future__ import annotations

import json
import time
from typing import Any

from ..base import (
    Fenced,
    InvalidTransition,
    OffsetMismatch,
    StorageError,
    UploadInfo,
    UploadNotFound,
    UploadState,
)
from ..ids import is_valid_upload_id
from .client import (
    EXPIRY,
    STREAM,
    RedisConnection,
    epoch_key,
    info_key,
    unavailable_on_outage,
)

_JSON_FIELDS = ("metadata", "parts", "result")


def _encode(name: str, value: Any) -> str:
    if name in _JSON_FIELDS:
        return json.dumps(list(value) if name == "parts" else value, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, UploadState):
        return value.value
    return str(value)


def _fields(info: UploadInfo) -> list[str]:
    flat: list[str] = []
    for name in ("id", "size", "offset", "metadata", "state", "epoch", "created_at",
                 "updated_at", "expires_at", "partial", "parts", "completed_at", "attempts",
                 "started_at", "finished_at", "error", "result", "owner"):
        flat += [name, _encode(name, getattr(info, name))]
    return flat


def _decode(raw: dict[bytes, bytes]) -> UploadInfo:
    h = {k.decode(): v.decode() for k, v in raw.items()}

    def opt_float(name: str) -> float | None:
        return float(h[name]) if h.get(name) else None

    return UploadInfo(
        id=h["id"], size=int(h["size"]) if h["size"] else None, offset=int(h["offset"]),
        metadata=json.loads(h["metadata"]), state=UploadState(h["state"]),
        epoch=int(h["epoch"] or 0), created_at=float(h["created_at"]),
        updated_at=float(h["updated_at"]), expires_at=opt_float("expires_at"),
        partial=h["partial"] == "1", parts=tuple(json.loads(h["parts"])),
        completed_at=opt_float("completed_at"), attempts=int(h["attempts"] or 0),
        started_at=opt_float("started_at"), finished_at=opt_float("finished_at"),
        error=h["error"] or None,
        result=json.loads(h["result"]) if h.get("result") else None,
        owner=h.get("owner") or None,
    )


class RedisStateStore:
    def __init__(self, conn: RedisConnection, *, tombstone_seconds: float = 7 * 86400) -> None:
        self.conn = conn
        self.tombstone_ms = int(tombstone_seconds * 1000)

    @staticmethod
    def _check(upload_id: str) -> None:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)

    async def create(self, info: UploadInfo) -> None:
        self._check(info.id)
        enqueue = info.state is UploadState.COMPLETED and not info.partial
        created = await self.conn.run("create", [info_key(info.id), EXPIRY, STREAM],
                                      [info.id, _encode("expires_at", info.expires_at),
                                       "1" if enqueue else "0", *_fields(info)])
        if not created:
            raise StorageError(f"upload {info.id} exists")

    async def get(self, upload_id: str) -> UploadInfo:
        self._check(upload_id)
        async with unavailable_on_outage():
            raw = await self.conn.client.hgetall(info_key(upload_id))
        if not raw:
            raise UploadNotFound(upload_id)
        return _decode(raw)

    async def _completing(self, script: str, upload_id: str, args: list[Any]) -> UploadInfo:
        keys = [info_key(upload_id), epoch_key(upload_id), STREAM, EXPIRY]
        result = await self.conn.run(script, keys, args)
        code = int(result[0])
        detail = result[1].decode() if len(result) > 1 else ""
        if code == -404:
            raise UploadNotFound(upload_id)
        if code == -409:
            raise Fenced(f"epoch is now {detail}")
        if code == -410:
            raise InvalidTransition(f"upload is {detail}")
        if code == -412:
            raise OffsetMismatch(int(detail))
        if code == -413:
            raise StorageError("offset past size")
        if code == -400:
            raise InvalidTransition(detail)
        return await self.get(upload_id)

    async def commit(
        self, upload_id: str, *, epoch: int, expected: int, new: int,
        expires_at: float | None = None,
    ) -> UploadInfo:
        self._check(upload_id)
        return await self._completing("commit", upload_id, [
            epoch, expected, new, time.time(), _encode("expires_at", expires_at), upload_id])

    async def declare_length(self, upload_id: str, *, epoch: int, size: int) -> UploadInfo:
        self._check(upload_id)
        return await self._completing("declare", upload_id,
                                      [epoch, size, time.time(), upload_id])

    async def transition(
        self, upload_id: str, to: UploadState, *, expect: frozenset[UploadState],
        **fields: Any,
    ) -> UploadInfo:
        self._check(upload_id)
        flat: list[str] = ["updated_at", str(time.time())]
        for name, value in fields.items():
            flat += [name, _encode(name, value)]
        result = await self.conn.run(
            "transition", [info_key(upload_id), EXPIRY, epoch_key(upload_id)],
            [upload_id, to.value, ",".join(s.value for s in expect), self.tombstone_ms, *flat])
        if int(result[0]) == -404:
            raise UploadNotFound(upload_id)
        if int(result[0]) == -1:
            raise InvalidTransition(f"{result[1].decode()} -> {to}")
        return await self.get(upload_id)

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]:
        out: list[UploadInfo] = []
        async with unavailable_on_outage():
            async for key in self.conn.client.scan_iter(match="tus:{*}:info", count=500):
                raw = await self.conn.client.hgetall(key)
                if not raw:
                    continue
                info = _decode(raw)
                if states is None or info.state in states:
                    out.append(info)
        return out

    async def expired(self, now: float) -> list[UploadInfo]:
        async with unavailable_on_outage():
            ids = await self.conn.client.zrangebyscore(EXPIRY, "-inf", now, start=0, num=200)
        out = []
        for raw_id in ids:
            try:
                info = await self.get(raw_id.decode())
            except UploadNotFound:
                async with unavailable_on_outage():
                    await self.conn.client.zrem(EXPIRY, raw_id)
                continue
            if info.state is UploadState.UPLOADING:
                out.append(info)
        return out

    async def purge_tombstones(self, before: float) -> int:
        return 0  # tombstones carry a TTL in Redis (transition.lua)

    async def purge(self, upload_id: str) -> None:
        self._check(upload_id)
        async with unavailable_on_outage():
            await self.conn.client.delete(info_key(upload_id), epoch_key(upload_id))
            await self.conn.client.zrem(EXPIRY, upload_id)
