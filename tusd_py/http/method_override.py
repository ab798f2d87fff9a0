"""X-HTTP-Method-Override, for clients behind proxies that allow only GET and POST."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_OVERRIDABLE = {"PATCH", "DELETE", "HEAD", "GET", "OPTIONS"}


class MethodOverrideMiddleware:
    """'X-HTTP-Method-Override: the Server MUST interpret it as the request's method.'

    Honoured on POST only (as tusd does): a GET cannot smuggle a DELETE.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in _OVERRIDABLE:
                        scope = {**scope, "method": method}
                    break
        await self.app(scope, receive, send)
