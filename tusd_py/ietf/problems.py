"""Error responses for draft requests: RFC 9457 problem details where the draft
defines the error's problem type (tusd_py/errors.py names it), plain text otherwise,
never a tus header."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..errors import TusError
from ..http.fields import has_body
from ..ops import logs
from .versions import Draft

PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
_TUS_ONLY = ("tus-resumable", "tus-version")


def document(exc: TusError) -> dict[str, Any]:
    title = exc.message
    if exc.problem == "mismatching-upload-offset":
        title = "offset from request does not match offset of resource"
    return {"type": PROBLEM_BASE + str(exc.problem), "title": title,
            **{k: v for k, v in exc.members.items() if v is not None}}


def render(request: Request, draft: Draft | None, exc: TusError,
           extra: Mapping[str, str] | None = None) -> Response:
    logs.event("request.failed" if exc.status >= 500 else "request.rejected",
               request.path_params.get("upload_id"),
               level=logging.ERROR if exc.status >= 500 else logging.INFO,
               method=request.method, status=exc.status, code=exc.code, reason=exc.message,
               protocol="ietf-draft", interop_version=draft.requested if draft else None)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _TUS_ONLY}
    headers.update(extra or {})
    if has_body(request):
        # The body may be partly unread: keeping the connection would parse its
        # rest as the next request.
        headers["Connection"] = "close"
    if exc.problem is not None and draft is not None and draft.has_problem(exc.problem):
        return Response(json.dumps(document(exc)), status_code=exc.status, headers=headers,
                        media_type="application/problem+json")
    return PlainTextResponse(exc.body, status_code=exc.status, headers=headers)
