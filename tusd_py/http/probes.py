"""/healthz, /readyz and /metrics: what orchestrators and Prometheus ask."""

from __future__ import annotations

import os
import uuid

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from storage import StorageUnavailable, UploadNotFound, UploadState

from ..ops import metrics
from .request import service_of


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    """Ready when the state store answers and the upload volume takes writes."""
    service = service_of(request)
    try:
        await service.backend.state.get("readyz-probe")
    except UploadNotFound:
        pass
    except Exception as exc:
        return PlainTextResponse(f"state store unavailable: {exc}\n", status_code=503)
    upload_dir = service.settings.upload_dir

    def probe() -> None:
        upload_dir.mkdir(parents=True, exist_ok=True)
        path = upload_dir / f".readyz-{uuid.uuid4().hex}"
        try:
            with path.open("wb") as f:
                f.write(b"ok")
        finally:
            path.unlink(missing_ok=True)

    try:
        await anyio.to_thread.run_sync(probe)
    except OSError as exc:
        return PlainTextResponse(f"upload dir not writable: {os.strerror(exc.errno or 0)}\n",
                                 status_code=503)
    return PlainTextResponse("ready\n")


async def metrics_page(request: Request) -> Response:
    service = service_of(request)
    try:
        waiting = await service.backend.state.scan(frozenset({UploadState.COMPLETED}))
        metrics.processing_queue_depth.set(sum(1 for i in waiting if not i.partial))
    except StorageUnavailable:
        pass  # the other metrics are still worth a scrape
    body, content_type = metrics.exposition()
    return Response(body, headers={"Content-Type": content_type})
