"""Upload append: PATCH on the upload resource (draft Section 'Upload Append').

Same lock (a newer request takes over, the older one saves what it got), same body
pump with checkpoints and fencing as a tus PATCH; only the headers differ.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import TusError
from ..http.fields import has_body, media_type
from ..http.request import body_of, caller_of, service_of
from ..service import AppendResult, Outcome
from .headers import sf_integer
from .state import (
    PARTIAL_UPLOAD,
    complete_header,
    completes,
    limit_headers,
    record_length,
    request_length,
)
from .versions import Draft


async def append(request: Request, draft: Draft) -> Response:
    if draft.needs_partial_upload_type and media_type(request) != PARTIAL_UPLOAD:
        raise TusError.bad_content_type("an append", PARTIAL_UPLOAD)
    offset = sf_integer(request.headers.get("upload-offset"))
    if offset is None:
        raise TusError.invalid_offset()
    # v3: no Upload-Incomplete means the last request; v4+: no Upload-Complete is
    # treated as ?0 (more to come), as tusd does.
    complete = completes(request, draft)
    complete = draft.uses_incomplete if complete is None else complete
    length = request_length(request, offset, complete)
    service = service_of(request)
    caller = caller_of(request)
    upload_id = request.path_params["upload_id"]
    async with service.appending(upload_id, caller) as (info, hold):
        if offset != info.offset:
            error = TusError.offset_mismatch(info.offset, offset)
            error.headers.update(complete_header(draft, info.state.finished))
            raise error
        if info.state.finished:
            # 'If the upload is already complete, the server MUST NOT modify the
            # upload resource and MUST reject the request': content is an
            # inconsistent length. An empty completing request is what the draft
            # calls completing 'without content' - answered as done, since this
            # server completes an upload as soon as its known length is reached.
            if has_body(request):
                raise TusError.inconsistent_length("the upload is already complete")
            if not complete:
                raise TusError.completed_upload()
            result = AppendResult(Outcome.DONE, info)
        else:
            info = await record_length(service, info, hold, length, caller)
            if has_body(request) and not info.state.finished:
                result = await service.append(info, hold, body_of(request), caller)
            elif has_body(request):
                raise TusError.inconsistent_length("the upload is already complete")
            else:
                result = AppendResult(Outcome.DONE, info)
            if result.outcome is Outcome.DONE and complete:
                result.info = await service.complete_empty(result.info, hold, caller)
    service.raise_for(result)
    info = result.info
    headers = {"Upload-Offset": str(info.offset), **complete_header(draft, info.state.finished)}
    if not info.state.finished:
        headers.update(limit_headers(service.settings, draft, info))
    return Response(status_code=204, headers=headers)
