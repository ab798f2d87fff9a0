"""Offset retrieval: HEAD on an upload."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from storage import UploadState

from ..http.fields import http_date, render_metadata
from ..http.request import service_of
from ..ops import logs
from .headers import TUS_VERSION, require_tus_resumable


async def head(request: Request) -> Response:
    require_tus_resumable(request)
    service = service_of(request)
    upload_id = request.path_params["upload_id"]
    info = await service.load_settled(upload_id)
    if info.state is UploadState.UPLOADING and info.offset > 0:
        # Clients ask for the offset when they come back after an interruption.
        logs.event("upload.resumed", upload_id, offset=info.offset, size=info.size)
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    final_waiting = info.is_final and not info.state.finished
    # 'The Server SHOULD NOT include the Upload-Offset header unless the concatenation
    # has been successfully finished.'
    if not final_waiting:
        headers["Upload-Offset"] = str(info.offset)
    if info.size is not None:
        headers["Upload-Length"] = str(info.size)
    elif not info.is_final:
        headers["Upload-Defer-Length"] = "1"
    if info.metadata:
        headers["Upload-Metadata"] = render_metadata(info.metadata)
    if info.partial:
        headers["Upload-Concat"] = "partial"
    elif info.is_final:
        base = service.settings.base_path
        headers["Upload-Concat"] = "final;" + " ".join(f"{base}{p}" for p in info.parts)
    if info.state is UploadState.UPLOADING and info.expires_at is not None:
        headers["Upload-Expires"] = http_date(info.expires_at)
    return Response(status_code=200, headers=headers)
