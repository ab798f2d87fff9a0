"""OPTIONS carrying the draft header: 'the server MUST include the Accept-Patch
header field ... MUST include the full application/partial-upload media type' and
'The Upload-Limit header field SHOULD be included' (draft Section 'Limits')."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http.request import service_of
from .state import PARTIAL_UPLOAD, limit_headers
from .versions import Draft


async def options(request: Request, draft: Draft) -> Response:
    headers = {"Accept-Patch": PARTIAL_UPLOAD,
               **limit_headers(service_of(request).settings, draft)}
    return Response(status_code=204, headers=headers)
