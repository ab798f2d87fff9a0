"""Upload cancellation: DELETE on the upload resource (draft Section 'Upload
Cancellation'): 'the server SHOULD terminate any in-flight requests to the upload
resource before sending the response' - taking the lock does that (the running
transfer is released, saves, and ends)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http.request import caller_of, service_of
from .versions import Draft


async def cancel(request: Request, draft: Draft) -> Response:
    await service_of(request).terminate(request.path_params["upload_id"], caller_of(request),
                                        protocol="ietf-draft")
    return Response(status_code=204)
