"""Upload cancellation: DELETE on the upload resource (draft Section 'Upload
Cancellation'): 'the server SHOULD terminate any in-flight requests to the upload
resource before sending the response' - taking the lock does that (the running
transfer is released, saves, and ends)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from storage import InvalidTransition, LockTimeout, UploadState

from .. import logs
from ..context import get_context
from ..errors import TusError
from .versions import Draft

_CANCELLABLE = frozenset(s for s in UploadState if not s.gone)


async def cancel(request: Request, draft: Draft) -> Response:
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
                                                   expect=_CANCELLABLE)
            except InvalidTransition:
                raise TusError.gone("terminated") from None
    except LockTimeout:
        raise TusError.locked() from None
    logs.event("upload.terminated", upload_id, offset=info.offset, size=info.size,
               protocol="ietf-draft")
    return Response(status_code=204)
