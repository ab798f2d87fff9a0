from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from ..errors import TusError
from ..http.download import DownloadResponse
from ..http.request import service_of
from ..service.metadata import metadata_text
from .headers import TUS_VERSION

# At most 18 digits: larger numbers are no byte offset, and int() of thousands of digits
# is slow (and refused by Python past 4300).
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
# Served inline only when a browser cannot run them as a page (tusd's allow-list idea).
_INLINE = re.compile(r"(image/(png|jpeg|gif|webp|avif|bmp)|video/.+|audio/.+|application/pdf"
                     r"|text/plain)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single 'bytes=a-b' range -> [start, end); None for the whole body."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None  # multi-range or garbage: RFC 9110 lets us send the whole body
    if not match[1]:
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise TusError.range_not_satisfiable(size)
        return max(size - suffix, 0), size
    start = int(match[1])
    end = int(match[2]) + 1 if match[2] else size
    if start >= size or end <= start:
        raise TusError.range_not_satisfiable(size)
    return start, min(end, size)


def content_disposition(filename: str | None, inline: bool) -> str:
    kind = "inline" if inline else "attachment"
    if not filename:
        return kind
    # RFC 6266: an ASCII fallback plus filename* carrying the exact UTF-8 name.
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def get(request: Request) -> Response:
    """Download a finished upload (not part of tus; every tus server offers it)."""
    service = service_of(request)
    info = await service.load(request.path_params["upload_id"])
    download = await service.download(info)
    size = download.size
    claimed = (metadata_text(info.metadata, "filetype") or "").strip().lower()
    content_type = claimed if _MIME.fullmatch(claimed) else "application/octet-stream"
    filename = metadata_text(info.metadata, "filename")
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(
            filename, _INLINE.fullmatch(content_type) is not None),
        "Accept-Ranges": "bytes",
        "Tus-Resumable": TUS_VERSION,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "no-store",
    }
    span = parse_range(request.headers.get("range"), size)
    start, end = span or (0, size)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD" or end == start:
        return Response(status_code=status, headers=headers)
    return DownloadResponse(download, start, end, status, headers,
                            idle_timeout=service.settings.network_timeout)
