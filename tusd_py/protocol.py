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

from .errors import TusError

TUS_VERSION = "1.0.0"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"

_INT = re.compile(r"0|[1-9][0-9]{0,18}")
_META_KEY = re.compile(r"[^\s,]+")


def parse_non_negative(value: str | None, error: TusError) -> int:
    """Upload-Offset / Upload-Length: a plain non-negative decimal, nothing else."""
    if value is None or _INT.fullmatch(value.strip()) is None:
        raise error
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """Upload-Metadata -> {key: base64 text or None}, values kept as sent.

    Keeping the base64 text (not the decoded bytes) lets HEAD echo the header
    byte-exact, whatever the values' encoding.
    """
    out: dict[str, str | None] = {}
    if header is None or not header.strip():
        return out
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0] or _META_KEY.fullmatch(parts[0]) is None:
            raise TusError.invalid_metadata(f"malformed pair {pair.strip()!r}")
        key = parts[0]
        if key in out:
            raise TusError.invalid_metadata(f"duplicate key {key!r}")
        value = parts[1] if len(parts) == 2 and parts[1] else None
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise TusError.invalid_metadata(f"value of {key!r} is not base64") from None
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
