"""The embedded completion queue: `.info` records are the durable outbox.

A commit that completes an upload writes state=completed to its record before
anything is queued here, so a crash loses only this in-memory hint; recover()
finds every completed-but-unprocessed upload again on startup. Retries wait
in a heap (in memory: after a crash, recover() finds them the same way).
"""

from __future__ import annotations

import heapq
import math
import time

import anyio

from .base import Job, StateStore, UploadState

# Processing crashed mid-way counts as not done: the processor is idempotent.
PENDING = frozenset({UploadState.COMPLETED, UploadState.PROCESSING})


class OutboxQueue:
    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._queued: set[str] = set()
        self._delayed: list[tuple[float, str]] = []

    async def notify(self, upload_id: str) -> None:
        if upload_id in self._queued:
            return
        self._queued.add(upload_id)
        await self._send.send(upload_id)

    async def receive(self) -> Job:
        while True:
            now = time.monotonic()
            if self._delayed and self._delayed[0][0] <= now:
                return Job(heapq.heappop(self._delayed)[1])
            wait = self._delayed[0][0] - now if self._delayed else math.inf
            with anyio.move_on_after(wait):
                upload_id = await self._receive.receive()
                self._queued.discard(upload_id)
                return Job(upload_id)

    async def ack(self, job: Job) -> None:
        pass  # the record's state (processed/failed) is the acknowledgement

    async def requeue(self, upload_id: str) -> None:
        await self.notify(upload_id)  # the record's state=completed is the durable part

    async def extend(self, job: Job) -> None:
        pass  # one worker per process: nobody else could take the job

    async def retry(self, job: Job, delay: float) -> None:
        heapq.heappush(self._delayed, (time.monotonic() + delay, job.upload_id))

    async def dead(self, job: Job, error: str) -> None:
        pass  # the record keeps state=failed and the error

    async def recover(self, state: StateStore) -> int:
        # Partials are building blocks of a final upload, never processed on their own.
        pending = [i for i in await state.scan(PENDING) if not i.partial]
        for info in sorted(pending, key=lambda i: i.updated_at):
            await self.notify(info.id)
        return len(pending)
