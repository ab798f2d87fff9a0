"""The embedded completion queue: `.info` records are the durable outbox.

A commit that completes an upload writes state=completed to its record before
anything is queued here, so a crash loses only this in-memory hint; recover()
finds every completed-but-unprocessed upload again on startup.
"""

from __future__ import annotations

import math

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .base import StateStore, UploadState

# Processing crashed mid-way counts as not done: the processor is idempotent.
PENDING = frozenset({UploadState.COMPLETED, UploadState.PROCESSING})


class OutboxQueue:
    def __init__(self) -> None:
        send: MemoryObjectSendStream[str]
        receive: MemoryObjectReceiveStream[str]
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        self._send = send
        self._receive = receive
        self._queued: set[str] = set()

    async def enqueue(self, upload_id: str) -> None:
        if upload_id in self._queued:
            return
        self._queued.add(upload_id)
        await self._send.send(upload_id)

    async def receive(self) -> str:
        upload_id = await self._receive.receive()
        self._queued.discard(upload_id)
        return upload_id

    async def recover(self, state: StateStore) -> int:
        # Partials are building blocks of a final upload, never processed on their own.
        pending = [i for i in await state.scan(PENDING) if not i.partial]
        for info in sorted(pending, key=lambda i: i.updated_at):
            await self.enqueue(info.id)
        return len(pending)
