"""The Redis backend: state, fenced lease locks and the completion stream in one Redis.

Several `tusd-py serve` instances sharing one Redis and one upload volume
behave like one server.
"""

from __future__ import annotations

from pathlib import Path

from ..base import Backend, DataStore
from ..file_data import FileDataStore
from .client import RedisConnection, connect
from .locker import RedisLocker
from .queue import RedisStreamQueue
from .state import RedisStateStore

__all__ = ["RedisConnection", "RedisLocker", "RedisStateStore", "RedisStreamQueue",
           "connect", "redis_backend"]


def redis_backend(url: str, upload_dir: Path, *, lease_seconds: float = 10.0,
                  reclaim_idle_seconds: float = 300.0,
                  tombstone_seconds: float = 7 * 86400, fsync: bool = True,
                  data: DataStore | None = None) -> Backend:
    """Redis state, locks and queue; bytes in `data` (default: files under upload_dir)."""
    conn = RedisConnection(url)
    locker = RedisLocker(conn, lease_seconds=lease_seconds)
    return Backend(
        data=data or FileDataStore(upload_dir, fsync=fsync),
        state=RedisStateStore(conn, tombstone_seconds=tombstone_seconds),
        locker=locker,
        queue=RedisStreamQueue(conn, reclaim_idle_seconds=reclaim_idle_seconds),
        services=(locker.heartbeat, locker.listen),
        aclose=conn.aclose,
    )
