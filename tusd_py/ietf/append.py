"""Upload append: PATCH on the upload resource (draft Section 'Upload Append').

Same lock (a newer request takes over, the older one saves what it got), same body
pump with checkpoints and fencing as a tus PATCH; only the headers differ.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import get_context
from ..errors import TusError
from ..handlers.patch import raise_for_outcome, receive_body
from ..transfer import Outcome, PumpResult
from .headers import sf_integer
from .problems import DraftProblem
from .state import (
    PARTIAL_UPLOAD,
    complete_header,
    completes,
    finish,
    has_body,
    limit_headers,
    record_length,
    request_length,
)
from .versions import Draft


async def append(request: Request, draft: Draft) -> Response:
    if draft.needs_partial_upload_type:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != PARTIAL_UPLOAD:
            raise TusError(415, "ERR_INVALID_CONTENT_TYPE",
                           f"an append needs Content-Type: {PARTIAL_UPLOAD}")
    offset = sf_integer(request.headers.get("upload-offset"))
    if offset is None:
        raise TusError.invalid_offset()
    # v3: no Upload-Incomplete means the last request; v4+: no Upload-Complete is
    # treated as ?0 (more to come), as tusd does.
    complete = completes(request, draft)
    complete = draft.uses_incomplete if complete is None else complete
    length = request_length(request, offset, complete)
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    await ctx.load(upload_id)  # 404/410 without waiting for the lock
    async with ctx.hold(upload_id) as (lease, release):
        info = await ctx.load(upload_id)
        if info.is_final:
            raise TusError.modify_final()
        if offset != info.offset:
            error = DraftProblem.mismatching_offset(info.offset, offset)
            error.headers.update(complete_header(draft, info.state.finished))
            raise error
        if info.state.finished:
            # 'If the upload is already complete, the server MUST NOT modify the
            # upload resource and MUST reject the request': content is an
            # inconsistent length. An empty completing request is what the draft
            # calls completing 'without content' - answered as done, since this
            # server completes an upload as soon as its known length is reached.
            if has_body(request):
                raise DraftProblem.inconsistent_length("the upload is already complete")
            if not complete:
                raise DraftProblem.completed_upload()
            result = PumpResult(Outcome.DONE, info)
        else:
            info = await record_length(ctx, draft, info, lease, length)
            if has_body(request) and not info.state.finished:
                result = await receive_body(ctx, request, info, lease, release, None)
            elif has_body(request):
                raise DraftProblem.inconsistent_length("the upload is already complete")
            else:
                result = PumpResult(Outcome.DONE, info)
            if result.outcome is Outcome.DONE and complete:
                result.info = await finish(ctx, draft, result.info, lease)
    raise_for_outcome(ctx, result)
    info = result.info
    headers = {"Upload-Offset": str(info.offset), **complete_header(draft, info.state.finished)}
    if not info.state.finished:
        headers.update(limit_headers(ctx, draft, info))
    return Response(status_code=204, headers=headers)

