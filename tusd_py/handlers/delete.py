from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..context import get_context, require_tus_resumable
from ..errors import TusError
from ..hooks import HookAnswer, HookUnavailable
from ..protocol import TUS_VERSION


async def delete(request: Request) -> Response:
    """Termination. The lock makes an in-flight PATCH stop (and save) before we remove it."""
    require_tus_resumable(request)
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    hooks = ctx.hooks
    if hooks is not None and hooks.on("pre-terminate"):
        info = await ctx.load(upload_id)
        try:
            answer = await hooks.ask("pre-terminate", info, request)
        except HookUnavailable as exc:
            # Fail closed: nothing is deleted unless the hook could say yes.
            raise TusError(502, "ERR_HOOK_FAILED", str(exc), {"Retry-After": "5"}) from None
        if answer.reject_termination:
            raise HookAnswer(answer.status or 400, answer.body or
                             "ERR_TERMINATION_REJECTED: termination rejected by the server\n",
                             answer.headers)
    info = await ctx.terminate(upload_id)
    if hooks is not None:
        hooks.tell("post-terminate", info, request)
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
