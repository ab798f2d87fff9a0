"""Header fields both protocols read the same way: pure parsing and rendering, no I/O."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from email.utils import formatdate

from starlette.requests import Request

from ..errors import TusError, clip

OFFSET_OCTET_STREAM = "application/offset+octet-stream"

_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_META_KEY = re.compile(r"[^\s,]+")
_OWS = " \t"  # HTTP's optional whitespace around a field value (RFC 9110 5.6.3)
# Upload-Metadata is stored with the upload and echoed on every HEAD. tusd has no limit of
# its own (only Go's 1 MiB for all headers); 8 KiB holds Uppy's name, filename, filetype and
# relativePath of 255-character non-ASCII names with room to spare. A proxy must allow a
# longer header line than that (nginx's default 8 KiB counts the name too):
# deploy/nginx.conf sets 16 KiB, and tests/e2e/test_nginx.py sends 8 KiB both ways.
MAX_METADATA_BYTES = 8 * 1024


def parse_non_negative(value: str | None, error: TusError) -> int:
    """Upload-Offset / Upload-Length: a plain non-negative decimal, nothing else."""
    text = None if value is None else value.strip(_OWS)
    if text is None or _INT.fullmatch(text) is None:
        raise error
    return int(text)


def content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    return parse_non_negative(value, TusError.invalid_content_length())


def has_body(request: Request) -> bool:
    """Content follows the header section (a length above 0, or chunked)."""
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or length.strip() not in ("", "0")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """Upload-Metadata -> {key: base64 text or None}, values kept as sent.

    Keeping the base64 text (not the decoded bytes) lets HEAD echo the header
    byte-exact, whatever the values' encoding.
    """
    out: dict[str, str | None] = {}
    if header is None or not header.strip():
        return out
    if len(header) > MAX_METADATA_BYTES:
        raise TusError.invalid_metadata(
            f"header is {len(header)} bytes; at most {MAX_METADATA_BYTES} are accepted")
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0] or _META_KEY.fullmatch(parts[0]) is None:
            raise TusError.invalid_metadata(f"malformed pair {clip(pair.strip())}")
        key = parts[0]
        if key in out:
            raise TusError.invalid_metadata(f"duplicate key {clip(key)}")
        value = parts[1] if len(parts) == 2 and parts[1] else None
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise TusError.invalid_metadata(f"value of {clip(key)} is not base64") from None
        out[key] = value
    return out


def render_metadata(metadata: Mapping[str, str | None]) -> str:
    return ",".join(key if value is None else f"{key} {value}" for key, value in metadata.items())


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)
