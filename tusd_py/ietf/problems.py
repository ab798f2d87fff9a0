"""Error responses for draft requests: RFC 9457 problem details where the draft
defines a problem type, plain text otherwise, never a tus header."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import logs
from ..errors import TusError
from .versions import Draft

PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
_TUS_ONLY = ("tus-resumable", "tus-version")


class DraftProblem(TusError):
    """A TusError that also has a draft problem type (and its extension members)."""

    def __init__(
        self, status: int, code: str, message: str, kind: str,
        members: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, headers)
        self.kind = kind
        self.members = dict(members or {})

    def document(self) -> dict[str, Any]:
        return {"type": PROBLEM_BASE + self.kind, "title": self.message, **self.members}

    @classmethod
    def mismatching_offset(cls, expected: int, provided: int) -> DraftProblem:
        """'Mismatching Offset' problem type; 'The response MUST include the correct
        offset in the Upload-Offset header field.'"""
        return cls(409, "ERR_MISMATCHED_OFFSET",
                   "offset from request does not match offset of resource",
                   "mismatching-upload-offset",
                   {"expected-offset": expected, "provided-offset": provided},
                   {"Upload-Offset": str(expected)})

    @classmethod
    def inconsistent_length(cls, why: str) -> DraftProblem:
        return cls(400, "ERR_INCONSISTENT_UPLOAD_LENGTH",
                   f"inconsistent length values for upload: {why}",
                   "inconsistent-upload-length")

    @classmethod
    def completed_upload(cls) -> DraftProblem:
        return cls(400, "ERR_UPLOAD_COMPLETED", "upload is already completed",
                   "completed-upload")


def has_unread_body(request: Request) -> bool:
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or length.strip() not in ("", "0")


def render(request: Request, draft: Draft | None, exc: TusError,
           extra: Mapping[str, str] | None = None) -> Response:
    logs.event("request.failed" if exc.status >= 500 else "request.rejected",
               request.path_params.get("upload_id"),
               level=logging.ERROR if exc.status >= 500 else logging.INFO,
               method=request.method, status=exc.status, code=exc.code, reason=exc.message,
               protocol="ietf-draft", interop_version=draft.requested if draft else None)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _TUS_ONLY}
    headers.update(extra or {})
    if has_unread_body(request):
        # The body may be partly unread: keeping the connection would parse its
        # rest as the next request.
        headers["Connection"] = "close"
    if isinstance(exc, DraftProblem) and draft is not None and draft.has_problem(exc.kind):
        return Response(json.dumps(exc.document()), status_code=exc.status, headers=headers,
                        media_type="application/problem+json")
    return PlainTextResponse(exc.body, status_code=exc.status, headers=headers)
