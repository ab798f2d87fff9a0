"""The completion pipeline's runner: queue -> processor -> recorded result.

Delivery is at-least-once, so the processor must be idempotent. A failure is
retried with exponential backoff; after the last attempt the job is
dead-lettered and the upload marked failed with its error. The bytes are
never touched by a failure.
"""

from __future__ import annotations

import contextlib
import logging
import time

import anyio
from anyio.abc import TaskGroup

from storage import (
    Backend,
    CompletionQueue,
    InvalidTransition,
    Job,
    PermanentProcessingError,
    Processor,
    StorageError,
    UploadState,
)
from storage.outbox_queue import PENDING

from ..config import Settings
from ..hooks import Hooks
from ..ops import logs, metrics
from ..service.metadata import metadata_text
from .views import upload_json

_PROCESSING = frozenset({UploadState.PROCESSING})
QUEUE_RETRY_SECONDS = 1.0
EXTEND_EVERY = 30.0  # well below the Redis queue's reclaim idle time


async def process_job(backend: Backend, processor: Processor, settings: Settings,
                      job: Job, hooks: Hooks | None = None) -> None:
    state, queue, upload_id = backend.state, backend.queue, job.upload_id
    try:
        info = await state.get(upload_id)
        if info.partial or info.state not in PENDING:
            await queue.ack(job)  # already done (a duplicate delivery) or not ours
            return
        info = await state.transition(upload_id, UploadState.PROCESSING, expect=PENDING,
                                      attempts=info.attempts + 1, started_at=time.time(),
                                      finished_at=None)
    except (StorageError, InvalidTransition) as exc:
        logs.event("processing.skipped", upload_id, level=logging.WARNING, error=str(exc))
        await queue.ack(job)
        return
    logs.event("processing.started", upload_id, attempt=info.attempts, size=info.size,
               filetype=metadata_text(info.metadata, "filetype"))
    started = time.monotonic()
    metrics.processing_in_progress.inc()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_claimed, queue, job)
            result = await processor.process(info, backend.data)
            tg.cancel_scope.cancel()
    except Exception as exc:
        metrics.processing_in_progress.dec()
        metrics.processing_seconds.observe(time.monotonic() - started)
        if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        permanent = isinstance(exc, PermanentProcessingError)
        error = str(exc) if permanent else f"{type(exc).__name__}: {exc}"
        if permanent or info.attempts >= settings.processing_attempts:
            await state.transition(upload_id, UploadState.FAILED, expect=_PROCESSING,
                                   error=error, finished_at=time.time())
            await queue.dead(job, error)
            metrics.processing_jobs.labels("failed").inc()
            logs.event("processing.failed", upload_id, level=logging.ERROR, error=error,
                       attempt=info.attempts, will_retry=False,
                       exc_type=type(exc).__name__)
            await _notify(backend, settings, hooks, upload_id)
            return
        delay = settings.processing_backoff * 2 ** (info.attempts - 1)
        await state.transition(upload_id, UploadState.COMPLETED, expect=_PROCESSING,
                               error=error)
        await queue.retry(job, delay)
        metrics.processing_jobs.labels("retry").inc()
        logs.event("processing.failed", upload_id, level=logging.WARNING, error=error,
                   attempt=info.attempts, will_retry=True, retry_in=delay)
        return
    metrics.processing_in_progress.dec()
    metrics.processing_seconds.observe(time.monotonic() - started)
    await state.transition(upload_id, UploadState.PROCESSED, expect=_PROCESSING,
                           result=dict(result), error=None, finished_at=time.time())
    metrics.processing_jobs.labels("processed").inc()
    await queue.ack(job)
    logs.event("processing.done", upload_id, seconds=round(time.monotonic() - started, 3))
    await _notify(backend, settings, hooks, upload_id)


async def _notify(backend: Backend, settings: Settings, hooks: Hooks | None,
                  upload_id: str) -> None:
    """post-finish, through the process's one hook sender (its events, its retries)."""
    if hooks is not None and hooks.on("post-finish"):
        info = await backend.state.get(upload_id)
        hooks.tell("post-finish", info, extra=upload_json(settings.base_path, info))


async def _keep_claimed(queue: CompletionQueue, job: Job) -> None:
    """A long job (a huge TIFF) must not look abandoned to other workers."""
    while True:
        await anyio.sleep(EXTEND_EVERY)
        await queue.extend(job)


async def start_processing(tg: TaskGroup, backend: Backend, processor: Processor,
                           settings: Settings, hooks: Hooks | None = None) -> None:
    """Re-queue what a crash left behind, then run `settings.processors` workers."""
    if settings.processors <= 0:
        return
    run_pool = getattr(processor, "run_pool", None)
    if run_pool is not None:  # warm thumbnail workers, started with the processors
        await tg.start(run_pool)
    recovered = await backend.queue.recover(backend.state)
    if recovered:
        logs.event("processing.recovered", count=recovered)
    for _ in range(settings.processors):
        tg.start_soon(run_worker, backend, processor, settings, hooks)


async def run_worker(backend: Backend, processor: Processor, settings: Settings,
                     hooks: Hooks | None = None) -> None:
    """Runs for the server's lifetime; neither a failing upload nor a store outage stops it."""
    while True:
        try:
            job = await backend.queue.receive()
        except StorageError as exc:
            logs.event("processing.queue_unavailable", level=logging.WARNING, error=str(exc))
            await anyio.sleep(QUEUE_RETRY_SECONDS)
            continue
        try:
            await process_job(backend, processor, settings, job, hooks)
        except Exception:
            logging.getLogger(logs.LOGGER_NAME).exception(
                "processing.crashed", extra={"fields": {"upload_id": job.upload_id}})
            # Hand the job back (and any claim on it) rather than hold it until restart.
            with contextlib.suppress(Exception):
                await backend.queue.retry(job, settings.processing_backoff)
