from __future__ import annotations

import logging

import anyio
from starlette.requests import Request
from starlette.responses import Response

from storage import Lease, UploadInfo, UploadState

from .. import logs, metrics
from ..context import TusContext, get_context, require_tus_resumable
from ..errors import TusError
from ..hooks import HookUnavailable
from ..limits import client_key
from ..protocol import (
    OFFSET_OCTET_STREAM,
    TUS_VERSION,
    http_date,
    parse_checksum,
    parse_non_negative,
)
from ..transfer import Outcome, PumpResult, pump_body

UNLIMITED = 1 << 62


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    return parse_non_negative(value, TusError(400, "ERR_INVALID_CONTENT_LENGTH",
                                              "Content-Length must be a non-negative integer"))


def remaining_bytes(ctx: TusContext, info: UploadInfo) -> int:
    if info.size is not None:
        return info.size - info.offset
    # A deferred length is still bounded by Tus-Max-Size.
    if ctx.settings.max_size:
        return max(ctx.settings.max_size - info.offset, 0)
    return UNLIMITED


async def receive_body(
    ctx: TusContext, request: Request, info: UploadInfo, lease: Lease,
    release: anyio.CancelScope, checksum: tuple[str, bytes] | None, *, fresh: bool = False,
) -> PumpResult:
    """Store the request body at the upload's offset and report what happened.

    `fresh`: the upload was created by this very request, so it has no stale tail.
    """
    limit = remaining_bytes(ctx, info)
    length = content_length(request)
    if length is not None and length > limit:
        raise TusError.too_large(f"body of {length} bytes exceeds the {limit} bytes remaining")
    if not fresh:
        await ctx.backend.data.truncate(info.id, info.offset)  # a crash may have left a tail
    logs.event("upload.patch", info.id, level=logging.DEBUG, offset=info.offset,
               content_length=length)
    hooks = ctx.hooks
    # tusd sends post-receive while data arrives: here at every checkpoint (2 s / 32 MiB)
    # and when the body ends.
    progress = ((lambda committed: hooks.tell("post-receive", committed, request))
                if hooks is not None and hooks.on("post-receive") else None)
    with ctx.buffers.transfer():
        result = await pump_body(ctx, request.stream(), info, lease, release,
                                 limit=limit, checksum=checksum, on_commit=progress)
    if result.outcome is not Outcome.DONE:
        logs.event("upload.interrupted", info.id, level=30, reason=result.outcome.value,
                   offset=result.info.offset, received=result.received)
    metrics.bytes_received.inc(max(result.info.offset - info.offset, 0))
    if not info.state.finished and result.info.state is UploadState.COMPLETED:
        await pre_finish(ctx, request, result.info)
        await ctx.completed(result.info)
    return result


async def pre_finish(ctx: TusContext, request: Request, info: UploadInfo) -> None:
    """tusd's pre-finish hook: its HTTPResponse shapes the answer to the last PATCH."""
    if ctx.hooks is None or not ctx.hooks.on("pre-finish"):
        return
    try:
        answer = await ctx.hooks.ask("pre-finish", info, request)
    except HookUnavailable as exc:
        # The bytes are stored and committed: failing the request would only make the
        # client resend them. The failure is logged (hook.failed) and processing goes on.
        logs.event("hook.pre_finish_skipped", info.id, level=logging.ERROR, error=str(exc))
        return
    request.state.finish_answer = answer


def raise_for_outcome(ctx: TusContext, result: PumpResult) -> None:
    offset = {"Upload-Offset": str(result.info.offset)}
    match result.outcome:
        case Outcome.DONE | Outcome.DISCONNECTED:
            return  # a disconnected client reads no response anyway
        case Outcome.TOO_LARGE:
            raise TusError(413, "ERR_UPLOAD_SIZE_EXCEEDED",
                           "body is longer than the upload's remaining length", offset)
        case Outcome.CHECKSUM_MISMATCH:
            error = TusError.checksum_mismatch()
        case Outcome.RELEASED if ctx.draining:
            error = TusError(503, "ERR_SERVER_SHUTTING_DOWN",
                             "server is restarting; bytes so far were saved, resume elsewhere",
                             {"Retry-After": "1"})
        case Outcome.RELEASED:
            error = TusError.interrupted()
        case Outcome.TIMED_OUT:
            error = TusError.read_timeout(ctx.settings.network_timeout)
        case Outcome.STORAGE_FULL | Outcome.STORAGE_FAILED:
            # 507 on a full volume: the offset is what is safely on disk; resume later.
            error = (TusError.from_os_error(result.error) if result.error is not None
                     else TusError.storage_full())
    error.headers.update(offset)
    raise error


async def patch(request: Request) -> Response:
    require_tus_resumable(request)
    ctx = get_context(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_OCTET_STREAM:
        raise TusError.bad_content_type()
    offset = parse_non_negative(request.headers.get("upload-offset"), TusError.invalid_offset())
    declared_header = request.headers.get("upload-length")
    declared = (None if declared_header is None
                else parse_non_negative(declared_header, TusError.invalid_length()))
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    upload_id = request.path_params["upload_id"]
    await ctx.load(upload_id)  # 404/410 without waiting for the lock
    with ctx.slots.take(client_key(request, behind_proxy=ctx.settings.behind_proxy), upload_id):
        result = await _locked_patch(ctx, request, upload_id, offset, declared, checksum)
    raise_for_outcome(ctx, result)
    headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(result.info.offset)}
    if result.info.state is UploadState.UPLOADING and result.info.expires_at is not None:
        headers["Upload-Expires"] = http_date(result.info.expires_at)
    answer = getattr(request.state, "finish_answer", None)
    if answer is not None:
        headers = {**answer.headers, **headers}
        if answer.status:
            return Response(answer.body, status_code=answer.status, headers=headers)
    return Response(status_code=204, headers=headers)


async def _locked_patch(
    ctx: TusContext, request: Request, upload_id: str, offset: int, declared: int | None,
    checksum: tuple[str, bytes] | None,
) -> PumpResult:
    async with ctx.hold(upload_id) as (lease, release):
        info = await ctx.load(upload_id)
        info = await _declare_length(ctx, info, lease, declared)
        if offset != info.offset:
            raise TusError.offset_mismatch(info.offset)
        if info.state.finished:
            # A re-sent last PATCH after a lost response: nothing to do.
            if content_length(request):
                raise TusError.too_large("upload is already complete")
            result = PumpResult(Outcome.DONE, info)
        else:
            result = await receive_body(ctx, request, info, lease, release, checksum)
    return result


async def _declare_length(
    ctx: TusContext, info: UploadInfo, lease: Lease, declared: int | None,
) -> UploadInfo:
    """creation-defer-length: the length comes with a later PATCH, once, never changed."""
    if info.is_final:
        raise TusError.modify_final()
    if declared is None:
        return info
    if info.size is not None:
        if declared != info.size:
            raise TusError.invalid_length("Upload-Length cannot be changed once set")
        return info
    if ctx.settings.max_size and declared > ctx.settings.max_size:
        raise TusError.too_large(f"Upload-Length exceeds Tus-Max-Size {ctx.settings.max_size}")
    if declared < info.offset:
        raise TusError.invalid_length("Upload-Length is smaller than the upload's offset")
    updated = await ctx.backend.state.declare_length(info.id, epoch=lease.epoch, size=declared)
    logs.event("upload.length_declared", info.id, size=declared)
    if updated.state is UploadState.COMPLETED:
        await ctx.completed(updated)
    return updated
