"""Every HTTP request gets a request id (logged with each event it causes), is counted,
and is logged once when it ends (tusd logs every request too)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..ops import logs, metrics

# A caller's (e.g. a proxy's) X-Request-ID is kept when it is a plain token; anything else
# could forge log fields, so it is replaced.
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Label values are bounded: random methods from a fuzzer must not grow the metrics forever.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds: their lines are debug-level.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, base_path: str = "/files/") -> None:
        self.app = app
        self.base_path = base_path

    def _upload_id(self, path: str) -> str | None:
        if path.startswith(self.base_path):
            rest = path[len(self.base_path):]
            return rest if rest and "/" not in rest else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                   "")
        if not _CALLER_ID.fullmatch(rid):
            rid = uuid.uuid4().hex[:16]

        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        token = logs.request_id.set(rid)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        metrics.requests.labels(method).inc()
        metrics.connections_open.inc()
        started = time.monotonic()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.connections_open.dec()
            logs.event("request.done", self._upload_id(scope["path"]),
                       level=logging.WARNING if status >= 500 or not status
                       else logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO,
                       method=method, path=scope["path"][:200], status=status,
                       ms=round((time.monotonic() - started) * 1000, 1))
            logs.request_id.reset(token)
