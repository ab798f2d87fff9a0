"""Completion jobs in a Redis stream read by a consumer group.

Jobs are added by the commit script itself (the outbox), acknowledged after
processing, reclaimed from dead workers with XAUTOCLAIM, retried through a
sorted set of due times, and dead-lettered with their error.
"""

from __future__ import annotations

import time

import anyio.lowlevel
from redis.exceptions import ResponseError

from ..base import Job, StateStore
from .client import (
    DEAD,
    GROUP,
    HEARTBEAT_PREFIX,
    RETRY,
    STREAM,
    RedisConnection,
    unavailable_on_outage,
)


class RedisStreamQueue:
    def __init__(self, conn: RedisConnection, *, reclaim_idle_seconds: float = 300.0,
                 block_seconds: float = 1.0) -> None:
        self.conn = conn
        self.consumer = conn.instance
        self.reclaim_idle_ms = int(reclaim_idle_seconds * 1000)
        self.block_ms = int(block_seconds * 1000)
        self._group_ready = False
        self._buffer: list[Job] = []

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            async with unavailable_on_outage():
                await self.conn.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def notify(self, upload_id: str) -> None:
        pass  # commit.lua already added the job to the stream

    async def receive(self) -> Job:
        await self._ensure_group()
        client = self.conn.client
        while not self._buffer:
            await self.conn.run("due", [RETRY, STREAM], [int(time.time() * 1000), 50])
            await self._claim_from_dead_consumers()
            async with unavailable_on_outage():
                # Entries a dead worker took but never acknowledged.
                _, claimed, _ = await client.xautoclaim(
                    STREAM, GROUP, self.consumer, self.reclaim_idle_ms, "0-0", count=10)
                for entry_id, fields in claimed:
                    if fields:
                        pending = await client.xpending_range(
                            STREAM, GROUP, min=entry_id, max=entry_id, count=1)
                        times = pending[0]["times_delivered"] if pending else 2
                        self._buffer.append(Job(fields[b"id"].decode(), times,
                                                entry_id.decode()))
                if self._buffer:
                    break
                read = await client.xreadgroup(GROUP, self.consumer, {STREAM: ">"},
                                               count=10, block=self.block_ms)
            for _, entries in read or []:
                for entry_id, fields in entries:
                    self._buffer.append(Job(fields[b"id"].decode(), 1, entry_id.decode()))
            if not self._buffer:
                await anyio.lowlevel.checkpoint()
        return self._buffer.pop(0)

    async def _claim_from_dead_consumers(self) -> None:
        """Take over jobs of workers whose instance stopped heart-beating (killed).

        Without this a job would wait for the reclaim idle time (minutes), which
        must stay longer than the slowest legitimate job.
        """
        client = self.conn.client
        async with unavailable_on_outage():
            pending = await client.xpending_range(STREAM, GROUP, min="-", max="+", count=100)
            dead: dict[str, bool] = {}
            for entry in pending:
                consumer = entry["consumer"].decode()
                if consumer == self.consumer:
                    continue
                if consumer not in dead:
                    dead[consumer] = not await client.exists(HEARTBEAT_PREFIX + consumer)
                if not dead[consumer]:
                    continue
                claimed = await client.xclaim(STREAM, GROUP, self.consumer, 0,
                                              [entry["message_id"]])
                for entry_id, fields in claimed:
                    if fields:
                        self._buffer.append(Job(fields[b"id"].decode(),
                                                entry["times_delivered"] + 1,
                                                entry_id.decode()))

    async def requeue(self, upload_id: str) -> None:
        await self._ensure_group()
        async with unavailable_on_outage():
            await self.conn.client.xadd(STREAM, {"id": upload_id})

    async def ack(self, job: Job) -> None:
        async with unavailable_on_outage():
            await self.conn.client.xack(STREAM, GROUP, job.token)
            await self.conn.client.xdel(STREAM, job.token)

    async def extend(self, job: Job) -> None:
        """Reset the entry's idle time so a long job is not reclaimed while it runs."""
        async with unavailable_on_outage():
            await self.conn.client.xclaim(STREAM, GROUP, self.consumer, 0, [job.token],
                                          justid=True)

    async def retry(self, job: Job, delay: float) -> None:
        due_ms = int((time.time() + delay) * 1000)
        await self.conn.run("retry", [STREAM, RETRY], [GROUP, job.token, due_ms,
                                                       job.upload_id])

    async def dead(self, job: Job, error: str) -> None:
        await self.conn.run("dead", [STREAM, DEAD], [GROUP, job.token, job.upload_id, error,
                                                     int(time.time() * 1000)])

    async def recover(self, state: StateStore) -> int:
        # Nothing to scan: the stream is durable and unacknowledged entries are reclaimed.
        await self._ensure_group()
        async with unavailable_on_outage():
            info = await self.conn.client.xinfo_groups(STREAM)
        return sum(int(g.get("pending", 0)) + int(g.get("lag", 0) or 0) for g in info)
