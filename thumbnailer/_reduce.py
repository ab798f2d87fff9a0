"""Mode normalisation and the banded integer-shrink accumulator."""

from __future__ import annotations

import io
import sys
import threading
from dataclasses import dataclass

from PIL import Image, ImageCms

# (kind, x_out, y_out, image, rows): kind "paste" places a finished block of reduced rows;
# kind "part" is one reduced row that averages only `rows` (< k) source rows so far.
Piece = tuple[str, int, int, Image.Image, int]

ACC_MODES = ("L", "RGB", "CMYK")


def normalise(im: Image.Image) -> Image.Image:
    """Return `im` as 8-bit L, RGB or CMYK: 16-bit scaled (not clipped), alpha over white."""
    m = im.mode
    if m in ACC_MODES:
        return im
    if m == "1":
        return im.convert("L")
    if m.startswith("I;16"):
        big = m.endswith("B") or (m == "I;16N" and sys.byteorder == "big")
        raw = "L;16B" if big else "L;16"
        if m.startswith("I;16S"):
            im = im.convert("I")
        else:
            return Image.frombuffer("L", im.size, im.tobytes(), "raw", raw, 0, 1)
        m = "I"
    if m in ("I", "F"):
        return im.point(lambda v: v / 256).convert("L")
    if m == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        m = im.mode
    elif m == "PA":
        im = im.convert("RGBA")
        m = "RGBA"
    if m in ("La", "RGBa"):
        im = im.convert("LA" if m == "La" else "RGBA")
        m = im.mode
    if m in ("LA", "RGBA"):
        base = m[:-1]
        out = Image.new(base, im.size, 255 if base == "L" else (255, 255, 255))
        out.paste(im.convert(base), mask=im.getchannel("A"))
        return out
    return im.convert("RGB")


_SRGB_LOCK = threading.Lock()


def to_output_mode(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """Convert an accumulator image to L/RGB; returns (image, icc_converted)."""
    if im.mode != "CMYK":
        return im, False
    if icc:
        try:
            with _SRGB_LOCK:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                dst = ImageCms.createProfile("sRGB")
                out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out, True
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return im.convert("RGB"), False


def split_reduce(band: Image.Image, x0: int, y0: int, k: int) -> list[Piece]:
    """Reduce a normalised band whose top-left source pixel is (x0, y0); x0 % k == 0."""
    xo = x0 // k
    if k == 1:
        return [("paste", xo, y0, band, 0)]
    w, h = band.size
    y1 = y0 + h
    pieces: list[Piece] = []
    top_end = min(-(-y0 // k) * k, y1)
    if top_end > y0:
        part = band.reduce(k, box=(0, 0, w, top_end - y0))
        pieces.append(("part", xo, y0 // k, part, top_end - y0))
    full_end = top_end + ((y1 - top_end) // k) * k
    if full_end > top_end:
        r = band.reduce(k, box=(0, top_end - y0, w, full_end - y0))
        pieces.append(("paste", xo, top_end // k, r, 0))
    if y1 > full_end:
        part = band.reduce(k, box=(0, full_end - y0, w, h))
        pieces.append(("part", xo, full_end // k, part, y1 - full_end))
    return pieces


@dataclass
class Accumulator:
    """Holds the k-times reduced image of a (src_w x src_h) source, filled band by band."""

    src_w: int
    src_h: int
    k: int
    mode: str | None = None
    image: Image.Image | None = None

    def __post_init__(self) -> None:
        self._pending: dict[tuple[int, int], tuple[Image.Image, int]] = {}

    @property
    def size(self) -> tuple[int, int]:
        return -(-self.src_w // self.k), -(-self.src_h // self.k)

    def _ensure(self, mode: str) -> Image.Image:
        if self.image is None:
            self.mode = mode
            self.image = Image.new(mode, self.size, 0)
        elif mode != self.mode:
            raise ValueError(f"band mode {mode} differs from {self.mode}")
        return self.image

    def add(self, pieces: list[Piece]) -> None:
        for kind, xo, yo, img, rows in pieces:
            acc = self._ensure(img.mode)
            if kind == "paste":
                acc.paste(img, (xo, yo))
                continue
            key = (xo, yo)
            old = self._pending.pop(key, None)
            if old is not None:
                prev, n = old
                total = n + rows
                img = Image.blend(prev, img, rows / total)
                rows = total
            need = min(self.k, self.src_h - yo * self.k)
            if rows >= need:
                acc.paste(img, (xo, yo))
            else:
                self._pending[key] = (img, rows)

    def finish(self) -> Image.Image:
        acc = self.image
        if acc is None:
            raise ValueError("no image data decoded")
        if self._pending:
            raise ValueError("image rows are missing")
        return acc
