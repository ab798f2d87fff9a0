"""PNG header and EXIF from the chunk list, and banded decoding through libspng.

Pillow's `getexif()` on a PNG whose eXIf chunk follows the image data decodes every pixel to
find it; here the chunk list is walked by seeking over the chunk bodies, so EXIF anywhere in
the file costs a few reads.

Interlaced (Adam7) images: only the seventh pass is kept. It holds every odd row completely,
so it is a W x H/2 image of the same picture; each of its rows stands for two. The other
passes are still inflated and unfiltered (they precede it in the stream), a row at a time.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from . import _spng
from ._reduce import normalise

SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_MAX_BYTES = 1 << 20
MAX_CHUNKS = 1 << 22


@dataclass
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool
    trns: bool
    exif: bytes | None


def read_header(path: str | os.PathLike[str]) -> PngHeader:
    """IHDR, whether tRNS is present, and the eXIf chunk wherever it is."""
    with open(path, "rb") as f:
        if f.read(8) != SIGNATURE:
            raise ValueError("not a PNG file")
        head = f.read(8 + 13)
        if len(head) < 21 or head[4:8] != b"IHDR":
            raise ValueError("PNG file has no IHDR chunk")
        w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", head[8:21])
        f.seek(4, os.SEEK_CUR)
        trns = False
        exif: bytes | None = None
        for _ in range(MAX_CHUNKS):
            hdr = f.read(8)
            if len(hdr) < 8:
                break
            length, kind = struct.unpack(">I4s", hdr)
            if kind == b"IEND":
                break
            if kind == b"tRNS":
                trns = True
            if kind == b"eXIf" and exif is None and length <= EXIF_MAX_BYTES:
                exif = f.read(length)
                f.seek(4, os.SEEK_CUR)
                continue
            f.seek(length + 4, os.SEEK_CUR)
    return PngHeader(w, h, depth, ctype, bool(interlace), trns, exif)


def exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    e = Image.Exif()
    try:
        e.load(exif)
    except (SyntaxError, ValueError, struct.error, OSError):
        return 1
    o = e.get(274, 1)
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def _format(hd: PngHeader) -> tuple[int, str, int]:
    """(libspng output format, Pillow raw mode, bytes per pixel) for this header."""
    alpha = hd.color_type in (4, 6) or hd.trns
    if hd.color_type == 0 and not alpha and hd.bit_depth <= 8:
        return _spng.FMT_G8, "L", 1
    # libspng 0.7 refuses GA8 for grey with alpha and G8 for 16-bit grey: RGB(A), then L
    return (_spng.FMT_RGBA8, "RGBA", 4) if alpha else (_spng.FMT_RGB8, "RGB", 3)


def source_height(hd: PngHeader) -> int:
    """Rows of the image the bands cover (an even number for an interlaced file)."""
    return hd.height // 2 * 2 if hd.interlaced else hd.height


def bands(path: str | os.PathLike[str], hd: PngHeader,
          rows: int) -> Iterator[tuple[int, Image.Image]]:
    """(first row, normalised band of up to `rows` rows) over the whole image, top to
    bottom; for an interlaced file the rows of its seventh pass, each one twice."""
    fmt, raw, bpp = _format(hd)
    if hd.interlaced:
        rows = max(1, rows // 2)
    rb = hd.width * bpp
    buf = bytearray(rb * rows)
    scratch = bytearray(rb)  # the rows of passes 1-6, which are not kept
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    cscratch = (ctypes.c_char * rb).from_buffer(scratch)
    base = ctypes.addressof(cbuf)
    mode = raw
    grey = hd.color_type in (0, 4)
    try:
        with _spng.RowDecoder(path, fmt, hd.width, hd.height) as dec:
            y = n = 0
            while not dec.done:
                if hd.interlaced:
                    _, pass_ = dec.row_info()
                    if pass_ != 6:
                        dec.decode_row(ctypes.addressof(cscratch), rb)
                        continue
                dec.decode_row(base + n * rb, rb)
                n += 1
                if n == rows or dec.done:
                    band = normalise(Image.frombytes(mode, (hd.width, n),
                                                     memoryview(buf)[:n * rb], "raw", raw))
                    if grey and band.mode != "L":
                        band = band.convert("L")
                    if hd.interlaced:
                        band = band.resize((hd.width, 2 * n), Image.Resampling.NEAREST)
                    yield y, band
                    y += band.height
                    n = 0
            if y != source_height(hd):
                raise _spng.PngError(f"image data ends after {y} of {source_height(hd)} rows")
    finally:
        del cbuf, cscratch
