"""Pure functions for tus headers: parsing and rendering, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections.abc import Mapping
from email.utils import formatdate
from typing import Protocol

from .errors import TusError, clip

TUS_VERSION = "1.0.0"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"

_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_META_KEY = re.compile(r"[^\s,]+")
_OWS = " \t"  # HTTP's optional whitespace around a field value (RFC 9110 5.6.3)
# Upload-Metadata is stored with the upload and echoed on every HEAD. tusd has no limit of
# its own (only Go's 1 MiB for all headers); 8 KiB holds Uppy's name, filename, filetype and
# relativePath of 255-character non-ASCII names with room to spare, and is the header line
# limit of common proxies (nginx's large_client_header_buffers), so no client that works
# behind one is refused here.
MAX_METADATA_BYTES = 8 * 1024


def parse_non_negative(value: str | None, error: TusError) -> int:
    """Upload-Offset / Upload-Length: a plain non-negative decimal, nothing else."""
    text = None if value is None else value.strip(_OWS)
    if text is None or _INT.fullmatch(text) is None:
        raise error
    return int(text)


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


def metadata_text(metadata: Mapping[str, str | None], key: str) -> str | None:
    """A metadata value decoded as UTF-8 (invalid bytes replaced), or None."""
    value = metadata.get(key)
    if value is None:
        return None
    return base64.b64decode(value).decode("utf-8", errors="replace")


def decoded_metadata(metadata: Mapping[str, str | None]) -> dict[str, str | None]:
    return {key: metadata_text(metadata, key) for key in metadata}


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256", "sha512", "crc32")
DIGEST_SIZES = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64, "crc32": 4}


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm)


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: '<algorithm> <base64 digest>' -> (algorithm, digest)."""
    if header is None:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise TusError.invalid_checksum("expected '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    # Algorithm names are lowercase only (tus checksum extension).
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError.unsupported_checksum(algorithm)
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TusError.invalid_checksum("digest is not base64") from None
    if len(digest) != DIGEST_SIZES[algorithm]:
        # It could never match: refuse before the body is read, not after (460).
        raise TusError.invalid_checksum(
            f"a {algorithm} digest is {DIGEST_SIZES[algorithm]} bytes, not {len(digest)}")
    return algorithm, digest


def parse_concat(header: str | None) -> tuple[bool, list[str]] | None:
    """Upload-Concat -> (is_partial, final's part URLs) or None when absent."""
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return True, []
    if value.startswith("final;"):
        urls = value[len("final;"):].split()
        if urls:
            return False, urls
    raise TusError.invalid_concat(value)
