from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import get_context


async def options(request: Request) -> Response:
    """Discovery. 'The Client SHOULD NOT include the Tus-Resumable header in the
    request and the Server MUST ignore the header.'"""
    return Response(status_code=204, headers=get_context(request).tus_headers())
