from __future__ import annotations

import base64
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from storage import UploadInfo, UploadNotFound, UploadState, is_valid_upload_id, new_upload_id

from .. import logs, metrics
from ..auth import current_subject
from ..concat import known_total, load_partials, part_ids, try_finish_final
from ..context import TusContext, get_context, require_tus_resumable
from ..errors import TusError
from ..hooks import HookResponse, hook_failed
from ..limits import client_key
from ..protocol import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    http_date,
    metadata_text,
    new_hasher,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_non_negative,
)
from .patch import content_length, pre_finish, raise_for_outcome, receive_body

# A body up to this size that holds the whole upload is read before the upload's record is
# written, so the record is created once, already complete (no lock, no second write).
SMALL_UPLOAD_BYTES = 1 << 20


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

    if with_body and size != 0:
        key = client_key(request, behind_proxy=ctx.settings.behind_proxy)
        with ctx.slots.take(key):
            return await _create(ctx, request, size, metadata, concat is not None, with_body,
                                 checksum)
    return await _create(ctx, request, size, metadata, concat is not None, with_body, checksum)


async def _create(
    ctx: TusContext, request: Request, size: int | None, metadata: dict[str, str | None],
    partial: bool, with_body: bool, checksum: tuple[str, bytes] | None,
) -> Response:
    new = UploadInfo(id=new_upload_id(), size=size, metadata=metadata, partial=partial,
                     expires_at=None if size == 0 else ctx.next_expiry())
    if size == 0 or (with_body and size is not None and size <= SMALL_UPLOAD_BYTES
                     and content_length(request) == size):
        return await _create_complete(ctx, request, new, checksum if with_body else None)
    info, hook_headers = await create_record(ctx, request, new)
    headers = {**hook_headers, "Tus-Resumable": TUS_VERSION,
               "Location": ctx.upload_url(request, info.id)}
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


async def _create_complete(
    ctx: TusContext, request: Request, new: UploadInfo, checksum: tuple[str, bytes] | None,
) -> Response:
    """An upload whose every byte is in this (small) request: bytes first, then the record.

    Nobody else knows the id yet, so no lock is needed; a crash before the record is
    written leaves an orphan data file and no upload (the client never got a Location).
    """
    info, hook_headers = await create_record(
        ctx, request, new, read_body=lambda: _read_small_body(ctx, request, new, checksum))
    headers = {**hook_headers, "Tus-Resumable": TUS_VERSION,
               "Location": ctx.upload_url(request, info.id)}
    if info.size:
        headers["Upload-Offset"] = str(info.offset)
        metrics.bytes_received.inc(info.offset)
        if ctx.hooks is not None:
            ctx.hooks.tell("post-receive", info, request)
        await pre_finish(ctx, request, info)
    await ctx.completed(info)
    return Response(status_code=201, headers=headers)


async def _read_small_body(
    ctx: TusContext, request: Request, info: UploadInfo, checksum: tuple[str, bytes] | None,
) -> bytes:
    if not info.size:
        return b""
    chunks: list[bytes] = []
    with anyio.move_on_after(ctx.settings.network_timeout) as idle:
        try:
            async for chunk in request.stream():
                chunks.append(chunk)
        except ClientDisconnect:
            # Nothing is created: the client never saw a Location to resume from.
            raise TusError(400, "ERR_BODY_INCOMPLETE",
                           "client went away during the body") from None
    body = b"".join(chunks)
    if idle.cancelled_caught:
        raise TusError.read_timeout(ctx.settings.network_timeout)
    if len(body) != info.size:
        raise TusError(400, "ERR_BODY_INCOMPLETE",
                       f"body has {len(body)} of its {info.size} bytes")
    if checksum is not None:
        hasher = new_hasher(checksum[0])
        hasher.update(body)
        if not hmac.compare_digest(hasher.digest(), checksum[1]):
            raise TusError.checksum_mismatch()
    return body


async def create_record(
    ctx: TusContext, request: Request, info: UploadInfo,
    read_body: Callable[[], Awaitable[bytes]] | None = None,
) -> tuple[UploadInfo, dict[str, str]]:
    """Create the upload (after the pre-create hook); returns it and headers the hook set.

    With read_body, the upload's whole content is read (after the hook), stored and made
    durable first, and the record is created already complete.
    """
    info, answer = await _pre_create(ctx, request, info)
    now = time.time()
    info = info.evolve(created_at=now, updated_at=now, owner=current_subject())
    body = b""
    if read_body is not None:
        body = await read_body()
        info = info.evolve(offset=len(body), state=UploadState.COMPLETED, completed_at=now,
                           expires_at=None)
    await _create_storage(ctx, info, body)
    logs.event("upload.created", info.id, size=info.size, partial=info.partial,
               final=info.is_final, filename=metadata_text(info.metadata, "filename"),
               owner=info.owner)
    metrics.uploads_created.inc()
    if ctx.hooks is not None:
        ctx.hooks.tell("post-create", info, request)
    return info, dict(answer.headers)


async def _create_storage(ctx: TusContext, info: UploadInfo, body: bytes = b"") -> None:
    """Bytes file (with the body, durable), then record. A disk error (a full volume:
    507) leaves nothing behind."""
    created = False
    data = ctx.backend.data
    try:
        await data.create(info.id, body)  # with the body: written and durable
        created = True
        await ctx.backend.state.create(info)
    except OSError as exc:
        logs.event("upload.create_failed", info.id, level=40, error=str(exc))
        if created:
            with contextlib.suppress(Exception):
                await ctx.backend.data.delete(info.id)
            with contextlib.suppress(Exception):
                await ctx.backend.state.purge(info.id)
        raise TusError.from_os_error(exc) from exc


async def _pre_create(
    ctx: TusContext, request: Request, info: UploadInfo,
) -> tuple[UploadInfo, HookResponse]:
    """tusd's pre-create hook: it may refuse the upload, or choose its id and metadata."""
    if ctx.hooks is None or not ctx.hooks.on("pre-create"):
        return info, HookResponse()
    answer = await ctx.hooks.gate(
        "pre-create", info.evolve(id=""), request,
        refused=lambda answer: answer.reject_upload,
        default_body="ERR_UPLOAD_REJECTED: upload rejected by the server\n")
    if answer.change_metadata is not None:
        info = info.evolve(metadata={
            key: base64.b64encode(value.encode()).decode()
            for key, value in answer.change_metadata.items()})
    if answer.change_id is not None:
        if not is_valid_upload_id(answer.change_id):
            raise hook_failed("pre-create hook chose an upload id outside [A-Za-z0-9_-]{1,128}")
        try:
            await ctx.backend.state.get(answer.change_id)
        except UploadNotFound:
            info = info.evolve(id=answer.change_id)
        else:
            raise hook_failed(f"pre-create hook chose upload id {answer.change_id}, which exists")
    return info, answer


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
    for partial in partials:
        if not ctx.owns(partial):
            # Someone else's partial looks like no upload at all.
            raise TusError(404, "ERR_UPLOAD_NOT_FOUND", f"partial upload {partial.id} not found")
    total = known_total(partials)
    max_size = ctx.settings.max_size
    if max_size and total is not None and total > max_size:
        raise TusError.too_large(f"concatenated length {total} exceeds Tus-Max-Size {max_size}")
    info, hook_headers = await create_record(ctx, request, UploadInfo(
        id=new_upload_id(), size=total, metadata=metadata, parts=tuple(ids),
        expires_at=ctx.next_expiry(),
    ))
    info = await try_finish_final(ctx, info)
    headers = {**hook_headers, "Tus-Resumable": TUS_VERSION,
               "Location": ctx.upload_url(request, info.id)}
    if info.expires_at is not None and not info.state.finished:
        headers["Upload-Expires"] = http_date(info.expires_at)
    return Response(status_code=201, headers=headers)
