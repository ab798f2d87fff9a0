"""Discovery: OPTIONS, and the extension list the server advertises."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..config import Settings
from ..http.request import service_of
from ..service.checksums import CHECKSUM_ALGORITHMS
from .headers import TUS_VERSION


def extensions(settings: Settings) -> list[str]:
    ext = ["creation", "creation-with-upload", "creation-defer-length"]
    if not settings.disable_termination:
        ext.append("termination")
    if not settings.disable_concatenation:
        ext += ["concatenation", "concatenation-unfinished"]
    ext.append("checksum")
    if settings.expiration > 0:
        ext.append("expiration")
    return ext


def tus_headers(settings: Settings) -> dict[str, str]:
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(extensions(settings)),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
    if settings.max_size:
        headers["Tus-Max-Size"] = str(settings.max_size)
    return headers


async def options(request: Request) -> Response:
    """Discovery. 'The Client SHOULD NOT include the Tus-Resumable header in the
    request and the Server MUST ignore the header.'"""
    return Response(status_code=204, headers=tus_headers(service_of(request).settings))
