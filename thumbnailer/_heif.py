"""HEIC/HEIF and AVIF decoding to packed 8-bit rows, plus what the decode will cost.

HEIC goes through pillow-heif (libheif + libde265), imported on first use so the CLI starts
without it. libheif applies the irot/imir transforms itself, so its rows are already upright.
AVIF goes through libavif directly when it is loadable (_avif.py: YUV planes once, RGB in
bands, about a fifth of the memory); otherwise through Pillow's own plugin (libavif,
Pillow >= 11.3), described here, which leaves the pixels as
stored and reports irot/imir as the EXIF orientation. Both convert 10/12-bit images to 8 bits
themselves (scaled, not clipped).

Neither decoder can decode part of an image, so the full-size RGB buffer is unavoidable; what
we avoid is the Pillow image of it (4 bytes a pixel more): the packed rows are cut into bands.
Peak RSS of the decode measured on 4032x3024 photos: HEIC 8-bit 4.5, 10-bit 7.5 bytes a
pixel (YCbCr planes plus RGB in libheif); AVIF 8-bit 8.2 (YUV and RGB in libavif, and the
plugin's bytes copy of the RGB), so with the default decode limit an AVIF photo may have
about 7.8 Mpx; 10-bit AVIF is estimated at 9.7 (16-bit YUV planes), not measured.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

BYTES_PER_PIXEL = {("heif", False): 4.6, ("heif", True): 7.6,
                   ("avif", False): 8.2, ("avif", True): 9.7}


class HeifDecodeError(Exception):
    """The decoder refused the image; the message is its reason."""


def decode_cost(kind: str, pixels: int, bit_depth: int, file_bytes: int) -> int:
    """Bytes a whole decode of `pixels` pixels will need (the file is read whole, too)."""
    return int(pixels * BYTES_PER_PIXEL[(kind, bit_depth > 8)]) + file_bytes


class HeicFile:
    """The primary image of a HEIC file and its stored thumbnails; nothing decoded yet."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        import pillow_heif  # lazy: libheif is loaded only when a HEIF file is met

        pillow_heif.options.DECODE_THREADS = max(1, threads)
        try:
            self._file = pillow_heif.open_heif(path, convert_hdr_to_8bit=True)
            self._image = self._file[self._file.primary_index]
        except (RuntimeError, ValueError, SyntaxError) as e:
            raise HeifDecodeError(_reason(e)) from e
        self.size: tuple[int, int] = self._image.size  # after irot/imir and clap
        self.mode: str = self._image.mode
        self.images = len(self._file)
        info: dict[str, Any] = self._image.info
        self._info = info
        self.bit_depth = int(info.get("bit_depth", 8))
        icc = info.get("icc_profile")
        self.icc: bytes | None = bytes(icc) if icc else None

    def thumbnails(self) -> list[tuple[int, tuple[int, int]]]:
        """(index, size after transforms) of each stored thumbnail, smallest first."""
        out = []
        for i in range(len(self._info.get("thumbnails", []))):
            try:
                out.append((i, self._image.get_thumbnail(i).size))
            except (RuntimeError, ValueError, IndexError):
                continue
        return sorted(out, key=lambda t: t[1][0] * t[1][1])

    def decode(self, thumbnail: int | None = None) -> tuple[Any, int, str, tuple[int, int]]:
        """(packed rows, stride, mode, size) of the primary image or one thumbnail."""
        img: Any = self._image if thumbnail is None else self._image.get_thumbnail(thumbnail)
        try:
            data = img.data
            return data, img.stride, img.mode, img.size
        except (RuntimeError, ValueError) as e:
            raise HeifDecodeError(_reason(e)) from e


def decode_avif(im: Image.Image) -> tuple[Any, int, str, tuple[int, int]]:
    """(packed rows, stride, mode, size) of an opened AVIF image's first frame, stored
    orientation."""
    dec = getattr(im, "_decoder", None)
    w, h = im.size
    if dec is not None and hasattr(dec, "get_frame") and im.mode in ("RGB", "RGBA"):
        # The plugin's own decoder hands over the packed rows; im.load() would copy them into
        # a full-size Pillow image first.
        try:
            data = dec.get_frame(0)[0]
        except (RuntimeError, ValueError, OSError) as e:
            raise HeifDecodeError(_reason(e)) from e
        bpp = len(im.mode)
        if len(data) == w * h * bpp:
            return data, w * bpp, im.mode, (w, h)
    try:
        im.load()
    except (RuntimeError, ValueError, OSError) as e:
        raise HeifDecodeError(_reason(e)) from e
    return im, 0, im.mode, (w, h)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
