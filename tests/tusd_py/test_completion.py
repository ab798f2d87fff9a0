"""The completion runner: retries with backoff, then dead-letter; duplicates are no-ops."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from storage import Backend, UploadInfo, UploadState, embedded_backend, new_upload_id
from tusd_py.config import Settings
from tusd_py.processing.completion import process_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyProcessor:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def process(self, info: UploadInfo, data: Any) -> Mapping[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"disk hiccup {self.calls}")
        return {"ok": True}


async def completed_upload(backend: Backend) -> str:
    info = UploadInfo(id=new_upload_id(), size=0, created_at=time.time())
    await backend.data.create(info.id)
    await backend.state.create(info)
    await backend.state.commit(info.id, epoch=1, expected=0, new=0)
    await backend.queue.notify(info.id)
    return info.id


async def drain(backend: Backend, processor: FlakyProcessor, settings: Settings,
                deliveries: int) -> None:
    for _ in range(deliveries):
        with anyio.fail_after(5):
            job = await backend.queue.receive()
        await process_job(backend, processor, settings, job)


async def test_failure_is_retried_then_processed(tmp_path: Path) -> None:
    backend = embedded_backend(tmp_path)
    settings = Settings(processing_attempts=3, processing_backoff=0.05)
    upload_id = await completed_upload(backend)
    processor = FlakyProcessor(failures=2)
    await drain(backend, processor, settings, deliveries=3)
    info = await backend.state.get(upload_id)
    assert info.state is UploadState.PROCESSED
    assert info.attempts == 3 and info.error is None and info.result == {"ok": True}


async def test_last_failure_marks_failed_with_error(tmp_path: Path) -> None:
    backend = embedded_backend(tmp_path)
    settings = Settings(processing_attempts=2, processing_backoff=0.05)
    upload_id = await completed_upload(backend)
    processor = FlakyProcessor(failures=10)
    await drain(backend, processor, settings, deliveries=2)
    info = await backend.state.get(upload_id)
    assert info.state is UploadState.FAILED
    assert info.attempts == 2 and info.error == "OSError: disk hiccup 2"
    with anyio.move_on_after(0.3) as scope:
        await backend.queue.receive()
    assert scope.cancelled_caught, "a dead job must not be delivered again"


async def test_duplicate_delivery_does_not_process_twice(tmp_path: Path) -> None:
    backend = embedded_backend(tmp_path)
    settings = Settings()
    upload_id = await completed_upload(backend)
    processor = FlakyProcessor(failures=0)
    await drain(backend, processor, settings, deliveries=1)
    await backend.queue.notify(upload_id)  # e.g. recovered after a crash
    await drain(backend, processor, settings, deliveries=1)
    assert processor.calls == 1
    assert (await backend.state.get(upload_id)).state is UploadState.PROCESSED
