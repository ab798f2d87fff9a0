"""A thumbnail source from full-width row bands that arrive top to bottom (PNG rows from libspng,
a decoded HEIF/AVIF buffer, a Pillow image cut into bands), holding only a few bands at once.

With an integer pre-shrink k >= 2 the bands are box-reduced into an Accumulator, like TIFF
strips. With k == 1 (the image is less than 4x the target) an accumulator would be the whole
image at 4 bytes a pixel, so the bands are resized straight to the target instead: each group
of output rows is computed from the source rows under its filter window, which gives exactly
the rows of one whole-image resize.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from PIL import Image

from ._reduce import Accumulator, final_filter, normalise, split_reduce

# Pillow's filter support in source pixels at scale 1 (widened by the scale when shrinking)
SUPPORT = {Image.Resampling.NEAREST: 0.0, Image.Resampling.BOX: 0.5,
           Image.Resampling.BILINEAR: 1.0, Image.Resampling.HAMMING: 1.0,
           Image.Resampling.BICUBIC: 2.0, Image.Resampling.LANCZOS: 3.0}
OUT_ROWS = 64  # output rows per banded resize call

Box = tuple[float, float, float, float]


def shrink_factor(w: float, h: float, tw: int, th: int) -> int:
    """Integer pre-shrink factor leaving at least 2x for the final resize."""
    return max(1, int(min(w / tw, h / th) / 2))


class BandResizer:
    """Resizes a (w x h) source, fed as bands of rows, to `size` with one filter."""

    def __init__(self, w: int, h: int, size: tuple[int, int]) -> None:
        self.w, self.h = w, h
        self.size = size
        self.scale = h / size[1]
        self.filter = final_filter(max(w / size[0], self.scale))
        self.support = SUPPORT[self.filter] * max(self.scale, 1.0)
        self.buf: Image.Image | None = None
        self.buf_y = 0
        self.next_out = 0
        self.out: Image.Image | None = None

    def _window(self, j: int) -> tuple[int, int]:
        """Source rows [lo, hi) that output row j reads, one row of margin each side."""
        c = (j + 0.5) * self.scale
        return (max(int(c - self.support + 0.5) - 1, 0),
                min(int(c + self.support + 0.5) + 1, self.h))

    def add(self, y: int, band: Image.Image) -> None:
        if self.buf is None:
            self.buf, self.buf_y = band, y
        else:
            if y != self.buf_y + self.buf.height:
                raise ValueError("bands must arrive in order")
            joined = Image.new(band.mode, (self.w, self.buf.height + band.height), None)
            joined.paste(self.buf, (0, 0))
            joined.paste(band, (0, self.buf.height))
            self.buf = joined
        self._emit()

    def _emit(self) -> None:
        buf = self.buf
        assert buf is not None
        end = self.buf_y + buf.height
        th = self.size[1]
        while self.next_out < th:
            j0 = self.next_out
            j1 = j0
            while j1 < min(th, j0 + OUT_ROWS) and self._window(j1)[1] <= end:
                j1 += 1
            if j1 == j0:
                break
            y0 = max(j0 * self.scale - self.buf_y, 0.0)
            y1 = min(j1 * self.scale - self.buf_y, float(buf.height))
            part = buf.resize((self.size[0], j1 - j0), self.filter,
                              box=(0.0, y0, float(self.w), y1))
            if self.out is None:
                self.out = Image.new(part.mode, self.size, None)
            self.out.paste(part, (0, j0))
            self.next_out = j1
        lo = self._window(self.next_out)[0] if self.next_out < th else end
        if lo > self.buf_y:
            self.buf = buf.crop((0, lo - self.buf_y, self.w, buf.height))
            self.buf_y = lo

    def finish(self) -> Image.Image:
        if self.out is None or self.next_out < self.size[1]:
            raise ValueError("image rows are missing")
        return self.out


def reduce_bands(bands: Iterable[tuple[int, Image.Image]], w: int, h: int,
                 target: tuple[int, int]) -> tuple[Image.Image, Box]:
    """Consume (first row, normalised band) pairs covering a (w x h) source top to bottom;
    returns the accumulator image and its box for a final resize to `target` (or the target
    itself, when no integer pre-shrink applies)."""
    tw, th = target
    k = shrink_factor(w, h, tw, th)
    if k > 1:
        acc = Accumulator(w, h, k)
        for y, band in bands:
            acc.add(split_reduce(band, 0, y, k))
        return acc.finish(), (0.0, 0.0, w / k, h / k)
    if (tw, th) == (w, h):
        out: Image.Image | None = None
        for y, band in bands:
            if out is None:
                out = Image.new(band.mode, (w, h), None)
            out.paste(band, (0, y))
        if out is None:
            raise ValueError("no image data decoded")
        return out, (0.0, 0.0, float(w), float(h))
    rs = BandResizer(w, h, (tw, th))
    for y, band in bands:
        rs.add(y, band)
    return rs.finish(), (0.0, 0.0, float(tw), float(th))


def band_rows(w: int, k: int, bytes_per_pixel: int, budget: int = 4 << 20) -> int:
    """Rows per band: about `budget` bytes, a multiple of k."""
    n = max(1, budget // max(1, w * bytes_per_pixel))
    return max(k, n // k * k)


def buffer_bands(data: Any, size: tuple[int, int], stride: int, mode: str,
                 rows: int) -> Iterator[tuple[int, Image.Image]]:
    """Normalised bands of packed rows (`stride` bytes apart) of a `mode` image."""
    w, h = size
    view = memoryview(data)
    for y in range(0, h, rows):
        n = min(rows, h - y)
        band = Image.frombytes(mode, (w, n), view[y * stride:(y + n) * stride], "raw", mode,
                               stride)
        yield y, normalise(band)


def image_bands(im: Image.Image, rows: int) -> Iterator[tuple[int, Image.Image]]:
    """Normalised bands of a loaded Pillow image (converting it whole would double it)."""
    w, h = im.size
    for y in range(0, h, rows):
        yield y, normalise(im.crop((0, y, w, min(h, y + rows))))
