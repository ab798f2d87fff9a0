"""Mode normalisation and the banded integer-shrink accumulator."""

from __future__ import annotations

import io
import sys
import threading

from PIL import Image

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
        if im.mode == "RGB":
            return im
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
        from PIL import ImageCms  # lazy: loads LittleCMS, only needed for CMYK

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


class Accumulator:
    """Holds the k-times reduced image of a (src_w x src_h) source, filled band by band."""

    def __init__(self, src_w: int, src_h: int, k: int) -> None:
        self.src_w = src_w
        self.src_h = src_h
        self.k = k
        self.mode: str | None = None
        self.image: Image.Image | None = None
        self._pending: dict[tuple[int, int], tuple[Image.Image, int]] = {}

    @property
    def size(self) -> tuple[int, int]:
        return -(-self.src_w // self.k), -(-self.src_h // self.k)

    def _ensure(self, mode: str) -> Image.Image:
        if self.image is None:
            self.mode = mode
            # no fill: every pixel is pasted before finish(), and fresh memory is zeroed anyway
            self.image = Image.new(mode, self.size, None)
        elif mode != self.mode:
            raise ValueError(f"band mode {mode} differs from {self.mode}")
        return self.image

    def add(self, pieces: list[Piece]) -> None:
        for kind, xo, yo, img, rows in pieces:
            acc = self._ensure(img.mode)
            if kind == "paste":
                # the core paste (same mode, checked above): Image.paste's checks and
                # conversions cost more than a small block's copy; it clips at the edges too
                acc.im.paste(img.im, (xo, yo, xo + img.width, yo + img.height))
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


PARALLEL_RESIZE_MIN = 1 << 18  # output pixels below which one thread is faster
# The final resize covers the last 2-4x after the integer box shrink and is the biggest single
# step of a pyramid thumbnail. Bicubic (Pillow's own thumbnail() default) costs about 2/3 of
# Lanczos; against the ideal thumbnail it scored 0.1-0.9 dB lower PSNR on the benchmark files
# (38.4 vs 38.5 dB JPEG pyramid, 43.3 vs 44.2 dB tiled Deflate), far above the 30 dB bar.
FINAL_FILTER = Image.Resampling.BICUBIC
# Under 2x (a stored pyramid level, or an image with no integer pre-shrink) the resize reads a
# big source and is most of the work: Hamming has half of bicubic's taps there (5 vs 9 at 1.65x,
# 22 vs 34 ms for 1688x1625 -> 1024x986) and scored 0.24 dB lower on the JPEG pyramids
# (38.16 vs 38.40 dB; vips 38.4).
NEAR_FILTER = Image.Resampling.HAMMING
# Nearly 1:1 (under 1.25x: a JPEG level decoded by TurboJPEG at the M/8 just above the target)
# the resize is an interpolation more than a low-pass. On the JPEG pyramids (1055x1016 ->
# 1024x986): bilinear 38.39 dB, Hamming 37.96, bicubic 38.71 (vips 38.4; 38.16 before, from the
# 1688 px level with Hamming); bilinear and Hamming cost 17 ms, bicubic 24 ms, and bicubic
# made the whole process ~11% more instructions.
SNUG_FILTER = Image.Resampling.BILINEAR
SNUG_RATIO = 1.25
# A source decoded with DCT scaling (TurboJPEG at M/8 < 1) is already low-passed, and softly
# (at 1/8 each pixel is its block's mean): under 2x, Lanczos restores the edges that Hamming
# blurs further (tiled JPEG decoded at 1/8, 1500 -> 1024 px: 43.6 vs 42.2 dB).
SOFT_FILTER = Image.Resampling.LANCZOS


# Smaller thumbnail sizes are derived from a finished larger one (e.g. 256 px from the 1024 px
# image: an integer box shrink to 2-4x, then this filter). The source is small, so Lanczos costs
# little here, and it scored higher than rendering 256 px from the accumulator with
# FINAL_FILTER (pyramid 39.4 vs 38.8 dB, tiled Deflate 39.6 vs 39.1 dB, at half the CPU time).
SMALL_FILTER = Image.Resampling.LANCZOS


def shrink(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`im` resized to `size` (smaller) on one thread: integer box shrink leaving at least 2x,
    then SMALL_FILTER over the exact (fractional) box of the shrunk image."""
    w, h = size
    # 1.98, not 2: target sides are rounded, so an exact 4x is often 3.99x on one side
    k = max(1, int(min(im.width / w, im.height / h) / 1.98))
    src = im.reduce(k) if k > 1 else im
    return src.resize(size, SMALL_FILTER, box=(0.0, 0.0, im.width / k, im.height / k))


def final_filter(ratio: float, soft: bool = False) -> Image.Resampling:
    """The filter for a final resize by `ratio` (the larger of the two axes' ratios); `soft`:
    the source was decoded with DCT scaling."""
    if ratio < SNUG_RATIO:
        return SNUG_FILTER
    if ratio < 2:
        return SOFT_FILTER if soft else NEAR_FILTER
    return FINAL_FILTER


def resize(im: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float],
           workers: int = 1, soft: bool = False) -> Image.Image:
    """Resize of `box` to `size` (filter: final_filter), split into horizontal bands over
    `workers` threads.

    Pillow's resampling releases the GIL, and its filter support reaches past the box into the
    rest of the image, so the bands are exactly the rows of one whole resize."""
    w, h = size
    n = min(workers, h)
    flt = final_filter(max((box[2] - box[0]) / w, (box[3] - box[1]) / h), soft)
    if n <= 1 or w * h < PARALLEL_RESIZE_MIN:
        return im.resize(size, flt, box=box)
    x0, y0, x1, y1 = box
    step = (y1 - y0) / h
    cuts = [h * i // n for i in range(n + 1)]
    parts: list[Image.Image | None] = [None] * n
    errors: list[BaseException] = []

    def band(i: int) -> None:
        a, b = cuts[i], cuts[i + 1]
        try:
            parts[i] = im.resize((w, b - a), flt,
                                 box=(x0, y0 + a * step, x1, y1 if b == h else y0 + b * step))
        except BaseException as e:  # re-raised below, in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=band, args=(i,), daemon=True) for i in range(1, n)]
    for t in threads:
        t.start()
    band(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    out = Image.new(im.mode, size, None)  # no fill: every row is pasted
    for i, part in enumerate(parts):
        assert part is not None
        out.paste(part, (0, cuts[i]))
    return out
