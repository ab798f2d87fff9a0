"""Offset retrieval: HEAD on the upload resource (draft Section 'Offset Retrieval').

'A successful response to a HEAD request against an upload resource MUST include the
offset in the Upload-Offset header field, MUST include the completeness state in the
Upload-Complete header field, MUST include the length in the Upload-Length header
field (unless the client has not supplied one), MUST indicate the limits in the
Upload-Limit header field, and SHOULD include Cache-Control: no-store.'
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import TusError
from ..http.request import service_of
from .state import state_headers
from .versions import Draft


async def retrieve_offset(request: Request, draft: Draft) -> Response:
    # -01 .. -08: 'The request MUST NOT include an Upload-Offset or Upload-Incomplete
    # (Upload-Complete) header field. The server MUST reject requests with either of
    # these fields by responding with a 400 (Bad Request) status code.'
    if draft.version <= 7 and any(
            name in request.headers
            for name in ("upload-offset", "upload-complete", "upload-incomplete")):
        raise TusError.invalid_offset_retrieval(draft.complete_field)
    service = service_of(request)
    info = await service.load_settled(request.path_params["upload_id"])
    headers = {**state_headers(service.settings, draft, info), "Cache-Control": "no-store"}
    return Response(status_code=204, headers=headers)
