"""Appending: PATCH on an upload (core protocol; creation-defer-length's late length)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from storage import UploadState

from ..errors import TusError
from ..hooks import HookResponse
from ..http.fields import (
    OFFSET_OCTET_STREAM,
    content_length,
    http_date,
    media_type,
    parse_non_negative,
)
from ..http.request import body_of, caller_of, service_of
from ..service import AppendResult, Outcome
from .headers import TUS_VERSION, parse_checksum, require_tus_resumable


def finish_response(status: int, headers: Mapping[str, str],
                    answer: HookResponse | None) -> Response:
    """The response, shaped by a pre-finish hook's HTTPResponse when one answered."""
    if answer is not None:
        headers = {**answer.headers, **headers}
        if answer.status:
            return Response(answer.body, status_code=answer.status, headers=headers)
    return Response(status_code=status, headers=headers)


async def patch(request: Request) -> Response:
    require_tus_resumable(request)
    service = service_of(request)
    if media_type(request) != OFFSET_OCTET_STREAM:
        raise TusError.bad_content_type()
    offset = parse_non_negative(request.headers.get("upload-offset"), TusError.invalid_offset())
    declared_header = request.headers.get("upload-length")
    declared = (None if declared_header is None
                else parse_non_negative(declared_header, TusError.invalid_length()))
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    upload_id = request.path_params["upload_id"]
    caller = caller_of(request)
    async with service.appending(upload_id, caller) as (info, hold):
        if declared is not None:
            info = await service.declare_length(info, hold, declared, caller)
        if offset != info.offset:
            raise TusError.offset_mismatch(info.offset, offset)
        if info.state.finished:
            # A re-sent last PATCH after a lost response: nothing to do.
            if content_length(request):
                raise TusError.too_large("upload is already complete")
            result = AppendResult(Outcome.DONE, info)
        else:
            result = await service.append(info, hold, body_of(request), caller, checksum)
    service.raise_for(result)
    headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(result.info.offset)}
    if result.info.state is UploadState.UPLOADING and result.info.expires_at is not None:
        headers["Upload-Expires"] = http_date(result.info.expires_at)
    return finish_response(204, headers, result.answer)
