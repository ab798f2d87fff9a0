"""The scheme and host a client used, so Location URLs work behind proxies."""

from __future__ import annotations

import re

from starlette.requests import Request

_FORWARDED_PAIR = re.compile(r'(?i)\b(host|proto)=("[^"]*"|[^;,\s]*)')
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _forwarded(header: str) -> dict[str, str]:
    # Only the first (client-nearest to the trusted proxy) element counts.
    first = header.split(",")[0]
    return {k.lower(): v.strip('"') for k, v in _FORWARDED_PAIR.findall(first)}


def public_origin(request: Request, *, behind_proxy: bool) -> str:
    """'scheme://host[:port]' as the client sees it.

    Forwarded / X-Forwarded-* are trusted only with behind_proxy: otherwise any
    client could make the server hand out Location URLs to another host.
    """
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    if behind_proxy:
        fwd = _forwarded(request.headers.get("forwarded", ""))
        proto = fwd.get("proto") or request.headers.get("x-forwarded-proto", "")
        proto = proto.split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        fwd_host = fwd.get("host") or request.headers.get("x-forwarded-host", "")
        fwd_host = fwd_host.split(",")[0].strip()
        if fwd_host:
            host = fwd_host
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return f"{scheme}://{host}"
