"""Every HTTP request gets a request id (logged with each event it causes) and is counted."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs, metrics

# A caller's (e.g. a proxy's) X-Request-ID is kept when it is a plain token; anything else
# could forge log fields, so it is replaced.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Label values are bounded: random methods from a fuzzer must not grow the metrics forever.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                   "")
        if not _CALLER_ID.fullmatch(rid):
            rid = uuid.uuid4().hex[:16]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        token = logs.request_id.set(rid)
        metrics.requests.labels(
            scope["method"] if scope["method"] in _METHODS else "OTHER").inc()
        metrics.connections_open.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.connections_open.dec()
            logs.request_id.reset(token)
