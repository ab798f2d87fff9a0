"""JSON views of uploads for the dashboard, operators and other tooling."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from storage import UploadState

from ..errors import TusError
from ..processing.views import upload_json
from .request import service_of

MAX_PAGE = 500
_THUMB_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                "png": "image/png"}


async def upload_status(request: Request) -> JSONResponse:
    service = service_of(request)
    info = await service.find(request.path_params["upload_id"])
    return JSONResponse(upload_json(service.settings.base_path, info),
                        headers={"Cache-Control": "no-store"})


async def upload_list(request: Request) -> JSONResponse:
    """Newest first; `cursor` is the `next_cursor` of the previous page."""
    service = service_of(request)
    params = request.query_params
    try:
        limit = min(int(params.get("limit", "100")), MAX_PAGE)
        states = (frozenset(UploadState(s) for s in params["state"].split(","))
                  if params.get("state") else None)
    except ValueError:
        raise TusError.invalid_query("limit must be a number, state one of "
                                     + ", ".join(s.value for s in UploadState)) from None
    uploads = sorted(await service.list_uploads(states),
                     key=lambda i: (i.created_at, i.id), reverse=True)
    if cursor := params.get("cursor"):
        at, _, last_id = cursor.partition("~")
        try:
            key = (float(at), last_id)
        except ValueError:
            raise TusError.invalid_query("cursor must be a next_cursor value") from None
        uploads = [i for i in uploads if (i.created_at, i.id) < key]
    page = uploads[:limit]
    next_cursor = (f"{page[-1].created_at!r}~{page[-1].id}"
                   if len(uploads) > limit and page else None)
    base = service.settings.base_path
    return JSONResponse({"uploads": [upload_json(base, i) for i in page],
                         "next_cursor": next_cursor}, headers={"Cache-Control": "no-store"})


async def thumbnail(request: Request) -> Response:
    service = service_of(request)
    info = await service.find(request.path_params["upload_id"])
    name = request.path_params["name"]
    thumbs = {t["name"]: t for t in (info.result or {}).get("thumbnails") or []}
    if name not in thumbs:
        raise TusError.thumbnail_not_found()
    body = await service.read_output(thumbs[name]["path"])
    if body is None:
        raise TusError.thumbnail_not_found("thumbnail file is missing")
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    # With owners, a shared cache (a CDN) must not hand one owner's thumbnail to another.
    scope = "private" if service.settings.auth_enabled else "public"
    headers = {"ETag": etag, "Cache-Control": f"{scope}, max-age=3600"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = _THUMB_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    return Response(body, media_type=media, headers=headers)


async def reprocess(request: Request) -> JSONResponse:
    service = service_of(request)
    info = await service.reprocess(request.path_params["upload_id"])
    return JSONResponse(upload_json(service.settings.base_path, info), status_code=202)
