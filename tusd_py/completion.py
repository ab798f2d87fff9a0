"""The completion pipeline's runner: queue -> processor -> recorded result."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from storage import (
    Backend,
    InvalidTransition,
    Processor,
    StorageError,
    UploadInfo,
    UploadState,
)
from storage.outbox_queue import PENDING

from . import logs


class LoggingProcessor:
    """Placeholder processor: records that the upload was finalized, touches nothing."""

    async def process(self, info: UploadInfo, data: Any) -> Mapping[str, Any]:
        logs.event("processor.noop", info.id, size=info.size)
        return {"processor": "noop"}


async def process_one(backend: Backend, processor: Processor, upload_id: str) -> None:
    state = backend.state
    try:
        info = await state.get(upload_id)
    except StorageError as exc:
        logs.event("processing.skipped", upload_id, level=logging.WARNING, error=str(exc))
        return
    if info.partial or info.state not in PENDING:
        return
    try:
        info = await state.transition(upload_id, UploadState.PROCESSING, expect=PENDING,
                                      attempts=info.attempts + 1)
    except InvalidTransition:
        return
    logs.event("processing.started", upload_id, attempt=info.attempts, size=info.size)
    started = time.monotonic()
    try:
        result = await processor.process(info, backend.data)
    except Exception as exc:
        logs.event("processing.failed", upload_id, level=logging.ERROR,
                   error=f"{type(exc).__name__}: {exc}", attempt=info.attempts)
        await state.transition(upload_id, UploadState.FAILED,
                               expect=frozenset({UploadState.PROCESSING}),
                               error=f"{type(exc).__name__}: {exc}")
        return
    await state.transition(upload_id, UploadState.PROCESSED,
                           expect=frozenset({UploadState.PROCESSING}),
                           result=dict(result), error=None)
    logs.event("processing.done", upload_id, seconds=round(time.monotonic() - started, 3))


async def run_worker(backend: Backend, processor: Processor) -> None:
    """Runs for the server's lifetime; one failing upload never stops the loop."""
    while True:
        upload_id = await backend.queue.receive()
        try:
            await process_one(backend, processor, upload_id)
        except Exception:
            logging.getLogger(logs.LOGGER_NAME).exception(
                "processing.crashed", extra={"fields": {"upload_id": upload_id}})
