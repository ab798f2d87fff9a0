"""Authentication in front of the tus endpoint and the /api views.

OPTIONS needs none: 'Preflight requests never carry credentials', and tus
clients discover the server with it. /healthz, /readyz, /metrics and the
dashboard's page and assets are public too.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import TUS_VERSION, TusError
from ..ops import logs
from .identity import Authenticator, Unauthorized, reset_subject, set_subject


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator,
                 protected: tuple[str, ...]) -> None:
        self.app = app
        self.authenticator = authenticator
        self.protected = protected  # path prefixes

    def _guards(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return False
        path: str = scope["path"]
        return any(path == p.rstrip("/") or path.startswith(p) for p in self.protected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._guards(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            principal = await self.authenticator.authenticate(request)
        except Unauthorized as exc:
            await self._refuse(request, TusError.unauthorized(str(exc)))(scope, receive, send)
            return
        except Exception as exc:
            # A broken auth hook must fail closed, and say why in the log.
            logging.getLogger(logs.LOGGER_NAME).error(
                "auth.crashed", exc_info=exc, extra={"fields": {"path": request.url.path}})
            await self._refuse(request, TusError.auth_unavailable(type(exc).__name__))(
                scope, receive, send)
            return
        token = set_subject(principal.subject)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_subject(token)

    @staticmethod
    def _refuse(request: Request, error: TusError) -> PlainTextResponse:
        logs.event("request.unauthorized", request.path_params.get("upload_id"),
                   level=logging.INFO if error.status == 401 else logging.ERROR,
                   method=request.method, path=request.url.path, status=error.status,
                   reason=error.message)
        headers = {"Tus-Resumable": TUS_VERSION, **error.headers}
        if "content-length" in request.headers or "transfer-encoding" in request.headers:
            headers["Connection"] = "close"  # the unread body must not become a request
        return PlainTextResponse(error.body, status_code=error.status, headers=headers)
