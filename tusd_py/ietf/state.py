"""Upload state as the draft exposes it, and the length rules shared by creation
and append (draft Section 'Length': 'If indicators (1) and (2) are both present in
the same request, their indicated lengths MUST match. If multiple requests include
indicators, their indicated values MUST match.')"""

from __future__ import annotations

import time

from starlette.requests import Request

from storage import UploadInfo

from ..config import Settings
from ..errors import TusError
from ..http.fields import content_length
from ..service import Caller, Hold, UploadService
from .headers import render_boolean, render_dictionary, sf_boolean, sf_integer
from .versions import Draft

PARTIAL_UPLOAD = "application/partial-upload"


def completes(request: Request, draft: Draft) -> bool | None:
    """Does this request's content end the upload? None when the field is absent.

    v3: `Upload-Incomplete: ?1` means more requests follow; v4+: `Upload-Complete: ?1`
    means this one is the last (-02: 'Replace Upload-Incomplete header with
    Upload-Complete').
    """
    if draft.uses_incomplete:
        incomplete = sf_boolean(request.headers.get("upload-incomplete"))
        return None if incomplete is None else not incomplete
    return sf_boolean(request.headers.get("upload-complete"))


def request_length(request: Request, offset: int, complete: bool) -> int | None:
    """The upload length this request indicates, if any.

    (1) `Upload-Complete: ?1` plus `Content-Length`: offset + Content-Length;
    (2) `Upload-Length`. Both present: they must match.
    """
    declared_raw = request.headers.get("upload-length")
    declared = sf_integer(declared_raw)
    if declared_raw is not None and declared is None:
        raise TusError.invalid_length("Upload-Length must be a non-negative integer")
    body = content_length(request)
    implied = offset + body if complete and body is not None else None
    if declared is not None and implied is not None and declared != implied:
        raise TusError.inconsistent_length(
            f"Upload-Length {declared} but the request completes the upload at {implied}")
    if declared is not None and body is not None and offset + body > declared:
        raise TusError.inconsistent_length(
            f"content of {body} bytes at offset {offset} exceeds Upload-Length {declared}")
    return declared if declared is not None else implied


def limits(settings: Settings, draft: Draft, info: UploadInfo | None = None) -> dict[str, int]:
    """`Upload-Limit` members: max-size (--max-size), min-size=0 (v8: a server without
    limits MUST still announce one), and the remaining lifetime (--expiration)."""
    members: dict[str, int] = {}
    if settings.max_size:
        members["max-size"] = settings.max_size
    members["min-size"] = 0
    if info is None:
        if settings.expiration > 0:
            members[draft.age_key] = int(settings.expiration)
    elif info.expires_at is not None and not info.state.finished:
        members[draft.age_key] = max(int(info.expires_at - time.time()), 0)
    return members


def limit_headers(settings: Settings, draft: Draft,
                  info: UploadInfo | None = None) -> dict[str, str]:
    if not draft.has_limits:
        return {}
    return {"Upload-Limit": render_dictionary(limits(settings, draft, info))}


def complete_header(draft: Draft, complete: bool) -> dict[str, str]:
    if draft.uses_incomplete:
        return {"Upload-Incomplete": render_boolean(not complete)}
    return {"Upload-Complete": render_boolean(complete)}


def state_headers(settings: Settings, draft: Draft, info: UploadInfo) -> dict[str, str]:
    """Offset, completeness, length (when known) and limits of an upload."""
    headers = {"Upload-Offset": str(info.offset),
               **complete_header(draft, info.state.finished)}
    if info.size is not None:
        headers["Upload-Length"] = str(info.size)
    headers.update(limit_headers(settings, draft, info))
    return headers


async def record_length(service: UploadService, info: UploadInfo, hold: Hold,
                        length: int | None, caller: Caller) -> UploadInfo:
    """'The server MUST record the length' once a request indicates it; a length that
    contradicts the recorded one is an inconsistent length (a problem type)."""
    if length is None:
        return info
    if info.size is not None:
        if length != info.size:
            raise TusError.inconsistent_length(
                f"length {length} differs from the recorded length {info.size}")
        return info
    if length < info.offset:
        raise TusError.inconsistent_length(
            f"length {length} is smaller than the offset {info.offset}")
    return await service.declare_length(info, hold, length, caller)
