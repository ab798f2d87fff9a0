"""CORS for browser tus clients, applied to every response including errors."""

from __future__ import annotations

import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE, PUT"
ALLOW_HEADERS = ", ".join([
    "Authorization", "Origin", "X-Requested-With", "X-Request-ID", "X-HTTP-Method-Override",
    "Content-Type", "Upload-Length", "Upload-Offset", "Tus-Resumable", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Upload-Complete",
    "Upload-Incomplete", "Upload-Draft-Interop-Version", "Content-Disposition",
])
EXPOSE_HEADERS = ", ".join([
    "Upload-Offset", "Location", "Upload-Length", "Tus-Version", "Tus-Resumable",
    "Tus-Max-Size", "Tus-Extension", "Tus-Checksum-Algorithm", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Expires", "Upload-Limit",
    "Upload-Complete", "Upload-Incomplete", "Upload-Draft-Interop-Version", "Content-Range",
    "Content-Disposition", "Accept-Patch",
])
MAX_AGE = "86400"


class OriginPolicy:
    """'*' (any origin), a comma-separated list, or 're:<regex>' matched in full."""

    def __init__(self, spec: str) -> None:
        spec = spec.strip()
        self.any = spec in ("", "*")
        self.regex = re.compile(spec[3:]) if spec.startswith("re:") else None
        self.origins = frozenset(o.strip().rstrip("/") for o in spec.split(",") if o.strip())

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        if self.regex is not None:
            return self.regex.fullmatch(origin) is not None
        return origin.rstrip("/") in self.origins


class CORSMiddleware:
    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.policy.allows(origin)
        if (scope["method"] == "OPTIONS"
                and "access-control-request-method" in headers):
            await self._preflight(send, origin, allowed)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out.add_vary_header("Origin")
                if allowed:
                    out["Access-Control-Allow-Origin"] = origin
                    out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: str, allowed: bool) -> None:
        headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
        if allowed:
            headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", MAX_AGE.encode()),
            ]
        # A disallowed origin gets a plain 403 without CORS headers: the browser blocks it.
        await send({"type": "http.response.start", "status": 204 if allowed else 403,
                    "headers": headers})
        await send({"type": "http.response.body", "body": b""})
