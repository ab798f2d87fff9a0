"""CORS for browser tus clients, on every response including errors.

Starlette's CORSMiddleware does the work (origin lists and regexes, preflights,
exposed headers, max-age, credentials); this module only turns the settings into
its arguments. The header lists are tusd's defaults plus the IETF draft's fields;
--cors-allow-headers / --cors-expose-headers add to them, as in tusd.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..config import Settings

ALLOW_METHODS = ("POST", "HEAD", "PATCH", "OPTIONS", "GET", "DELETE", "PUT")
ALLOW_HEADERS = (
    "Authorization", "Origin", "X-Requested-With", "X-Request-ID", "X-HTTP-Method-Override",
    "Content-Type", "Upload-Length", "Upload-Offset", "Tus-Resumable", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Upload-Complete",
    "Upload-Incomplete", "Upload-Draft-Interop-Version", "Content-Disposition",
)
EXPOSE_HEADERS = (
    "Upload-Offset", "Location", "Upload-Length", "Tus-Version", "Tus-Resumable",
    "Tus-Max-Size", "Tus-Extension", "Tus-Checksum-Algorithm", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Expires", "Upload-Limit",
    "Upload-Complete", "Upload-Incomplete", "Upload-Draft-Interop-Version", "Content-Range",
    "Content-Disposition", "Accept-Patch", "X-Request-ID",
)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def cors_middleware(settings: Settings) -> Middleware | None:
    """None with --disable-cors (a proxy in front answers CORS itself)."""
    if settings.disable_cors:
        return None
    spec = settings.cors_origins.strip()
    origins: list[str] = []
    regex: str | None = None
    if settings.cors_allow_origin:
        regex = settings.cors_allow_origin  # tusd's -cors-allow-origin: a regex
    elif spec.startswith("re:"):
        regex = spec[3:]  # matched in full against the Origin header
    elif spec in ("", "*"):
        origins = ["*"]
    else:
        origins = [o.rstrip("/") for o in _csv(spec)]
    return Middleware(
        CORSMiddleware, allow_origins=origins, allow_origin_regex=regex,
        allow_methods=[*ALLOW_METHODS, *_csv(settings.cors_allow_methods)],
        allow_headers=[*ALLOW_HEADERS, *_csv(settings.cors_allow_headers)],
        expose_headers=[*EXPOSE_HEADERS, *_csv(settings.cors_expose_headers)],
        allow_credentials=settings.cors_allow_credentials, max_age=settings.cors_max_age)
