"""One endpoint per route: the tus handler, or the IETF draft's for a request that
carries Upload-Draft-Interop-Version; tus errors rendered as tus responses."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from storage import StorageUnavailable

from .. import ietf
from ..errors import TUS_VERSION, TusError
from ..ops import logs, metrics
from ..tus import Handler
from .fields import has_body


async def render_tus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TusError)
    metrics.errors.labels(str(exc.status), exc.code).inc()
    # Every refusal is visible: "my upload failed and the logs say nothing" must not happen.
    logs.event("request.failed" if exc.status >= 500 else "request.rejected",
               request.path_params.get("upload_id"),
               level=logging.ERROR if exc.status >= 500 else logging.INFO,
               method=request.method, status=exc.status, code=exc.code, reason=exc.message)
    headers = {"Tus-Resumable": TUS_VERSION, **exc.headers}
    if has_body(request):
        # The body may be partly unread: keeping the connection would parse its
        # rest as the next request (tusd closes on errors for the same reason).
        headers["Connection"] = "close"
    return PlainTextResponse(exc.body, status_code=exc.status, headers=headers)


async def _render_crash(request: Request, exc: Exception) -> Response:
    logging.getLogger(logs.LOGGER_NAME).error(
        "request.crashed", exc_info=exc,
        extra={"fields": {"upload_id": request.path_params.get("upload_id"),
                          "method": request.method, "path": request.url.path}})
    return await render_tus_error(request, TusError.internal(f"{type(exc).__name__}"))


def endpoint(table: dict[str, Handler], draft: dict[str, ietf.DraftHandler]) -> Handler:
    """tus handlers, or the IETF draft's for a request with Upload-Draft-Interop-Version."""

    async def dispatch(request: Request) -> Response:
        try:
            if ietf.is_draft(request) and request.method != "GET":
                if "tus-resumable" in request.headers and request.method != "OPTIONS":
                    raise TusError.protocol_conflict()
                return await ietf.handle(request, draft)
            if request.method not in table:
                # PUT creates uploads for the draft only.
                raise TusError.method_not_allowed(", ".join(table))
            return await table[request.method](request)
        except TusError:
            raise
        except StorageUnavailable as exc:
            error = TusError.unavailable(str(exc.__cause__ or exc))
            if request.method == "HEAD":
                # tus-js-client starts over from byte 0 after any failed HEAD except a 423
                # ("retry later"): an outage must not cost the client its upload.
                error.status = 423
            raise error from exc
        except Exception as exc:
            # Rendered here, inside the CORS middleware, so browsers can read the 500.
            return await _render_crash(request, exc)

    return dispatch
