from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from storage import UploadInfo, new_upload_id

from .. import logs
from ..concat import known_total, load_partials, part_ids, try_finish_final
from ..context import TusContext, get_context, require_tus_resumable
from ..errors import TusError
from ..protocol import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    http_date,
    metadata_text,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_non_negative,
)
from .patch import content_length, raise_for_outcome, receive_body


def _declared_size(request: Request) -> int | None:
    """'The Client MUST include either the Upload-Length or the Upload-Defer-Length header.'"""
    length = request.headers.get("upload-length")
    defer = request.headers.get("upload-defer-length")
    if length is not None and defer is not None:
        raise TusError.ambiguous_length()
    if defer is not None:
        if defer.strip() != "1":
            raise TusError.invalid_length("Upload-Defer-Length must be 1")
        return None
    if length is None:
        raise TusError.invalid_length("send Upload-Length or Upload-Defer-Length: 1")
    return parse_non_negative(length, TusError.invalid_length())


async def post(request: Request) -> Response:
    require_tus_resumable(request)
    ctx = get_context(request)
    concat = parse_concat(request.headers.get("upload-concat"))
    metadata = parse_metadata(request.headers.get("upload-metadata"))
    # A POST without a tus body may carry any Content-Type: some HTTP clients force one.
    with_body = (request.headers.get("content-type", "").split(";")[0].strip().lower()
                 == OFFSET_OCTET_STREAM)
    if concat is not None and not concat[0]:
        return await _create_final(ctx, request, concat[1], metadata, with_body)
    size = _declared_size(request)
    max_size = ctx.settings.max_size
    if max_size and size is not None and size > max_size:
        raise TusError.too_large(f"Upload-Length exceeds Tus-Max-Size {max_size}")
    checksum = parse_checksum(request.headers.get("upload-checksum")) if with_body else None
    limit = size if size is not None else (max_size or None)
    body_length = content_length(request) if with_body else None
    if body_length is not None and limit is not None and body_length > limit:
        raise TusError.too_large(f"body of {body_length} bytes exceeds the upload's length")

    info = await create_record(ctx, UploadInfo(
        id=new_upload_id(), size=size, metadata=metadata, partial=concat is not None,
        expires_at=None if size == 0 else ctx.next_expiry(),
    ))
    headers = {"Tus-Resumable": TUS_VERSION, "Location": ctx.upload_url(request, info.id)}
    if size == 0 or with_body:
        async with ctx.hold(info.id) as (lease, release):
            if size == 0:
                # 'Upload-Length: 0' is complete at creation, and processed like any other.
                info = await ctx.backend.state.commit(info.id, epoch=lease.epoch,
                                                      expected=0, new=0)
                await ctx.completed(info)
            else:
                result = await receive_body(ctx, request, info, lease, release, checksum,
                                            fresh=True)
    if size != 0 and with_body:
        info = result.info
        headers["Upload-Offset"] = str(info.offset)
        try:
            raise_for_outcome(ctx, result)
        except TusError as exc:
            # The upload exists even if its first bytes failed: tell the client where.
            exc.headers.update(headers)
            raise
    if info.expires_at is not None and not info.state.finished:
        headers["Upload-Expires"] = http_date(info.expires_at)
    return Response(status_code=201, headers=headers)


async def create_record(ctx: TusContext, info: UploadInfo) -> UploadInfo:
    now = time.time()
    info = info.evolve(created_at=now, updated_at=now)
    await ctx.backend.data.create(info.id)
    await ctx.backend.state.create(info)
    logs.event("upload.created", info.id, size=info.size, partial=info.partial,
               final=info.is_final, filename=metadata_text(info.metadata, "filename"))
    return info


async def _create_final(
    ctx: TusContext, request: Request, urls: list[str],
    metadata: dict[str, str | None], with_body: bool,
) -> Response:
    """'The Client MUST NOT include the Upload-Length header in the final upload creation.'"""
    if "upload-length" in request.headers or "upload-defer-length" in request.headers:
        raise TusError.invalid_length("a final upload's length is the sum of its partials")
    if with_body and content_length(request) != 0:
        raise TusError.modify_final()
    ids = part_ids(ctx.settings.base_path, urls)
    partials = await load_partials(ctx, ids)
    total = known_total(partials)
    max_size = ctx.settings.max_size
    if max_size and total is not None and total > max_size:
        raise TusError.too_large(f"concatenated length {total} exceeds Tus-Max-Size {max_size}")
    info = await create_record(ctx, UploadInfo(
        id=new_upload_id(), size=total, metadata=metadata, parts=tuple(ids),
        expires_at=ctx.next_expiry(),
    ))
    info = await try_finish_final(ctx, info)
    headers = {"Tus-Resumable": TUS_VERSION, "Location": ctx.upload_url(request, info.id)}
    if info.expires_at is not None and not info.state.finished:
        headers["Upload-Expires"] = http_date(info.expires_at)
    return Response(status_code=201, headers=headers)
