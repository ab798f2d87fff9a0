"""AVIF decoding with libavif driven directly (via ctypes): YUV planes once, RGB in bands.

Pillow's AVIF plugin converts the whole image to RGB and copies it to bytes, about 8.2 bytes a
pixel at its peak, so a 12 MP phone photo (4032x3024) needs ~96 MB and was refused at the
default decode limit. Here libavif parses the file (size, depth and chroma format before any
pixel is decoded, for the up-front estimate), the AV1 decoder (dav1d) fills the YUV planes
once (1.5 bytes a pixel for 8-bit 4:2:0, 3 at 10-bit, plus alpha), and each band of rows is a
view of those planes (avifImageSetViewRect, no copy) converted by avifImageYUVToRGB into a
small 8-bit buffer (10/12-bit is scaled to 8 bits by libavif). Every band is converted with two
rows of context above and below, so the bilinear chroma upsampling of 4:2:0/4:2:2 sees the
same neighbours as a whole-image conversion and the band edges are invisible. The pixels stay
as stored: irot/imir are applied later from the container boxes, as for Pillow's plugin.

Bound to the ABI of libavif 0.11 (Debian bookworm's libavif15): the structs are read by offset
and changed in libavif 1.0, so another version is not used. Optional like libspng: when it
cannot be loaded (or THUMBNAILER_NO_LIBAVIF is set, or ENABLED is set to False) AVIF goes
through Pillow's plugin, which decodes the whole image and needs about 5x the memory.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from ._reduce import normalise

ENV_DISABLE = "THUMBNAILER_NO_LIBAVIF"
ENABLED = not os.environ.get(ENV_DISABLE)
LIBRARY_NAMES = ("libavif.so.15",)
VERSIONS = ("0.11.",)  # the struct layouts below

# avif.h (0.11)
RESULT_OK = 0
PIXEL_FORMAT_YUV444, PIXEL_FORMAT_YUV422, PIXEL_FORMAT_YUV420, PIXEL_FORMAT_YUV400 = 1, 2, 3, 4
RGB_FORMAT_RGB, RGB_FORMAT_RGBA = 0, 1
CHROMA_UPSAMPLING_BILINEAR = 4
STRICT_DISABLED = 0
CONTEXT_ROWS = 2  # rows converted above and below a band (one chroma row of 4:2:0)

# Peak RSS of the decode beyond the interpreter, measured on 4032x3024 photos with dav1d
# (libavif 0.11.1, dav1d 1.0.0, 2 threads): parsing 4 MB; decoding 28 MB for 8-bit 4:2:0
# (18 MB of planes), 42 MB for 10-bit 4:2:0 and for 8-bit 4:4:4 (37 MB of planes): the planes
# with dav1d's padding (x1.15) and its context and scratch (up to 8 MB); the bands of RGB rows
# and their resize another 8 MB with BAND_BYTES.
PLANE_OVERHEAD = 1.15
FIXED_BYTES = 20 << 20  # parsing, dav1d's context, the RGB bands and their reduction
BAND_BYTES = 1 << 20  # RGB rows converted at a time (larger bands are no faster)

_lib: Any = None
_tried = False


class AvifError(Exception):
    """libavif refused the file; the message is its reason."""


class _Decoder(ctypes.Structure):
    _fields_ = [("codecChoice", ctypes.c_int), ("maxThreads", ctypes.c_int),
                ("requestedSource", ctypes.c_int), ("allowProgressive", ctypes.c_int),
                ("allowIncremental", ctypes.c_int), ("ignoreExif", ctypes.c_int),
                ("ignoreXMP", ctypes.c_int), ("imageSizeLimit", ctypes.c_uint32),
                ("imageDimensionLimit", ctypes.c_uint32), ("imageCountLimit", ctypes.c_uint32),
                ("strictFlags", ctypes.c_uint32), ("image", ctypes.c_void_p),
                ("imageIndex", ctypes.c_int), ("imageCount", ctypes.c_int),
                ("progressiveState", ctypes.c_int),
                ("timing", ctypes.c_uint64 * 5),  # avifImageTiming
                ("timescale", ctypes.c_uint64), ("duration", ctypes.c_double),
                ("durationInTimescales", ctypes.c_uint64), ("alphaPresent", ctypes.c_int),
                ("ioStats", ctypes.c_size_t * 2), ("diag", ctypes.c_char * 256)]


class _Image(ctypes.Structure):  # the leading fields of avifImage
    _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32),
                ("depth", ctypes.c_uint32), ("yuvFormat", ctypes.c_int),
                ("yuvRange", ctypes.c_int), ("yuvChromaSamplePosition", ctypes.c_int),
                ("yuvPlanes", ctypes.c_void_p * 3), ("yuvRowBytes", ctypes.c_uint32 * 3),
                ("imageOwnsYUVPlanes", ctypes.c_int), ("alphaPlane", ctypes.c_void_p)]


class _RGBImage(ctypes.Structure):
    _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32),
                ("depth", ctypes.c_uint32), ("format", ctypes.c_int),
                ("chromaUpsampling", ctypes.c_int), ("chromaDownsampling", ctypes.c_int),
                ("avoidLibYUV", ctypes.c_int), ("ignoreAlpha", ctypes.c_int),
                ("alphaPremultiplied", ctypes.c_int), ("isFloat", ctypes.c_int),
                ("pixels", ctypes.c_void_p), ("rowBytes", ctypes.c_uint32)]


class _CropRect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_uint32),
                ("width", ctypes.c_uint32), ("height", ctypes.c_uint32)]


def _load() -> Any:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    vp, res = ctypes.c_void_p, ctypes.c_int
    for name in LIBRARY_NAMES:
        try:
            lib = ctypes.CDLL(name)
            lib.avifVersion.restype = ctypes.c_char_p
            lib.avifVersion.argtypes = []
            version = (lib.avifVersion() or b"").decode("ascii", "replace")
            if not version.startswith(VERSIONS):
                continue
            for fn, restype, args in [
                ("avifDecoderCreate", ctypes.POINTER(_Decoder), []),
                ("avifDecoderDestroy", None, [ctypes.POINTER(_Decoder)]),
                ("avifDecoderSetIOFile", res, [ctypes.POINTER(_Decoder), ctypes.c_char_p]),
                ("avifDecoderParse", res, [ctypes.POINTER(_Decoder)]),
                ("avifDecoderNextImage", res, [ctypes.POINTER(_Decoder)]),
                ("avifResultToString", ctypes.c_char_p, [res]),
                ("avifImageCreateEmpty", vp, []),
                ("avifImageDestroy", None, [vp]),
                ("avifImageSetViewRect", res, [vp, vp, ctypes.POINTER(_CropRect)]),
                ("avifRGBImageSetDefaults", None, [ctypes.POINTER(_RGBImage), vp]),
                ("avifImageYUVToRGB", res, [vp, ctypes.POINTER(_RGBImage)]),
            ]:
                f = getattr(lib, fn)
                f.restype, f.argtypes = restype, args
        except (OSError, AttributeError):
            continue
        _lib = lib
        break
    return _lib


def available() -> bool:
    """True when libavif is enabled and loadable (a version whose ABI is bound here)."""
    return ENABLED and _load() is not None


def decode_cost(width: int, height: int, depth: int, yuv_format: int, alpha: bool,
                file_bytes: int) -> int:
    """Bytes the decode needs: the YUV (and alpha) planes with the decoder's overhead, the
    compressed item (read whole) and the bands."""
    sample = 2 if depth > 8 else 1
    chroma = {PIXEL_FORMAT_YUV444: 2.0, PIXEL_FORMAT_YUV422: 1.0,
              PIXEL_FORMAT_YUV420: 0.5}.get(yuv_format, 0.0)
    planes = width * height * sample * (1.0 + chroma + (1.0 if alpha else 0.0))
    return int(planes * PLANE_OVERHEAD) + file_bytes + FIXED_BYTES


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """dav1d prints its complaints about a damaged stream on file descriptor 2 (libavif 0.11
    installs no logger): collect them (the first line ends up in the error) rather than
    letting them interleave with the CLI's one-line error."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield said
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(4096).decode("utf-8", "replace")
            said.extend(line.strip() for line in text.splitlines() if line.strip())


class AvifFile:
    """The primary image (or first frame) of an AVIF file, parsed; nothing decoded yet."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        lib = _load()
        if lib is None:
            raise AvifError("libavif is not available")
        self._lib = lib
        self._dec = lib.avifDecoderCreate()
        if not self._dec:
            raise MemoryError("avifDecoderCreate failed")
        try:
            d = self._dec.contents
            d.maxThreads = max(1, threads)
            d.ignoreExif = d.ignoreXMP = 1  # orientation and ICC come from the boxes
            d.strictFlags = STRICT_DISABLED  # like browsers: e.g. a missing pixi box is fine
            self._check(lib.avifDecoderSetIOFile(self._dec, os.fsencode(path)))
            self._check(lib.avifDecoderParse(self._dec))
            im = _Image.from_address(d.image)
            self.width, self.height = int(im.width), int(im.height)
            self.depth, self.yuv_format = int(im.depth), int(im.yuvFormat)
            self.alpha = bool(d.alphaPresent)
            self.images = int(d.imageCount)
        except BaseException:
            self.close()
            raise
        self.mode = "RGBA" if self.alpha else "RGB"
        self._decoded = False

    def _check(self, r: int) -> None:
        if r != RESULT_OK:
            detail = self._dec.contents.diag.decode("utf-8", "replace").strip() \
                if self._dec else ""
            text = (self._lib.avifResultToString(r) or b"error").decode("utf-8", "replace")
            raise AvifError(f"{text}: {detail}" if detail else text)

    def cost(self, file_bytes: int) -> int:
        return decode_cost(self.width, self.height, self.depth, self.yuv_format, self.alpha,
                           file_bytes)

    def decode(self) -> None:
        """Decode the YUV (and alpha) planes of the first image."""
        with _captured_stderr() as said:
            r = self._lib.avifDecoderNextImage(self._dec)
        try:
            self._check(r)
        except AvifError as e:
            if said:
                raise AvifError(f"{e}; {said[0]}") from None
            raise
        im = _Image.from_address(self._dec.contents.image)
        if (im.width, im.height) != (self.width, self.height):
            raise AvifError("the decoded image size differs from the header")
        self.depth, self.yuv_format = int(im.depth), int(im.yuvFormat)
        self._decoded = True

    def bands(self, rows: int) -> Iterator[tuple[int, Image.Image]]:
        """(first row, normalised 8-bit band) of the decoded image, top to bottom; `rows` is
        rounded up to an even number (4:2:0 views start on even rows)."""
        if not self._decoded:
            self.decode()
        lib = self._lib
        rows += rows % 2
        w, h = self.width, self.height
        ch = 4 if self.alpha else 3
        img = self._dec.contents.image
        view = lib.avifImageCreateEmpty()
        if not view:
            raise MemoryError("avifImageCreateEmpty failed")
        try:
            buf = bytearray(w * ch * min(h, rows + 2 * CONTEXT_ROWS))
            cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
            try:
                for y in range(0, h, rows):
                    n = min(rows, h - y)
                    top = max(0, y - CONTEXT_ROWS)
                    bottom = min(h, y + n + CONTEXT_ROWS)
                    rect = _CropRect(0, top, w, bottom - top)
                    self._check(lib.avifImageSetViewRect(view, img, ctypes.byref(rect)))
                    rgb = _RGBImage()
                    lib.avifRGBImageSetDefaults(ctypes.byref(rgb), view)
                    rgb.depth = 8
                    rgb.format = RGB_FORMAT_RGBA if self.alpha else RGB_FORMAT_RGB
                    rgb.chromaUpsampling = CHROMA_UPSAMPLING_BILINEAR
                    rgb.pixels = ctypes.addressof(cbuf)
                    rgb.rowBytes = w * ch
                    self._check(lib.avifImageYUVToRGB(view, ctypes.byref(rgb)))
                    start = (y - top) * w * ch
                    band = Image.frombytes(self.mode, (w, n),
                                           memoryview(buf)[start:start + n * w * ch])
                    yield y, normalise(band)
            finally:
                del cbuf
        finally:
            lib.avifImageDestroy(view)

    def close(self) -> None:
        if self._dec:
            self._lib.avifDecoderDestroy(self._dec)
            self._dec = None

    def __enter__(self) -> AvifFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
