"""In-process upload locks with release requests (tusd's memorylocker, ported)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from .base import Lease, LockTimeout


@dataclass
class _Holder:
    lease: Lease
    on_release_requested: Callable[[], None]
    released: anyio.Event = field(default_factory=anyio.Event)


class MemoryLocker:
    """One process, many requests: a newer request asks the holder to let go.

    A PATCH whose client vanished without a FIN would otherwise keep the lock
    until the network timeout; here the next HEAD/PATCH/DELETE calls the
    holder's release callback (which cancels its body pump, and the pump
    commits what it has) and is served as soon as the holder exits.
    """

    def __init__(self) -> None:
        self._holders: dict[str, _Holder] = {}
        # Epochs must keep growing across restarts: records keep the highest epoch that
        # committed, and a lower one is fenced. Microseconds since 1970 only grow, in the same
        # unit as FileLocker's epochs (switching to --workers N must not fence uploads).
        self._epochs = itertools.count(time.time_ns() // 1000)

    async def leader(self, name: str, ttl: float) -> bool:
        return True  # one process: it is always the leader

    async def _acquire(
        self, upload_id: str, on_release_requested: Callable[[], None], timeout: float,
    ) -> _Holder:
        with anyio.move_on_after(timeout):
            while (holder := self._holders.get(upload_id)) is not None:
                holder.on_release_requested()
                await holder.released.wait()
            # No await between the check and the claim: atomic on the event loop.
            mine = _Holder(Lease(upload_id, next(self._epochs)), on_release_requested)
            self._holders[upload_id] = mine
            return mine
        raise LockTimeout(upload_id)

    async def confirm(self, lease: Lease) -> bool:
        holder = self._holders.get(lease.upload_id)
        return holder is not None and holder.lease is lease and not lease.lost.is_set()

    @asynccontextmanager
    async def hold(
        self, upload_id: str, *, on_release_requested: Callable[[], None], timeout: float,
    ) -> AsyncIterator[Lease]:
        mine = await self._acquire(upload_id, on_release_requested, timeout)
        try:
            yield mine.lease
        finally:
            del self._holders[upload_id]
            mine.released.set()
