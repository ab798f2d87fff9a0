"""The response for a download: by the kernel (sendfile) when the server offers it and
the upload is a local file, else read through the process in small chunks."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import anyio.to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..ops import logs
from ..service import Download
from .sendfile import EXTENSION

CHUNK = 256 << 10  # what one download holds in memory when read through the process


class DownloadResponse(Response):
    def __init__(self, download: Download, start: int, end: int, status: int,
                 headers: Mapping[str, str], idle_timeout: float) -> None:
        super().__init__(status_code=status, headers=headers)  # Content-Length is in headers
        self.download = download
        self.start, self.end = start, end
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        extension = (scope.get("extensions") or {}).get(EXTENSION)
        path = self.download.file
        count = self.end - self.start
        if extension is not None and path is not None:
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
            try:
                sent = await extension["send"](fd, self.start, count, self.idle_timeout)
            finally:
                os.close(fd)
            if sent == count:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:  # the reader went away or stopped reading: the connection was closed
                logs.event("download.interrupted", self.download.upload_id,
                           level=logging.WARNING, sent=sent, of=count)
            return
        chunks = self.download.read(self.download.upload_id, self.start, self.end)
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
