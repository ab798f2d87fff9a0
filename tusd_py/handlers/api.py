"""JSON views of uploads for the dashboard, operators and other tooling."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from storage import InvalidTransition, UploadInfo, UploadNotFound, UploadState, is_valid_upload_id

from .. import logs
from ..context import TusContext, get_context
from ..errors import TusError
from ..views import upload_json

MAX_PAGE = 500
_THUMB_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                "png": "image/png"}


async def _load(ctx: TusContext, upload_id: str) -> UploadInfo:
    if not is_valid_upload_id(upload_id):
        raise TusError.not_found()
    try:
        info = await ctx.backend.state.get(upload_id)
    except UploadNotFound:
        raise TusError.not_found() from None
    if not ctx.owns(info):
        raise TusError.not_found()
    return info


async def upload_status(request: Request) -> JSONResponse:
    ctx = get_context(request)
    info = await _load(ctx, request.path_params["upload_id"])
    return JSONResponse(upload_json(ctx.settings.base_path, info),
                        headers={"Cache-Control": "no-store"})


async def upload_list(request: Request) -> JSONResponse:
    """Newest first; `cursor` is the `next_cursor` of the previous page."""
    ctx = get_context(request)
    params = request.query_params
    try:
        limit = min(int(params.get("limit", "100")), MAX_PAGE)
        states = (frozenset(UploadState(s) for s in params["state"].split(","))
                  if params.get("state") else None)
    except ValueError:
        raise TusError(400, "ERR_INVALID_QUERY", "limit must be a number, state one of "
                       + ", ".join(s.value for s in UploadState)) from None
    uploads = sorted((i for i in await ctx.backend.state.scan(states) if ctx.owns(i)),
                     key=lambda i: (i.created_at, i.id), reverse=True)
    if cursor := params.get("cursor"):
        at, _, last_id = cursor.partition("~")
        try:
            key = (float(at), last_id)
        except ValueError:
            raise TusError(400, "ERR_INVALID_QUERY", "cursor must be a next_cursor value") from None
        uploads = [i for i in uploads if (i.created_at, i.id) < key]
    page = uploads[:limit]
    next_cursor = (f"{page[-1].created_at!r}~{page[-1].id}"
                   if len(uploads) > limit and page else None)
    return JSONResponse({"uploads": [upload_json(ctx.settings.base_path, i) for i in page],
                         "next_cursor": next_cursor}, headers={"Cache-Control": "no-store"})


async def thumbnail(request: Request) -> Response:
    ctx = get_context(request)
    info = await _load(ctx, request.path_params["upload_id"])
    name = request.path_params["name"]
    thumbs = {t["name"]: t for t in (info.result or {}).get("thumbnails") or []}
    if name not in thumbs:
        raise TusError(404, "ERR_THUMBNAIL_NOT_FOUND", "no such thumbnail")
    body = await ctx.read_output(thumbs[name]["path"])
    if body is None:
        raise TusError(404, "ERR_THUMBNAIL_NOT_FOUND", "thumbnail file is missing")
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    # With owners, a shared cache (a CDN) must not hand one owner's thumbnail to another.
    scope = "private" if ctx.settings.auth_enabled else "public"
    headers = {"ETag": etag, "Cache-Control": f"{scope}, max-age=3600"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = _THUMB_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    return Response(body, media_type=media, headers=headers)


async def reprocess(request: Request) -> JSONResponse:
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    await _load(ctx, upload_id)
    try:
        info = await ctx.backend.state.transition(
            upload_id, UploadState.COMPLETED,
            expect=frozenset({UploadState.PROCESSED, UploadState.FAILED}),
            attempts=0, error=None)
    except InvalidTransition as exc:
        raise TusError(409, "ERR_NOT_REPROCESSABLE",
                       f"only processed or failed uploads can be reprocessed ({exc})") from None
    await ctx.backend.queue.requeue(upload_id)
    logs.event("processing.requeued", upload_id)
    return JSONResponse(upload_json(ctx.settings.base_path, info), status_code=202)
