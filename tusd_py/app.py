"""create_app(settings, backend) -> the ASGI app."""

from __future__ import annotations

import html
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from storage import (
    Backend,
    FinalFiles,
    Processor,
    StorageUnavailable,
    UploadNotFound,
    UploadState,
    embedded_backend,
)

from . import ietf, logs, metrics, shutdown
from .access import AuthMiddleware
from .auth import build_authenticator
from .buffers import WriteBuffers
from .completion import start_processing
from .context import TusContext
from .cors import CORSMiddleware, OriginPolicy
from .errors import TusError
from .expiry import run_sweeper
from .handlers.api import reprocess, thumbnail, upload_list, upload_status
from .handlers.delete import delete
from .handlers.get import get
from .handlers.head import head
from .handlers.options import options
from .handlers.patch import patch
from .handlers.post import post
from .hooks import HOOK_TYPES, Hooks, HttpHook
from .limits import UploadSlots
from .observe import ObserveMiddleware
from .pipeline import FinalizeProcessor
from .protocol import TUS_VERSION
from .settings import Settings

Handler = Callable[[Request], Awaitable[Response]]
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


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or length.strip() not in ("", "0")


async def _render_tus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TusError)
    metrics.errors.labels(str(exc.status), exc.code).inc()
    # Every refusal is visible: "my upload failed and the logs say nothing" must not happen.
    logs.event("request.failed" if exc.status >= 500 else "request.rejected",
               request.path_params.get("upload_id"),
               level=logging.ERROR if exc.status >= 500 else logging.INFO,
               method=request.method, status=exc.status, code=exc.code, reason=exc.message)
    headers = {"Tus-Resumable": TUS_VERSION, **exc.headers}
    if _has_body(request):
        # The body may be partly unread: keeping the connection would parse its
        # rest as the next request (tusd closes on errors for the same reason).
        headers["Connection"] = "close"
    return PlainTextResponse(exc.body, status_code=exc.status, headers=headers)


async def _render_crash(request: Request, exc: Exception) -> Response:
    logging.getLogger(logs.LOGGER_NAME).error(
        "request.crashed", exc_info=exc,
        extra={"fields": {"upload_id": request.path_params.get("upload_id"),
                          "method": request.method, "path": request.url.path}})
    return await _render_tus_error(request, TusError.internal(f"{type(exc).__name__}"))


def _dispatch(table: dict[str, Handler], draft: dict[str, ietf.DraftHandler]) -> Handler:
    """tus handlers, or the IETF draft's for a request with Upload-Draft-Interop-Version."""

    async def endpoint(request: Request) -> Response:
        try:
            if ietf.is_draft(request) and request.method != "GET":
                if "tus-resumable" in request.headers and request.method != "OPTIONS":
                    raise ietf.conflict()
                return await ietf.handle(request, draft)
            if request.method not in table:
                # PUT creates uploads for the draft only.
                return PlainTextResponse("method not allowed\n", status_code=405,
                                         headers={"Allow": ", ".join(table)})
            return await table[request.method](request)
        except TusError:
            raise
        except StorageUnavailable as exc:
            error = TusError.unavailable(str(exc.__cause__ or exc))
            if request.method == "HEAD":
                # tus-js-client starts over from byte 0 after any failed HEAD except a 423
                # ("retry later"): an outage must not cost the client its upload.
                error.status = 423
            raise error from exc
        except Exception as exc:
            # Rendered here, inside the CORS middleware, so browsers can read the 500.
            return await _render_crash(request, exc)

    return endpoint


STATIC_DIR = Path(__file__).parent / "static"


def _dashboard_page(base_path: str) -> str:
    page = (STATIC_DIR / "index.html").read_text()
    # The page finds the tus endpoint in this meta tag, whatever --base-path is.
    return page.replace('name="tus-endpoint" content="/files/"',
                        f'name="tus-endpoint" content="{html.escape(base_path)}"')


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def _readyz(request: Request) -> Response:
    """Ready when the state store answers and the upload volume takes writes."""
    ctx: TusContext = request.app.state.tus
    try:
        await ctx.backend.state.get("readyz-probe")
    except UploadNotFound:
        pass
    except Exception as exc:
        return PlainTextResponse(f"state store unavailable: {exc}\n", status_code=503)

    def probe() -> None:
        ctx.settings.upload_dir.mkdir(parents=True, exist_ok=True)
        path = ctx.settings.upload_dir / f".readyz-{uuid.uuid4().hex}"
        try:
            with path.open("wb") as f:
                f.write(b"ok")
        finally:
            path.unlink(missing_ok=True)

    try:
        await anyio.to_thread.run_sync(probe)
    except OSError as exc:
        return PlainTextResponse(f"upload dir not writable: {os.strerror(exc.errno or 0)}\n",
                                 status_code=503)
    return PlainTextResponse("ready\n")


async def _metrics(request: Request) -> Response:
    ctx: TusContext = request.app.state.tus
    try:
        waiting = await ctx.backend.state.scan(frozenset({UploadState.COMPLETED}))
        metrics.processing_queue_depth.set(sum(1 for i in waiting if not i.partial))
    except StorageUnavailable:
        pass  # the other metrics are still worth a scrape
    body, content_type = metrics.exposition()
    return Response(body, headers={"Content-Type": content_type})


def _hooks(settings: Settings) -> Hooks | None:
    if not settings.hooks_http:
        return None
    events = frozenset(e.strip() for e in settings.hooks_enabled_events.split(",") if e.strip())
    unknown = events - set(HOOK_TYPES)
    if unknown:
        raise ValueError(f"unknown hook events: {', '.join(sorted(unknown))}")
    hook = HttpHook(settings.hooks_http, retries=settings.hooks_http_retry + 1,
                    backoff=settings.hooks_http_backoff, timeout=settings.hooks_http_timeout)
    return Hooks(hook, events)


def create_app(
    settings: Settings, backend: Backend | None = None, processor: Processor | None = None,
) -> Starlette:
    backend = backend or embedded_backend(settings.upload_dir)
    final = FinalFiles(settings.final_root)
    hooks = _hooks(settings)
    ctx = TusContext(settings, backend, final, hooks=hooks,
                     slots=UploadSlots(settings.max_concurrent_uploads),
                     buffers=WriteBuffers(settings.write_buffer_bytes,
                                          settings.write_buffer_total))
    processor = processor or FinalizeProcessor(settings, final)
    authenticator = build_authenticator(
        token=settings.auth_token, jwt_secret=settings.jwt_secret,
        jwt_public_key=settings.jwt_public_key,
        jwt_algorithms=[a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()],
        jwt_audience=settings.jwt_audience, jwt_issuer=settings.jwt_issuer,
        hook=settings.auth_hook)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        forget = shutdown.on_exit_signal(ctx.begin_shutdown)
        async with anyio.create_task_group() as tg:
            for service in backend.services:
                tg.start_soon(service)
            if hooks is not None:
                tg.start_soon(hooks.run)
            await start_processing(tg, backend, processor, settings)
            if settings.expiration > 0:
                tg.start_soon(run_sweeper, ctx)
            yield
            tg.cancel_scope.cancel()
        forget()
        await backend.aclose()

    base = settings.base_path
    collection = _dispatch({"POST": post, "OPTIONS": options}, ietf.COLLECTION)
    resource = _dispatch({"HEAD": head, "PATCH": patch, "DELETE": delete, "GET": get,
                          "OPTIONS": options}, ietf.RESOURCE)
    routes: list[BaseRoute] = [
        Route(base, collection, methods=["POST", "PUT", "OPTIONS"]),
        Route(base.rstrip("/"), collection, methods=["POST", "PUT", "OPTIONS"]),
        Route(base + "{upload_id}", resource,
              methods=["HEAD", "PATCH", "DELETE", "GET", "OPTIONS"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/api/uploads", upload_list, methods=["GET"]),
        Route("/api/uploads/{upload_id}", upload_status, methods=["GET"]),
        Route("/api/uploads/{upload_id}/thumbnails/{name}", thumbnail, methods=["GET"]),
        Route("/api/uploads/{upload_id}/reprocess", reprocess, methods=["POST"]),
    ]
    if settings.dashboard:
        page = _dashboard_page(settings.base_path)

        async def dashboard(request: Request) -> Response:
            return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

        routes += [
            Route("/", dashboard, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    middleware = [
        Middleware(ObserveMiddleware, base_path=base),
        Middleware(CORSMiddleware, policy=OriginPolicy(settings.cors_origins)),
        Middleware(MethodOverrideMiddleware),
    ]
    if authenticator is not None:
        middleware.append(Middleware(AuthMiddleware, authenticator=authenticator,
                                     protected=(base, "/api/")))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={TusError: _render_tus_error},
        lifespan=lifespan,
    )
    # /files/%2F must be a 404 like any other unknown id, not a redirect to /files.
    app.router.redirect_slashes = False
    app.state.tus = ctx
    return app
