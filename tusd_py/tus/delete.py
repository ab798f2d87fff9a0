"""Termination: DELETE on an upload."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http.request import caller_of, service_of
from .headers import TUS_VERSION, require_tus_resumable


async def delete(request: Request) -> Response:
    """'the Server SHOULD free up all resources' - and stop an append in flight first."""
    require_tus_resumable(request)
    await service_of(request).terminate(request.path_params["upload_id"], caller_of(request))
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
