"""tus 1.0 header rules: the version, checksums and concatenation. Pure, no I/O."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from ..errors import TUS_VERSION, TusError
from ..service.checksums import CHECKSUM_ALGORITHMS, DIGEST_SIZES

__all__ = ["TUS_VERSION", "parse_checksum", "parse_concat", "require_tus_resumable"]


def require_tus_resumable(request: Request) -> None:
    """'The Server MUST NOT process the request' without a supported Tus-Resumable."""
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise TusError.unsupported_version()


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
