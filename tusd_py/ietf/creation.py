"""Upload creation: any POST or PUT to the upload endpoint carrying the draft header.

Draft Section 'Upload Creation': the server SHOULD announce the upload resource with
`104 (Upload Resumption Supported)` 'as soon as' it exists, carrying `Location` and
`Upload-Limit`, and (appendix 'Draft Version Identification') the request's
`Upload-Draft-Interop-Version`. Then the content is stored exactly as a tus
creation-with-upload is: same record, same lock, same body pump with checkpoints.
"""

from __future__ import annotations

import base64
from email.message import Message

from starlette.requests import Request
from starlette.responses import Response

from storage import UploadInfo, new_upload_id

from ..context import TusContext, get_context
from ..errors import TusError
from ..handlers.patch import raise_for_outcome, receive_body
from ..handlers.post import create_record
from ..informational import send_informational
from ..protocol import OFFSET_OCTET_STREAM, parse_metadata
from ..transfer import Outcome, PumpResult
from .state import (
    PARTIAL_UPLOAD,
    check_size,
    complete_header,
    completes,
    finish,
    has_body,
    limit_headers,
    request_length,
)
from .versions import Draft

# Content types that describe the transfer, not the uploaded file.
_TRANSFER_TYPES = {PARTIAL_UPLOAD, OFFSET_OCTET_STREAM, "application/x-www-form-urlencoded"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def metadata_from(request: Request) -> dict[str, str | None]:
    """tus-style metadata: `Upload-Metadata` if sent (tus-js-client does), plus the
    representation metadata the draft names: `Content-Type` and `Content-Disposition`
    ('can be used to transmit a filename')."""
    metadata = parse_metadata(request.headers.get("upload-metadata"))
    disposition = request.headers.get("content-disposition")
    if disposition and "filename" not in metadata:
        message = Message()
        message["content-disposition"] = disposition
        filename = message.get_filename()
        if filename:
            metadata["filename"] = _b64(filename)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in _TRANSFER_TYPES and "filetype" not in metadata:
        metadata["filetype"] = _b64(content_type)
    return metadata


async def create(request: Request, draft: Draft) -> Response:
    ctx = get_context(request)
    complete = completes(request, draft)
    if complete is None:
        if not draft.uses_incomplete:
            raise TusError(400, "ERR_MISSING_UPLOAD_COMPLETE",
                           "upload creation needs Upload-Complete: ?0 or ?1")
        complete = True  # v3 without Upload-Incomplete: a whole upload, like a plain POST
    length = request_length(request, 0, complete)
    check_size(ctx, draft, length)
    metadata = metadata_from(request)

    info, hook_headers = await create_record(ctx, request, UploadInfo(
        id=new_upload_id(), size=length, metadata=metadata,
        expires_at=None if length == 0 else ctx.next_expiry(),
    ))
    location = ctx.upload_url(request, info.id)
    headers = {**hook_headers, "Location": location}
    if draft.supported:
        await send_informational(request.scope, 104, [
            ("Location", location),
            ("Upload-Draft-Interop-Version", str(draft.requested)),
            *limit_headers(ctx, draft, info).items(),
        ])
    try:
        info = await _store(ctx, request, draft, info, complete)
    except TusError as exc:
        # The upload exists even if its first bytes failed: tell the client where.
        exc.headers.setdefault("Location", location)
        raise
    headers.update({"Upload-Offset": str(info.offset),
                    **complete_header(draft, info.state.finished),
                    **limit_headers(ctx, draft, info)})
    return Response(status_code=201, headers=headers)


async def _store(
    ctx: TusContext, request: Request, draft: Draft, info: UploadInfo, complete: bool,
) -> UploadInfo:
    async with ctx.hold(info.id) as (lease, release):
        if has_body(request):
            result = await receive_body(ctx, request, info, lease, release, None)
        else:
            result = PumpResult(Outcome.DONE, info)
        info = result.info
        if result.outcome is Outcome.DONE and complete:
            info = await finish(ctx, draft, info, lease)
    raise_for_outcome(ctx, result)
    return info
