from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import get_context, require_tus_resumable
from ..protocol import TUS_VERSION


async def delete(request: Request) -> Response:
    """Termination. The lock makes an in-flight PATCH stop (and save) before we remove it."""
    require_tus_resumable(request)
    await get_context(request).terminate(request.path_params["upload_id"])
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
