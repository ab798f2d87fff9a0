"""Which image format a file holds, from its magic bytes (no image library needed).

The server sniffs every finished upload to decide whether to thumbnail it; this module
keeps Pillow out of the server process, which never decodes an image itself.
"""

from __future__ import annotations

import os
import struct

from ._brands import brand_kind


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The image format from the file's magic bytes, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str | None:
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        return brand_kind(head)
    if head[:2] == b"BM" and len(head) >= 18:
        (dib,) = struct.unpack("<I", head[14:18])
        if dib in (12, 16, 40, 52, 56, 64, 108, 124):
            return "bmp"
    return None
