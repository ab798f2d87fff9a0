"""Checksum algorithms a body can be verified with (tus checksum extension)."""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol

CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256", "sha512", "crc32")
DIGEST_SIZES = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64, "crc32": 4}


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


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm)
