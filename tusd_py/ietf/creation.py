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

from storage import UploadInfo

from ..errors import TusError
from ..http.fields import OFFSET_OCTET_STREAM, has_body, media_type, parse_metadata
from ..http.informational import send_informational
from ..http.request import body_of, caller_of, service_of, upload_url
from ..service import AppendResult, Caller, Outcome, UploadService
from .state import (
    PARTIAL_UPLOAD,
    complete_header,
    completes,
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
    content_type = media_type(request)
    if content_type and content_type not in _TRANSFER_TYPES and "filetype" not in metadata:
        metadata["filetype"] = _b64(content_type)
    return metadata


async def create(request: Request, draft: Draft) -> Response:
    service = service_of(request)
    settings = service.settings
    complete = completes(request, draft)
    if complete is None:
        if not draft.uses_incomplete:
            raise TusError.missing_upload_complete()
        complete = True  # v3 without Upload-Incomplete: a whole upload, like a plain POST
    length = request_length(request, 0, complete)
    service.check_length(length)
    caller = caller_of(request)
    created = await service.create(service.new_upload(length, metadata_from(request)), caller)
    info = created.info
    location = upload_url(request, info.id)
    headers = {**created.headers, "Location": location}
    if draft.supported:
        await send_informational(request.scope, 104, [
            ("Location", location),
            ("Upload-Draft-Interop-Version", str(draft.requested)),
            *limit_headers(settings, draft, info).items(),
        ])
    try:
        info = await _store(service, request, caller, info, complete)
    except TusError as exc:
        # The upload exists even if its first bytes failed: tell the client where.
        exc.headers.setdefault("Location", location)
        raise
    headers.update({"Upload-Offset": str(info.offset),
                    **complete_header(draft, info.state.finished),
                    **limit_headers(settings, draft, info)})
    return Response(status_code=201, headers=headers)


async def _store(service: UploadService, request: Request, caller: Caller, info: UploadInfo,
                 complete: bool) -> UploadInfo:
    if info.state.finished:
        return info  # an empty upload, complete at creation
    async with service.hold(info.id) as hold:
        if has_body(request):
            with service.transfer_slot(caller, info.id):
                result = await service.append(info, hold, body_of(request), caller,
                                              fresh=True)
        else:
            result = AppendResult(Outcome.DONE, info)
        info = result.info
        if result.outcome is Outcome.DONE and complete:
            info = await service.complete_empty(info, hold, caller)
    service.raise_for(result)
    return info
