"""S3-compatible object storage for upload bytes (and, without Redis, upload records).

With Redis: Redis keeps state, locks and completion jobs and a bucket keeps the
bytes, so instances on different hosts share nothing else. Without Redis: the
records are `.info` objects beside the data, for a single instance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..base import Backend
from ..memory_locker import MemoryLocker
from ..outbox_queue import OutboxQueue
from .client import MiB, S3Connection, S3Options, ensure_bucket
from .data import S3DataStore
from .orphans import ORPHAN_GRACE, ORPHAN_INTERVAL, orphan_sweeper
from .state import S3StateStore

__all__ = ["MiB", "S3Connection", "S3DataStore", "S3Options", "S3StateStore",
           "ensure_bucket", "orphan_sweeper", "s3_backend"]


def s3_backend(options: S3Options, upload_dir: Path, *, redis_url: str | None = None,
               lease_seconds: float = 10.0, reclaim_idle_seconds: float = 300.0,
               tombstone_seconds: float = 7 * 86400,
               orphan_interval: float = ORPHAN_INTERVAL,
               orphan_grace: float = ORPHAN_GRACE) -> Backend:
    """S3 data; Redis state/locks/queue with redis_url, else `.info` objects (one instance)."""
    conn = S3Connection(options)
    data = S3DataStore(conn, upload_dir / "s3-spool")
    if redis_url:
        from ..redis import redis_backend

        base = redis_backend(redis_url, upload_dir, lease_seconds=lease_seconds,
                             reclaim_idle_seconds=reclaim_idle_seconds,
                             tombstone_seconds=tombstone_seconds, data=data)
    else:
        base = Backend(data=data, state=S3StateStore(conn), locker=MemoryLocker(),
                       queue=OutboxQueue())
    close_base = base.aclose

    async def aclose() -> None:
        try:
            await close_base()
        finally:
            await conn.aclose()
            data.close()

    sweeper = orphan_sweeper(data, base.state, base.locker, interval=orphan_interval,
                             grace=orphan_grace)
    return dataclasses.replace(base, services=(*base.services, data.run, sweeper),
                               aclose=aclose)
