"""JPEG decoding with libjpeg-turbo's TurboJPEG API (via ctypes) at any scale M/8.

Pillow's `draft()` only offers the DCT scales 1/2, 1/4 and 1/8, so a stored pyramid level (or a
JPEG) 1.65x the target size is decoded whole and then resampled 1.65x. TurboJPEG also does the
IDCT at 3/8, 5/8, 6/8 and 7/8, so the decoded image lands just above the target and the final
resize is nearly 1:1, which is much cheaper. It also decodes straight into a caller's buffer at
a given pitch (tiles go into their place in a band, no per-tile image objects), and has far less
per-call overhead than Pillow's plugin, which parses every tile's markers in Python. ctypes
releases the GIL for the call, so bands decode in parallel.

Optional like libdeflate: when libturbojpeg cannot be loaded (or THUMBNAILER_NO_TURBOJPEG is
set, or ENABLED is set to False) callers use Pillow's `draft()` path instead.

Warnings: libjpeg reports truncated or corrupt entropy data as a warning and fills the rest of
the image with grey. Decoding runs with TJFLAG_STOPONWARNING, and a warning about the data
("Premature end of JPEG file", "Corrupt JPEG data: ...") is an error here, so a damaged tile
never becomes a silently partial thumbnail. Junk bytes before a marker other than a restart
marker (e.g. padding before EOI, common in camera files) and warnings about metadata (an unknown
JFIF revision, ...) do not damage the pixels: those are decoded again without the flag.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

ENV_DISABLE = "THUMBNAILER_NO_TURBOJPEG"
ENABLED = not os.environ.get(ENV_DISABLE)
LIBRARY_NAMES = ("libturbojpeg.so.0", "libturbojpeg.so", "libturbojpeg.0.dylib",
                 "libturbojpeg.dylib")

# pixel formats and colour spaces (turbojpeg.h)
PF_RGB = 0
PF_GRAY = 6
CS_RGB, CS_YCBCR, CS_GRAY, CS_CMYK, CS_YCCK = range(5)
FLAG_STOPONWARNING = 8192
FLAG_LIMITSCANS = 32768  # at most 500 progressive scans: bounds the work a hostile file makes
ERR_WARNING = 0

_lib: Any = None
_tried = False
_factors: tuple[tuple[int, int], ...] = ()


class JpegError(Exception):
    """The JPEG data is corrupt, truncated or not decodable by TurboJPEG; the message is the
    cause."""


class _Factor(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


def _load() -> Any:
    global _lib, _tried, _factors
    if _tried:
        return _lib
    _tried = True
    c_int_p = ctypes.POINTER(ctypes.c_int)
    for name in LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            lib.tjInitDecompress.restype = ctypes.c_void_p
            lib.tjInitDecompress.argtypes = []
            lib.tjDestroy.restype = ctypes.c_int
            lib.tjDestroy.argtypes = [ctypes.c_void_p]
            lib.tjDecompressHeader3.restype = ctypes.c_int
            lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                ctypes.c_ulong, c_int_p, c_int_p, c_int_p,
                                                c_int_p]
            lib.tjDecompress2.restype = ctypes.c_int
            lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.tjGetErrorStr2.restype = ctypes.c_char_p
            lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
            lib.tjGetErrorCode.restype = ctypes.c_int
            lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
            lib.tjGetScalingFactors.restype = ctypes.POINTER(_Factor)
            lib.tjGetScalingFactors.argtypes = [c_int_p]
        except AttributeError:  # older than libjpeg-turbo 2.0
            continue
        n = ctypes.c_int(0)
        arr = lib.tjGetScalingFactors(ctypes.byref(n))
        if not arr or n.value <= 0:
            continue
        _factors = tuple((arr[i].num, arr[i].denom) for i in range(n.value))
        _lib = lib
        break
    return _lib


def available() -> bool:
    """True when TurboJPEG is enabled and loadable."""
    return ENABLED and _load() is not None


def scaled(dim: int, m: int) -> int:
    """`dim` scaled by m/8, as libjpeg rounds it (up)."""
    return -(-dim * m // 8)


def scales() -> list[int]:
    """The M (1..8) of the library's M/8 scaling factors, ascending."""
    _load()
    out = {num * 8 // den for num, den in _factors
           if (num * 8) % den == 0 and 1 <= num * 8 // den <= 8}
    return sorted(out)


def picks(w: int, h: int, m: int) -> bool:
    """True if asking tjDecompress2 for scaled(w, m) x scaled(h, m) selects exactly m/8 (it takes
    the largest factor whose output fits; for tiny sides several factors round alike)."""
    sw, sh = scaled(w, m), scaled(h, m)
    for num, den in _factors:  # largest first
        fw, fh = -(-w * num // den), -(-h * num // den)
        if fw <= sw and fh <= sh:
            return num * 8 == m * den
    return False


_RESTART_MARKERS = tuple(f"marker 0x{m:02x}" for m in range(0xd0, 0xd8))


def _damaging(message: str) -> bool:
    """Whether a libjpeg warning means the decoded pixels are incomplete or wrong."""
    if "extraneous bytes before marker" in message:
        # junk between segments is skipped; before a restart marker it means the entropy
        # data of the previous interval was not what the decoder expected
        return message.endswith(_RESTART_MARKERS)
    if "bad ICC marker" in message:
        return False  # the profile is read by Pillow, not from this decoder
    return message.startswith(("Corrupt JPEG data", "Premature end", "Invalid SOS",
                               "Inconsistent progression"))


class Decompressor:
    """One TurboJPEG decompressor (not thread-safe: one per thread or per task)."""

    def __init__(self) -> None:
        lib = _load()
        if lib is None:
            raise JpegError("libturbojpeg is not available")
        self._lib = lib
        self._h = lib.tjInitDecompress()
        if not self._h:
            raise MemoryError("tjInitDecompress failed")
        self._ints = [ctypes.c_int(0) for _ in range(4)]
        self._refs = [ctypes.byref(v) for v in self._ints]

    def close(self) -> None:
        if self._h:
            self._lib.tjDestroy(self._h)
            self._h = None

    def __enter__(self) -> Decompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _message(self) -> str:
        msg = self._lib.tjGetErrorStr2(self._h)
        return (msg or b"unknown error").decode("latin-1").strip()

    def header(self, data: bytes) -> tuple[int, int, int, int]:
        """(width, height, subsampling, colour space) of a JPEG interchange stream."""
        if self._lib.tjDecompressHeader3(self._h, data, len(data), *self._refs) != 0:
            raise JpegError(self._message())
        w, h, sub, cs = (v.value for v in self._ints)
        if w <= 0 or h <= 0:
            raise JpegError(f"invalid JPEG dimensions {w}x{h}")
        return w, h, sub, cs

    def decode(self, data: bytes, dst: int, width: int, pitch: int, height: int,
               pixel_format: int) -> None:
        """Decode `data` scaled to width x height (a scale from `scales()`, checked with
        `picks()`) into memory at address `dst`, rows `pitch` bytes apart. The caller keeps the
        memory alive and large enough: (height - 1) * pitch + width * bytes per pixel."""
        lib = self._lib
        flags = FLAG_STOPONWARNING | FLAG_LIMITSCANS
        if lib.tjDecompress2(self._h, data, len(data), dst, width, pitch, height,
                             pixel_format, flags) == 0:
            return
        msg = self._message()
        if lib.tjGetErrorCode(self._h) != ERR_WARNING or _damaging(msg):
            raise JpegError(msg)
        # a warning that leaves the pixels intact: decode again, letting it pass
        if lib.tjDecompress2(self._h, data, len(data), dst, width, pitch, height,
                             pixel_format, FLAG_LIMITSCANS) != 0:
            msg2 = self._message()
            if lib.tjGetErrorCode(self._h) != ERR_WARNING or _damaging(msg2):
                raise JpegError(msg2)


