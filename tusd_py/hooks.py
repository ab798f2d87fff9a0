"""Post-finish webhook: tusd v2's HTTP hook shape, sent after processing, retried."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from storage import UploadInfo

from . import logs
from .protocol import decoded_metadata

RETRIES = 5
BACKOFF = 1.0
TIMEOUT = 15.0


def tusd_event(hook_type: str, info: UploadInfo, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON tusd's HTTP hooks send, so existing hook receivers keep working."""
    file = (info.result or {}).get("file") or {}
    return {
        "Type": hook_type,
        "Event": {
            "Upload": {
                "ID": info.id, "Size": info.size or 0, "SizeIsDeferred": info.size is None,
                "Offset": info.offset,
                "MetaData": {k: v or "" for k, v in decoded_metadata(info.metadata).items()},
                "IsPartial": info.partial, "IsFinal": info.is_final,
                "PartialUploads": list(info.parts) or None,
                "Storage": {"Type": "filestore", "Path": file.get("path", "")},
            },
            "HTTPRequest": {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}},
        },
        # What tusd cannot tell: the processing result (state, file, image, thumbnails).
        "TusdPy": dict(extra),
    }


class HttpHook:
    def __init__(self, url: str) -> None:
        self.url = url

    async def post_finish(self, info: UploadInfo, upload: Mapping[str, Any]) -> bool:
        body = tusd_event("post-finish", info, upload)
        delay = BACKOFF
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            for attempt in range(1, RETRIES + 1):
                try:
                    response = await client.post(self.url, json=body)
                    if response.status_code < 500:
                        logs.event("hook.sent", info.id, type="post-finish",
                                   status=response.status_code, attempt=attempt)
                        return response.is_success
                    error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                logs.event("hook.failed", info.id, level=logging.WARNING, type="post-finish",
                           error=error, attempt=attempt, will_retry=attempt < RETRIES)
                if attempt < RETRIES:
                    await anyio.sleep(delay)
                    delay *= 2
        return False
