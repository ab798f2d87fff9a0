"""The embedded completion queue: `.info` records are the durable outbox.

A commit that completes an upload writes state=completed to its record before
anything is queued here, so a crash loses only this in-memory hint; recover()
finds every completed-but-unprocessed upload again on startup. Retries wait
in a heap (in memory: after a crash, recover() finds them the same way).

Several processes sharing one upload dir (`claims`, e.g. a FileLocker) each run
such a queue: a process processes what it completed itself, and every process
recovers everything at startup. A job is handed out only with its claim, an
flock held until ack/retry/dead and dropped by the kernel if the process dies,
so two processes never process one upload at once; one that finds the claim
taken looks again later, and then sees the upload processed and skips it.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Protocol

import anyio

from .base import Job, StateStore, UploadState

# Processing crashed mid-way counts as not done: the processor is idempotent.
PENDING = frozenset({UploadState.COMPLETED, UploadState.PROCESSING})
BUSY_RETRY_SECONDS = 2.0  # another process holds the job: look again this much later


class Claims(Protocol):
    """Exclusive, non-blocking claims across processes, freed when a process dies."""

    async def claim(self, upload_id: str) -> bool: ...

    async def unclaim(self, upload_id: str) -> None: ...


class OutboxQueue:
    def __init__(self, claims: Claims | None = None) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._queued: set[str] = set()
        self._delayed: list[tuple[float, str]] = []
        self._claims = claims
        self._claimed: set[str] = set()  # handed out to a worker of this process

    async def notify(self, upload_id: str) -> None:
        if upload_id in self._queued:
            return
        self._queued.add(upload_id)
        await self._send.send(upload_id)

    async def _next(self) -> str:
        while True:
            now = time.monotonic()
            if self._delayed and self._delayed[0][0] <= now:
                return heapq.heappop(self._delayed)[1]
            wait = self._delayed[0][0] - now if self._delayed else math.inf
            with anyio.move_on_after(wait):
                upload_id = await self._receive.receive()
                self._queued.discard(upload_id)
                return upload_id

    async def receive(self) -> Job:
        while True:
            upload_id = await self._next()
            if self._claims is None:
                return Job(upload_id)
            if upload_id not in self._claimed and await self._claims.claim(upload_id):
                self._claimed.add(upload_id)
                return Job(upload_id)
            # Being processed (here or elsewhere): whoever has it may still fail and let go.
            heapq.heappush(self._delayed,
                           (time.monotonic() + BUSY_RETRY_SECONDS, upload_id))

    async def _let_go(self, upload_id: str) -> None:
        if self._claims is not None and upload_id in self._claimed:
            self._claimed.discard(upload_id)
            await self._claims.unclaim(upload_id)

    async def ack(self, job: Job) -> None:
        # The record's state (processed/failed) is the acknowledgement.
        await self._let_go(job.upload_id)

    async def requeue(self, upload_id: str) -> None:
        await self.notify(upload_id)  # the record's state=completed is the durable part

    async def extend(self, job: Job) -> None:
        pass  # the claim is held until ack/retry/dead, however long the job takes

    async def retry(self, job: Job, delay: float) -> None:
        await self._let_go(job.upload_id)
        heapq.heappush(self._delayed, (time.monotonic() + delay, job.upload_id))

    async def dead(self, job: Job, error: str) -> None:
        await self._let_go(job.upload_id)  # the record keeps state=failed and the error

    async def recover(self, state: StateStore) -> int:
        # Partials are building blocks of a final upload, never processed on their own.
        pending = [i for i in await state.scan(PENDING) if not i.partial]
        for info in sorted(pending, key=lambda i: i.updated_at):
            await self.notify(info.id)
        return len(pending)
