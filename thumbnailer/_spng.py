"""PNG rows decoded one at a time by libspng (via ctypes), so no whole image is ever allocated.

Why libspng: a PNG's rows are filtered against the row above, so a band can only be decoded
after every row before it, with the inflate state and the previous row carried along. Pillow
cannot do that: its PNG decoder fills one image of the full size, and its zlib state ends with
that image. Unfiltering in pure Python costs about a microsecond per byte (minutes for a
16000x12000 image); libpng reports errors with longjmp, which ctypes cannot survive. libspng has
a progressive row API (`spng_decode_row`) that returns error codes, converts every colour type
and bit depth to 8-bit RGB(A) or grey, de-interlaces, checks CRCs and Adler-32, and keeps only
a few rows. Measured on a 16000x12000 RGB PNG: 2.6 s and 24 MB peak RSS for all rows.

Optional like libturbojpeg: when libspng cannot be loaded (Debian package libspng0; or
THUMBNAILER_NO_SPNG is set, or ENABLED is set to False) callers decode with Pillow as a whole
image when that fits the decode limit and refuse the image otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

ENV_DISABLE = "THUMBNAILER_NO_SPNG"
ENABLED = not os.environ.get(ENV_DISABLE)
LIBRARY_NAMES = ("libspng.so.0", "libspng.so", "libspng.0.dylib", "libspng.dylib")

# output formats and flags (spng.h)
FMT_RGBA8 = 1
FMT_RGB8 = 4
FMT_GA8 = 16
FMT_G8 = 64
DECODE_TRNS = 1
DECODE_PROGRESSIVE = 256
EOI = 75  # SPNG_EOI: the last row was decoded
CRC_ERROR = 0  # SPNG_CRC_ERROR: a bad CRC is an error for critical and ancillary chunks

_lib: Any = None
_libc: Any = None
_tried = False


class PngError(Exception):
    """libspng refused the data; the message is its reason."""


class Ihdr(ctypes.Structure):
    _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32),
                ("bit_depth", ctypes.c_uint8), ("color_type", ctypes.c_uint8),
                ("compression_method", ctypes.c_uint8), ("filter_method", ctypes.c_uint8),
                ("interlace_method", ctypes.c_uint8)]


class RowInfo(ctypes.Structure):
    _fields_ = [("scanline_idx", ctypes.c_uint32), ("row_num", ctypes.c_uint32),
                ("pass_", ctypes.c_int), ("filter", ctypes.c_uint8)]


def _load() -> Any:
    global _lib, _libc, _tried
    if _tried:
        return _lib
    _tried = True
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name in LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            for fn, res, args in [
                ("spng_ctx_new", vp, [ctypes.c_int]),
                ("spng_ctx_free", None, [vp]),
                ("spng_set_png_file", ctypes.c_int, [vp, vp]),
                ("spng_set_image_limits", ctypes.c_int, [vp, ctypes.c_uint32, ctypes.c_uint32]),
                ("spng_set_chunk_limits", ctypes.c_int, [vp, sz, sz]),
                ("spng_set_crc_action", ctypes.c_int, [vp, ctypes.c_int, ctypes.c_int]),
                ("spng_get_ihdr", ctypes.c_int, [vp, ctypes.POINTER(Ihdr)]),
                ("spng_decode_image", ctypes.c_int, [vp, vp, sz, ctypes.c_int, ctypes.c_int]),
                ("spng_decode_row", ctypes.c_int, [vp, vp, sz]),
                ("spng_get_row_info", ctypes.c_int, [vp, ctypes.POINTER(RowInfo)]),
                ("spng_strerror", ctypes.c_char_p, [ctypes.c_int]),
            ]:
                f = getattr(lib, fn)
                f.restype = res
                f.argtypes = args
        except AttributeError:
            continue
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.fdopen.restype = vp
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.fclose.restype = ctypes.c_int
        libc.fclose.argtypes = [vp]
        _lib, _libc = lib, libc
        break
    return _lib


def available() -> bool:
    """True when libspng is enabled and loadable."""
    return ENABLED and _load() is not None


class RowDecoder:
    """Progressive decoding of one PNG file into rows of `fmt` (FMT_*), top to bottom; for an
    interlaced image the rows of each Adam7 pass come pass after pass."""

    def __init__(self, path: str | os.PathLike[str], fmt: int, max_width: int,
                 max_height: int, chunk_limit: int = 64 << 20) -> None:
        lib = _load()
        if lib is None:
            raise PngError("libspng is not available")
        self._lib = lib
        self._ctx = lib.spng_ctx_new(0)
        if not self._ctx:
            raise MemoryError("spng_ctx_new failed")
        self._file: Any = None
        try:
            fd = os.open(path, os.O_RDONLY)
            self._file = _libc.fdopen(fd, b"rb")
            if not self._file:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "fdopen failed")
            self._check(lib.spng_set_crc_action(self._ctx, CRC_ERROR, CRC_ERROR))
            # text, ICC and eXIf chunks are read by our own chunk walker: cap what libspng keeps
            self._check(lib.spng_set_chunk_limits(self._ctx, chunk_limit, chunk_limit))
            self._check(lib.spng_set_image_limits(self._ctx, max_width, max_height))
            self._check(lib.spng_set_png_file(self._ctx, self._file))
            self.ihdr = Ihdr()
            self._check(lib.spng_get_ihdr(self._ctx, ctypes.byref(self.ihdr)))
            self._check(lib.spng_decode_image(self._ctx, None, 0, fmt,
                                              DECODE_PROGRESSIVE | DECODE_TRNS))
        except BaseException:
            self.close()
            raise
        self._info = RowInfo()
        self.done = False

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise PngError(self._lib.spng_strerror(rc).decode(errors="replace"))

    def row_info(self) -> tuple[int, int]:
        """(row number, Adam7 pass) of the next row to decode."""
        self._check(self._lib.spng_get_row_info(self._ctx, ctypes.byref(self._info)))
        return self._info.row_num, self._info.pass_

    def decode_row(self, address: int, size: int) -> None:
        """Decode the next row into `size` bytes at `address` (at least one output row)."""
        rc = self._lib.spng_decode_row(self._ctx, address, size)
        if rc == EOI:
            self.done = True
        elif rc != 0:
            self._check(rc)

    def close(self) -> None:
        if self._ctx:
            self._lib.spng_ctx_free(self._ctx)
            self._ctx = None
        if self._file:
            _libc.fclose(self._file)
            self._file = None

    def __enter__(self) -> RowDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
