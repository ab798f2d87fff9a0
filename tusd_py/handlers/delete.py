from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from storage import InvalidTransition, LockTimeout, UploadState

from .. import logs
from ..context import get_context, require_tus_resumable
from ..errors import TusError
from ..protocol import TUS_VERSION

_DELETABLE = frozenset(s for s in UploadState if not s.gone)


async def delete(request: Request) -> Response:
    """Termination. The lock makes an in-flight PATCH stop (and save) before we remove it."""
    require_tus_resumable(request)
    ctx = get_context(request)
    upload_id = request.path_params["upload_id"]
    await ctx.load(upload_id)
    try:
        async with ctx.backend.locker.hold(upload_id, on_release_requested=lambda: None,
                                           timeout=ctx.settings.lock_timeout):
            info = await ctx.load(upload_id)
            await ctx.backend.data.delete(upload_id)
            await ctx.discard_outputs(info)
            try:
                await ctx.backend.state.transition(upload_id, UploadState.TERMINATED,
                                                   expect=_DELETABLE)
            except InvalidTransition:
                raise TusError.gone("terminated") from None
    except LockTimeout:
        raise TusError.locked() from None
    logs.event("upload.terminated", upload_id, offset=info.offset, size=info.size)
    return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})
