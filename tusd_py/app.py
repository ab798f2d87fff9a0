"""The composition root: create_app(settings, backend) -> the ASGI app.

Everything a process shares is built here once: the storage backend, the one hook
sender, the upload service; the HTTP layer (tus, IETF, API, dashboard) and the
completion workers get them from here.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from storage import Backend, FinalFiles, Processor, embedded_backend

from . import ietf, tus
from .auth import AuthMiddleware, build_authenticator, current_subject
from .config import Settings
from .errors import TusError
from .hooks.configure import build_hooks
from .http.api import reprocess, thumbnail, upload_list, upload_status
from .http.cors import cors_middleware
from .http.dispatch import endpoint, render_tus_error
from .http.method_override import MethodOverrideMiddleware
from .http.observe import ObserveMiddleware
from .http.probes import healthz, metrics_page, readyz
from .ops import shutdown
from .processing.completion import start_processing
from .processing.pipeline import FinalizeProcessor
from .service import UploadService
from .service.expiry import run_sweeper

STATIC_DIR = Path(__file__).parent / "static"


def _dashboard_page(base_path: str) -> str:
    page = (STATIC_DIR / "index.html").read_text()
    # The page finds the tus endpoint in this meta tag, whatever --base-path is.
    return page.replace('name="tus-endpoint" content="/files/"',
                        f'name="tus-endpoint" content="{html.escape(base_path)}"')


def create_app(
    settings: Settings, backend: Backend | None = None, processor: Processor | None = None,
) -> Starlette:
    backend = backend or embedded_backend(settings.upload_dir)
    final = FinalFiles(settings.final_root)
    hooks = build_hooks(settings)
    service = UploadService(settings, backend, final, hooks=hooks)
    service.subject = current_subject
    processor = processor or FinalizeProcessor(settings, final)
    authenticator = build_authenticator(
        token=settings.auth_token, jwt_secret=settings.jwt_secret,
        jwt_public_key=settings.jwt_public_key,
        jwt_algorithms=[a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()],
        jwt_audience=settings.jwt_audience, jwt_issuer=settings.jwt_issuer,
        hook=settings.auth_hook)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        forget = shutdown.on_exit_signal(service.begin_shutdown)
        async with anyio.create_task_group() as tg:
            for task in backend.services:
                tg.start_soon(task)
            if hooks is not None:
                tg.start_soon(hooks.run)
            await start_processing(tg, backend, processor, settings, hooks)
            if settings.expiration > 0:
                tg.start_soon(run_sweeper, backend, settings)
            yield
            tg.cancel_scope.cancel()
        forget()
        await backend.aclose()

    base = settings.base_path
    collection = endpoint(tus.COLLECTION, ietf.COLLECTION)
    resource = endpoint(tus.RESOURCE, ietf.RESOURCE)
    routes: list[BaseRoute] = [
        Route(base, collection, methods=["POST", "PUT", "OPTIONS"]),
        Route(base.rstrip("/"), collection, methods=["POST", "PUT", "OPTIONS"]),
        Route(base + "{upload_id}", resource,
              methods=["HEAD", "PATCH", "DELETE", "GET", "OPTIONS"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/api/uploads", upload_list, methods=["GET"]),
        Route("/api/uploads/{upload_id}", upload_status, methods=["GET"]),
        Route("/api/uploads/{upload_id}/thumbnails/{name}", thumbnail, methods=["GET"]),
        Route("/api/uploads/{upload_id}/reprocess", reprocess, methods=["POST"]),
    ]
    if settings.expose_metrics:
        routes.append(Route(settings.metrics_path, metrics_page, methods=["GET"]))
    if settings.dashboard:
        page = _dashboard_page(settings.base_path)

        async def dashboard(request: Request) -> Response:
            return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

        routes += [
            Route("/", dashboard, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    elif settings.show_greeting:
        greeting = (f"Welcome to tusd-py\n\nThe tus upload endpoint is {base}\n"
                    "(the dashboard is off: --no-dashboard)\n")

        async def greet(request: Request) -> Response:
            return PlainTextResponse(greeting)

        routes.append(Route("/", greet, methods=["GET"]))
    cors = cors_middleware(settings)
    middleware = [
        Middleware(ObserveMiddleware, base_path=base),
        *([cors] if cors is not None else []),
        Middleware(MethodOverrideMiddleware),
    ]
    if authenticator is not None:
        middleware.append(Middleware(AuthMiddleware, authenticator=authenticator,
                                     protected=(base, "/api/")))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={TusError: render_tus_error},
        lifespan=lifespan,
    )
    # /files/%2F must be a 404 like any other unknown id, not a redirect to /files.
    app.router.redirect_slashes = False
    app.state.uploads = service
    return app
