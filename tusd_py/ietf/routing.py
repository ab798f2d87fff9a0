"""Where a request carrying `Upload-Draft-Interop-Version` goes, and how its errors look."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from storage import StorageUnavailable

from ..errors import TusError
from ..http.request import service_of
from ..ops import logs
from .append import append
from .cancel import cancel
from .creation import create
from .offset import retrieve_offset
from .options import options
from .problems import render
from .state import limit_headers
from .versions import HEADER, Draft, detect

DraftHandler = Callable[[Request, Draft], Awaitable[Response]]

COLLECTION: dict[str, DraftHandler] = {"POST": create, "PUT": create, "OPTIONS": options}
RESOURCE: dict[str, DraftHandler] = {
    "HEAD": retrieve_offset, "PATCH": append, "DELETE": cancel, "OPTIONS": options,
}


def is_draft(request: Request) -> bool:
    return HEADER in request.headers


async def handle(request: Request, table: dict[str, DraftHandler]) -> Response:
    """Run the draft handler for this method; every failure becomes a draft response."""
    draft: Draft | None = None
    try:
        draft = detect(request.headers)
        assert draft is not None
        handler = table.get(request.method)
        if handler is None:
            raise TusError.method_not_allowed(", ".join(table))
        return await handler(request, draft)
    except TusError as exc:
        extra = limit_headers(service_of(request).settings, draft) if (
            draft is not None and exc.status == 413) else {}
        return render(request, draft, exc, extra)
    except StorageUnavailable as exc:
        return render(request, draft, TusError.unavailable(str(exc.__cause__ or exc)))
    except Exception as exc:
        logging.getLogger(logs.LOGGER_NAME).error(
            "request.crashed", exc_info=exc,
            extra={"fields": {"upload_id": request.path_params.get("upload_id"),
                              "method": request.method, "path": request.url.path}})
        return render(request, draft, TusError.internal(type(exc).__name__))
