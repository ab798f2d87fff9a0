"""Lease locks in Redis with fencing epochs and release requests across instances."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from ..base import Lease, LockTimeout, StorageUnavailable
from .client import (
    HEARTBEAT_PREFIX,
    RELEASE_CHANNEL,
    RELEASED_CHANNEL,
    RedisConnection,
    epoch_key,
    lock_key,
    unavailable_on_outage,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # pub/sub can miss a message: waiters also poll
REQUEST_EVERY = 0.5  # re-publish a release request this often while waiting


@dataclass
class _Held:
    owner: str
    lease: Lease
    on_release_requested: Callable[[], None]


class RedisLocker:
    """SET NX PX leases renewed at a third of their life.

    Acquisition increments the upload's epoch (the fencing token the state
    store checks on every commit), so a holder that stalled past its lease
    can no longer commit. A waiter publishes a release request that the
    holder's instance turns into its on_release_requested callback. Each
    instance heart-beats; a lock held by an instance whose heartbeat is gone
    (killed) is taken over at once instead of after the lease.
    """

    def __init__(self, conn: RedisConnection, *, lease_seconds: float = 10.0,
                 heartbeat_seconds: float = 3.0) -> None:
        self.conn = conn
        self.lease_ms = int(lease_seconds * 1000)
        self.heartbeat_ms = int(heartbeat_seconds * 1000)
        self._held: dict[str, _Held] = {}
        self._unlocked: dict[str, anyio.Event] = {}
        self._heartbeat_key = HEARTBEAT_PREFIX + conn.instance

    # --- background services -----------------------------------------------------
    async def heartbeat(self) -> None:
        """Keep this instance's heartbeat alive and renew every lease it holds."""
        client = self.conn.client
        interval = min(self.heartbeat_ms, self.lease_ms) / 3000
        renew = self.conn.scripts["renew"]
        while True:
            try:
                # One round trip for the heartbeat and every lease: renewing thousands of
                # leases one by one took longer than a lease under load (they lapsed).
                held_now = list(self._held.items())
                async with (unavailable_on_outage(),
                            client.pipeline(transaction=False) as pipe):
                    pipe.set(self._heartbeat_key, "1", px=self.heartbeat_ms)
                    for upload_id, held in held_now:
                        await renew(keys=[lock_key(upload_id)],
                                    args=[held.owner, self.lease_ms], client=pipe)
                    replies = await pipe.execute()
                for (upload_id, held), renewed in zip(held_now, replies[1:], strict=True):
                    if not renewed and self._held.get(upload_id) is held:
                        self._lose(upload_id, held, "lease taken over")
            except (StorageUnavailable, OSError) as exc:
                # Unrenewed leases lapse: tell every writer to stop before they do.
                for upload_id, held in list(self._held.items()):
                    self._lose(upload_id, held, f"redis unreachable: {exc}")
            await anyio.sleep(interval)

    def _lose(self, upload_id: str, held: _Held, why: str) -> None:
        if not held.lease.lost.is_set():
            log.warning("lock.lost", extra={"fields": {"upload_id": upload_id, "why": why}})
            held.lease.lost.set()
            held.on_release_requested()

    async def listen(self) -> None:
        """Turn release requests from any instance into callbacks on local holders."""
        while True:
            try:
                pubsub = self.conn.client.pubsub()
                await pubsub.subscribe(RELEASE_CHANNEL, RELEASED_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    upload_id = message["data"].decode()
                    if message["channel"] == RELEASE_CHANNEL.encode():
                        held = self._held.get(upload_id)
                        if held is not None:
                            held.on_release_requested()
                    else:
                        self._wake(upload_id)
            except Exception as exc:
                # redis-py raises its own ConnectionError (not OSError) on a lost socket.
                log.warning("lock.pubsub_reconnect", extra={"fields": {"error": str(exc)}})
                await anyio.sleep(1)

    def _wake(self, upload_id: str) -> None:
        event = self._unlocked.pop(upload_id, None)
        if event is not None:
            event.set()

    # --- Locker protocol ---------------------------------------------------------
    async def leader(self, name: str, ttl: float) -> bool:
        owner = self.conn.instance
        return bool(await self.conn.run("leader", [f"tus:leader:{name}"],
                                        [owner, int(ttl * 1000)]))

    async def _acquire(self, upload_id: str, owner: str, timeout: float) -> int:
        deadline = anyio.current_time() + timeout
        last_request = -REQUEST_EVERY
        while True:
            epoch = int(await self.conn.run(
                "acquire", [lock_key(upload_id), epoch_key(upload_id)],
                [owner, self.lease_ms, HEARTBEAT_PREFIX]))
            if epoch:
                self._unlocked.pop(upload_id, None)
                return epoch
            now = anyio.current_time()
            if now >= deadline:
                raise LockTimeout(upload_id)
            if now - last_request >= REQUEST_EVERY:
                async with unavailable_on_outage():
                    await self.conn.client.publish(RELEASE_CHANNEL, upload_id)
                last_request = now
            event = self._unlocked.setdefault(upload_id, anyio.Event())
            with anyio.move_on_after(min(POLL_SECONDS, deadline - now)):
                await event.wait()

    async def confirm(self, lease: Lease) -> bool:
        """Asks Redis: an instance whose heartbeat lapsed (a stalled event loop) has its
        locks taken over without being told at once."""
        held = self._held.get(lease.upload_id)
        if held is None or held.lease is not lease or lease.lost.is_set():
            return False
        async with unavailable_on_outage():
            current = await self.conn.client.get(lock_key(lease.upload_id))
        if current is None or current.decode() != held.owner:
            self._lose(lease.upload_id, held, "lease taken over")
            return False
        return True

    @asynccontextmanager
    async def hold(
        self, upload_id: str, *, on_release_requested: Callable[[], None], timeout: float,
    ) -> AsyncIterator[Lease]:
        owner = f"{self.conn.instance}/{uuid.uuid4().hex}"
        epoch = await self._acquire(upload_id, owner, timeout)
        held = _Held(owner, Lease(upload_id, epoch), on_release_requested)
        self._held[upload_id] = held
        try:
            yield held.lease
        finally:
            if self._held.get(upload_id) is held:
                del self._held[upload_id]
            with anyio.CancelScope(shield=True):
                # If Redis is gone the lease simply lapses.
                with contextlib.suppress(StorageUnavailable):
                    await self.conn.run("release", [lock_key(upload_id)],
                                        [owner, RELEASED_CHANNEL, upload_id])
