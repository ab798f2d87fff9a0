from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import get_context, require_tus_resumable
from ..protocol import TUS_VERSION


async def delete(request: Request) -> Response:
    """Termination. The lock makes an in-flight PATCH stop (and save) before we remove it."""
    require_tus_resumable(request)
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    hooks = ctx.hooks
    if hooks is not None and hooks.on("pre-terminate"):
        await hooks.gate(
            "pre-terminate", await ctx.load(upload_id), request,
            refused=lambda answer: answer.reject_termination,
            default_body="ERR_TERMINATION_REJECTED: termination rejected by the server\n")
    info = await ctx.terminate(upload_id)
    if hooks is not None:
        hooks.tell("post-terminate", info, request)
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
