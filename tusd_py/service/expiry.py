"""The sweeper: unfinished uploads past Upload-Expires lose their bytes, keep a tombstone."""

from __future__ import annotations

import logging
import math
import time

import anyio

from storage import (
    Backend,
    InvalidTransition,
    LockTimeout,
    StorageError,
    UploadInfo,
    UploadState,
)

from ..config import Settings
from ..ops import logs


async def _expire(backend: Backend, info: UploadInfo) -> bool:
    """Expire one listed upload; False when it was busy or no longer expired."""
    try:
        async with backend.locker.hold(info.id, on_release_requested=lambda: None,
                                       timeout=1.0):
            # Read again under the lock: a PATCH that ran since the listing moved
            # Upload-Expires on (or finished the upload) and keeps its bytes.
            current = await backend.state.get(info.id)
            if (current.state is not UploadState.UPLOADING or current.expires_at is None
                    or current.expires_at > time.time()):
                return False
            await backend.data.delete(info.id)
            await backend.state.transition(
                info.id, UploadState.EXPIRED, expect=frozenset({UploadState.UPLOADING}))
    except (LockTimeout, InvalidTransition):
        return False  # busy or finished meanwhile: not expired after all
    except StorageError as exc:
        logs.event("upload.expire_failed", info.id, level=logging.ERROR, error=str(exc))
        return False
    logs.event("upload.expired", info.id, offset=info.offset, size=info.size)
    return True


async def sweep_once(backend: Backend, settings: Settings, budget: float = math.inf) -> int:
    """Expire what is due, batch after batch (a store lists a bounded batch at a time), for
    at most `budget` seconds; uploads that stayed busy are left for the next sweep."""
    now = time.time()
    deadline = time.monotonic() + budget
    removed = 0
    seen: set[str] = set()
    while time.monotonic() < deadline:
        batch = [info for info in await backend.state.expired(now) if info.id not in seen]
        if not batch:
            break
        for info in batch:
            seen.add(info.id)
            removed += await _expire(backend, info)
    # Tombstones answer 410 for a while, then are forgotten.
    await backend.state.purge_tombstones(now - settings.tombstone_seconds)
    return removed


async def run_sweeper(backend: Backend, settings: Settings) -> None:
    interval = min(settings.sweep_interval, max(settings.expiration / 2, 0.5))
    while True:
        await anyio.sleep(interval)
        try:
            # Several instances share one store: one elected sweeper at a time.
            if await backend.locker.leader("sweeper", ttl=interval * 3):
                # Within the leadership's life: thousands of abandoned uploads an interval
                # are swept, not a store's one listing of 200.
                await sweep_once(backend, settings, budget=interval * 2)
        except Exception:
            logging.getLogger(logs.LOGGER_NAME).exception("sweeper.crashed")
