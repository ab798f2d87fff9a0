"""HEIF and AVIF files told apart by the brands of their ftyp box (no image library needed)."""

from __future__ import annotations

import struct

HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
               b"mif1", b"msf1", b"mif2", b"mif3"}
AVIF_BRANDS = {b"avif", b"avis"}


def brand_kind(head: bytes) -> str | None:
    """'avif' or 'heif' from an ftyp box at the start of `head` (major and compatible brands;
    AVIF wins, since AVIF files also carry the generic mif1/msf1), or None."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return None
    size = struct.unpack(">I", head[:4])[0]
    end = min(size, len(head)) if size >= 16 else 16
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, end - 3, 4)}
    if brands & AVIF_BRANDS:
        return "avif"
    if brands & HEIF_BRANDS:
        return "heif"
    return None
