"""A small JSON view of uploads for dashboards and operators."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from storage import UploadInfo, UploadNotFound, is_valid_upload_id

from ..context import get_context
from ..errors import TusError
from ..protocol import decoded_metadata


def upload_json(info: UploadInfo) -> dict[str, Any]:
    return {
        "id": info.id, "size": info.size, "offset": info.offset, "state": info.state.value,
        "metadata": decoded_metadata(info.metadata), "partial": info.partial,
        "parts": list(info.parts), "created_at": info.created_at,
        "updated_at": info.updated_at, "expires_at": info.expires_at,
        "attempts": info.attempts, "error": info.error, "result": info.result,
    }


async def upload_status(request: Request) -> JSONResponse:
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    if not is_valid_upload_id(upload_id):
        raise TusError.not_found()
    try:
        info = await ctx.backend.state.get(upload_id)
    except UploadNotFound:
        raise TusError.not_found() from None
    return JSONResponse(upload_json(info), headers={"Cache-Control": "no-store"})


async def upload_list(request: Request) -> JSONResponse:
    ctx = get_context(request)
    uploads = sorted(await ctx.backend.state.scan(), key=lambda i: i.created_at, reverse=True)
    return JSONResponse({"uploads": [upload_json(i) for i in uploads[:500]]},
                        headers={"Cache-Control": "no-store"})
