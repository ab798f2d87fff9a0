"""TIFF: structure, level choice, validation and banded decode into an Accumulator."""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial

from PIL import Image

from ._reduce import Accumulator, Piece, normalise, split_reduce
from ._tiffio import Ifd, Tag, TiffStructure, TiffWriter

# Tags copied verbatim into each per-band TIFF: codec and sample layout only.
CODEC_TAGS = (258, 259, 262, 266, 277, 284, 292, 293, 317, 320, 338, 339, 347,
              529, 530, 531, 532)
BAND_BYTES = 8 << 20  # decoded bytes per band, roughly
TILE_GROUP_BYTES = 16 << 20  # decoded bytes per group of tiles in one tile row
# Uncompressed bands have no per-band codec set-up: small ones stay in the L2 cache between the
# read, the unpack and the reduce, which measured faster than larger ones.
RAW_BAND_BYTES = 1 << 20
INFLATE_GROUP_BYTES = 2 << 20  # decoded bytes per group of tiles inflated by libdeflate

# TurboJPEG decodes at the smallest M/8 whose image is at least TURBO_MARGIN x the target. 1.0:
# the JPEG pyramids' 1688 px level at 5/8 (1055 px, 1.03x; then SNUG_FILTER) scored 38.7 dB,
# vips 38.4; at 6/8 with Hamming (margin 1.2) 38.85 dB for about the same CPU time.
TURBO_MARGIN = 1.0

PHOTOMETRIC_NAMES = {0: "L", 1: "L", 2: "RGB", 3: "P", 4: "1", 5: "CMYK", 6: "RGB", 8: "LAB",
                     9: "LAB", 10: "LAB", 32844: "L", 32845: "RGB"}
SUBFILE_REDUCED = 1
DEFLATE = (8, 32946)  # Adobe Deflate and the old Deflate code: both are zlib streams


class TiffError(Exception):
    """Bad or unsupported TIFF content; the message is the cause."""


class Level:
    __slots__ = ("height", "ifd", "source", "width")

    def __init__(self, ifd: Ifd, width: int, height: int, source: str) -> None:
        self.ifd = ifd
        self.width = width
        self.height = height
        self.source = source  # "ifd0", "subifd", "page"


def dims(ifd: Ifd) -> tuple[int, int]:
    w, h = ifd.num(256, 0), ifd.num(257, 0)
    if w <= 0 or h <= 0:
        raise TiffError(f"image has invalid dimensions {w}x{h}")
    return w, h


def describe(ifd: Ifd) -> tuple[str, int]:
    """(mode name, bits per sample) of an IFD, for the metadata."""
    spp = ifd.num(277, 1)
    bps = ifd.num(258, 1)
    photometric = ifd.num(262, 2 if spp >= 3 else 1)
    if photometric in (0, 1) and bps == 1:
        mode = "1"
    else:
        mode = PHOTOMETRIC_NAMES.get(photometric, "unknown")
    if mode == "L" and bps == 16:
        mode = "I;16"
    extra = spp - {"1": 1, "L": 1, "I;16": 1, "P": 1, "RGB": 3, "CMYK": 4, "LAB": 3}.get(mode, spp)
    if extra > 0 and ifd.num(338, 0) in (1, 2):
        mode = {"L": "LA", "I;16": "LA", "RGB": "RGBA"}.get(mode, mode)
    return mode, bps


def levels(st: TiffStructure) -> tuple[list[Level], int]:
    """The pyramid levels of page 0 (full resolution first) and the number of pages."""
    first = st.pages[0]
    w0, h0 = dims(first)
    out = [Level(first, w0, h0, "ifd0")]
    pages = 1
    cands: list[tuple[Ifd, str]] = [(s, "subifd") for s in st.subifds]
    for page in st.pages[1:]:
        if page.num(254, 0) & SUBFILE_REDUCED:
            cands.append((page, "page"))
        else:
            pages += 1
    for ifd, source in cands:
        try:
            w, h = dims(ifd)
        except TiffError:
            continue
        if w >= w0 or h >= h0:
            continue
        expect_h = w * h0 / w0
        if abs(h - expect_h) <= max(2.0, 0.01 * expect_h):
            out.append(Level(ifd, w, h, source))
    out.sort(key=lambda lv: lv.width * lv.height, reverse=True)
    return out, pages


def choose_level(lvls: list[Level], tw: int, th: int) -> Level:
    best = lvls[0]
    for lv in lvls[1:]:
        if lv.width >= tw and lv.height >= th and lv.width * lv.height < best.width * best.height:
            best = lv
    return best


class Segment:
    __slots__ = ("count", "h", "index", "offset", "w", "x", "y")

    def __init__(self, index: int, x: int, y: int, w: int, h: int, offset: int,
                 count: int) -> None:
        self.index = index  # in the offsets array
        self.x = x
        self.y = y
        self.w = w  # valid pixel width within the image
        self.h = h  # valid rows
        self.offset = offset
        self.count = count


class TiffDecoder:
    """Decodes one IFD band by band and feeds an Accumulator."""

    def __init__(self, st: TiffStructure, ifd: Ifd, fd: int) -> None:
        self.st = st
        self.ifd = ifd
        self.fd = fd
        self.width, self.height = dims(ifd)
        self.spp = ifd.num(277, 1)
        bps = ifd.ints(258, (1,))
        if len(set(bps)) != 1 or bps[0] not in (1, 2, 4, 8, 16, 32):
            raise TiffError(f"unsupported BitsPerSample {bps}")
        if self.spp < 1 or self.spp > 16:
            raise TiffError(f"unsupported SamplesPerPixel {self.spp}")
        self.bps = bps[0]
        self.compression = ifd.num(259, 1)
        self.predictor = ifd.num(317, 1)
        self.photometric = ifd.num(262, 2 if self.spp >= 3 else 1)
        self.planar = ifd.num(284, 1)
        if self.planar not in (1, 2):
            raise TiffError(f"invalid PlanarConfiguration {self.planar}")
        self.planes = self.spp if self.planar == 2 and self.spp > 1 else 1
        self.tiled = ifd.has(322) or ifd.has(324)
        if self.tiled:
            self.tile_w, self.tile_h = ifd.num(322, 0), ifd.num(323, 0)
            if self.tile_w <= 0 or self.tile_h <= 0:
                raise TiffError(f"invalid tile size {self.tile_w}x{self.tile_h}")
            self.offsets, self.counts = ifd.ints(324), ifd.ints(325)
        else:
            rps = ifd.num(278, self.height)
            if rps <= 0:
                raise TiffError(f"invalid RowsPerStrip {rps}")
            self.tile_w, self.tile_h = self.width, min(rps, self.height)
            self.offsets, self.counts = ifd.ints(273), ifd.ints(279)
        self.across = -(-self.width // self.tile_w)
        self.down = -(-self.height // self.tile_h)
        self.per_plane = self.across * self.down
        self._validate()
        self.jpeg_tables = ifd.raw(347)
        self._tls = threading.local()  # per-thread scratch buffers
        self.raw_mode: tuple[str, str] | None = None
        # 8-bit palette: bands are decoded as grey indices and the palette is attached after,
        # so Pillow does not parse the 768-value ColorMap again for every band.
        self.palette: bytes | None = None
        cmap = ifd.ints(320)
        if (self.photometric == 3 and self.spp == 1 and self.bps == 8 and len(cmap) == 768
                and not ifd.has(338)):
            self.palette = bytes(v >> 8 for v in cmap)  # Pillow's own 16 -> 8 bit mapping

    # -- validation ------------------------------------------------------------------------
    def row_bytes(self, w: int) -> int:
        samples = 1 if self.planes > 1 else self.spp
        return -(-(w * samples * self.bps) // 8)

    def _validate(self) -> None:
        kind = "tiles" if self.tiled else "strips"
        need = self.per_plane * self.planes
        if len(self.offsets) < need or len(self.counts) < need:
            raise TiffError(f"has {min(len(self.offsets), len(self.counts))} {kind}, "
                            f"its geometry needs {need}")
        size = self.st.size
        for i in range(need):
            off, cnt = self.offsets[i], self.counts[i]
            if cnt <= 0:
                raise TiffError(f"{kind[:-1]} {i} is empty")
            if off + cnt > size:
                raise TiffError(f"{kind[:-1]} {i} (offset {off}, {cnt} bytes) lies beyond the "
                                f"end of the file ({size} bytes): truncated")
        if self.compression == 1:
            for i in range(need):
                seg = self.segment(i)
                rows = self.tile_h if self.tiled else seg.h
                expect = rows * self.row_bytes(self.tile_w)
                if self.counts[i] < expect:
                    raise TiffError(f"uncompressed {kind[:-1]} {i} has {self.counts[i]} bytes, "
                                    f"its geometry needs {expect}")

    def segment(self, i: int) -> Segment:
        j = i % self.per_plane
        r, c = divmod(j, self.across)
        x, y = c * self.tile_w, r * self.tile_h
        return Segment(i, x, y, min(self.tile_w, self.width - x),
                       min(self.tile_h, self.height - y), self.offsets[i], self.counts[i])

    def read(self, off: int, n: int) -> bytes:
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise TiffError(f"short read at offset {off}: truncated")
        return data

    # -- per-band TIFFs ---------------------------------------------------------------------
    def codec_tags(self, uncompressed: bool = False) -> list[Tag]:
        """The codec and layout tags of the source; `uncompressed`: as if Compression were 1."""
        tags: list[Tag] = []
        for t in CODEC_TAGS:
            e = self.ifd.entries.get(t)
            if e is not None and not (uncompressed and t in (259, 317)):
                tags.append((t, e.type, e.raw))
        if uncompressed:
            tags.append((259, 3, (1,)))
        if self.palette is not None:
            tags = [t for t in tags if t[0] not in (262, 320)] + [(262, 3, (1,))]
        return tags

    def mini_tiff(self, width: int, height: int, datas: list[bytes], rows_per_strip: int,
                  tiled: bool, uncompressed: bool = False) -> bytes:
        buf = io.BytesIO()
        wr = TiffWriter(buf, self.st.byteorder)
        offs = [wr.write_data(d) for d in datas]
        counts = [len(d) for d in datas]
        tags = [*self.codec_tags(uncompressed), (256, 4, (width,)), (257, 4, (height,))]
        if tiled:
            tags += [(322, 4, (self.tile_w,)), (323, 4, (self.tile_h,)),
                     (324, 4, tuple(offs)), (325, 4, tuple(counts))]
        else:
            tags += [(278, 4, (rows_per_strip,)), (273, 4, tuple(offs)),
                     (279, 4, tuple(counts))]
        wr.finish([wr.write_ifd(tags)])
        return buf.getvalue()

    def open_mini(self, data: bytes) -> Image.Image:
        # The plugin class directly, not Image.open: that would import every Pillow plugin
        # (tens of ms per process) and probe formats for each band.
        from PIL import TiffImagePlugin  # lazy: not needed for JPEG pyramid levels

        im: Image.Image = TiffImagePlugin.TiffImageFile(io.BytesIO(data))
        im.load()
        if self.palette is not None:
            if im.mode != "L":
                raise TiffError(f"palette band decoded as {im.mode}")
            im.putpalette(self.palette, "RGB;L")
        return im

    def probe_raw(self, decompressed: bool = False) -> tuple[str, str] | None:
        """(mode, rawmode) if Pillow reads this chunky layout, uncompressed (or, with
        `decompressed`, after inflating the segments ourselves), as plain raw rows."""
        if self.compression != 1 and not decompressed:
            return None
        if self.planes > 1:
            return None
        from PIL import TiffImagePlugin

        rb = self.row_bytes(self.width)
        im = TiffImagePlugin.TiffImageFile(
            io.BytesIO(self.mini_tiff(self.width, 1, [bytes(rb)], 1, False, decompressed)))
        if len(im.tile) != 1 or im.tile[0].codec_name != "raw":
            return None
        args = im.tile[0].args
        rawmode = args[0] if isinstance(args, tuple) else args
        if not isinstance(rawmode, str):
            return None
        if isinstance(args, tuple) and len(args) > 1 and args[1] not in (0, rb):
            return None
        return im.mode, rawmode

    # -- band plans -------------------------------------------------------------------------
    def jpeg_decodable(self) -> bool:
        """JPEG segments that decode standalone (tables spliced in) to this IFD's pixels:
        8-bit YCbCr or grey, chunky. Not RGB or CMYK: without an Adobe marker a standalone
        decoder would take 3 components for YCbCr, and CMYK may be stored inverted."""
        if self.compression != 7 or self.bps != 8 or self.planes > 1:
            return False
        return ((self.photometric == 6 and self.spp == 3) or
                (self.photometric == 1 and self.spp == 1))

    def turbo_scale(self, tw: int, th: int) -> int:
        """M for decoding the JPEG segments with TurboJPEG at M/8 (1..8): the smallest scale
        whose output still covers tw x th, so the final resize is nearly 1:1; 0 when this path
        does not apply (not JPEG, or libturbojpeg not loadable)."""
        if not self.jpeg_decodable():
            return 0
        from . import _turbojpeg  # lazy: loads ctypes and the library

        if not _turbojpeg.available():
            return 0
        for m in _turbojpeg.scales():
            # segments must land on whole pixels of the scaled image
            if (self.tile_h * m) % 8 or (self.tiled and (self.tile_w * m) % 8):
                continue
            if m == 8 or (_turbojpeg.scaled(self.width, m) >= TURBO_MARGIN * tw
                          and _turbojpeg.scaled(self.height, m) >= TURBO_MARGIN * th):
                return m
        return 0

    def jpeg_scale(self, k: int) -> int:
        """DCT scale (1, 2, 4 or 8) usable for Pillow's draft() path, or 0 if not applicable."""
        if not self.jpeg_decodable():
            return 0
        for s in (8, 4, 2):
            if s <= k and self.tile_h % s == 0 and (not self.tiled or self.tile_w % s == 0):
                return s
        return 1

    def tasks(self, k: int, s: int, turbo: int = 0) -> Iterator[Callable[[], list[Piece]]]:
        """Band decode jobs; each returns reduced pieces for the accumulator (factor k/s).
        With `turbo` = M, JPEG segments are decoded by TurboJPEG at M/8 and then reduced by k."""
        if turbo:
            return self._turbo_tasks(turbo, k)
        kk = k // max(s, 1)
        if s:
            return self._jpeg_tasks(k, s, kk)
        if self.use_libdeflate():
            self.raw_mode = self.probe_raw(decompressed=True)
            if self.raw_mode is not None:
                return self._tile_tasks(k, self._inflate_tiles) if self.tiled else \
                    self._strip_tasks(k, self._inflate_strips)
        if not self.tiled:
            self.raw_mode = self.probe_raw()
            if self.raw_mode is not None:
                return self._raw_strip_tasks(k)
            return self._strip_tasks(k)
        return self._tile_tasks(k)

    def use_libdeflate(self) -> bool:
        """Deflate segments without a predictor are inflated by libdeflate (when loadable)
        and then take the uncompressed path; libtiff does everything else. Not YCbCr: Pillow
        has libtiff convert that (it may be subsampled) to RGB."""
        if (self.compression not in DEFLATE or self.predictor != 1 or self.planes != 1
                or self.photometric == 6):
            return False
        from . import _inflate  # lazy: loads ctypes

        return _inflate.available()

    def _groups(self, k: int, seg_bytes_per_col: int,
                group_bytes: int = TILE_GROUP_BYTES) -> list[tuple[int, int]]:
        """Split tile columns into groups [c0, c1) of ~group_bytes, x-aligned to k."""
        unit = k // math.gcd(self.tile_w, k)  # tiles per k-aligned step
        per = max(unit, (group_bytes // max(1, seg_bytes_per_col)) // unit * unit)
        return [(c, min(c + per, self.across)) for c in range(0, self.across, per)]

    def mem_row_bytes(self, w: int) -> int:
        """Bytes of one decoded row in memory (Pillow: 1 byte per pixel for 1/L/P; palette and
        multi-sample images become 4-byte RGB), plus the normalised copy."""
        return w * (8 if self.spp >= 2 or self.photometric == 3 else 3)

    def _strip_tasks(self, k: int, decode: Callable[[int, int, int], list[Piece]] | None = None,
                     ) -> Iterator[Callable[[], list[Piece]]]:
        strip_bytes = self.tile_h * max(self.mem_row_bytes(self.width),
                                        self.row_bytes(self.width) * self.planes)
        per = max(1, BAND_BYTES // max(1, strip_bytes))
        for r0 in range(0, self.down, per):
            r1 = min(r0 + per, self.down)
            yield partial(decode or self._decode_strips, r0, r1, k)

    def _inflate_strips(self, r0: int, r1: int, k: int) -> list[Piece]:
        """Strips r0..r1 inflated by libdeflate into one buffer; libtiff if that fails."""
        rb = self.row_bytes(self.width)
        y0 = r0 * self.tile_h
        y1 = min(r1 * self.tile_h, self.height)
        out = bytearray((y1 - y0) * rb)
        from . import _inflate

        try:
            with _inflate.Inflater() as inf:
                for i in range(r0, r1):
                    y = i * self.tile_h
                    n = min(self.tile_h, self.height - y)
                    inf.into(self.read(self.offsets[i], self.counts[i]), out, (y - y0) * rb,
                             n * rb)
        except _inflate.InflateError:
            # unusual but maybe valid (e.g. a padded last strip): let libtiff judge
            return self._decode_strips(r0, r1, k)
        return split_reduce(normalise(self._raw_image(out, self.width, y1 - y0)), 0, y0, k)

    def _decode_strips(self, r0: int, r1: int, k: int) -> list[Piece]:
        idx = [p * self.per_plane + r for p in range(self.planes) for r in range(r0, r1)]
        datas = [self.read(self.offsets[i], self.counts[i]) for i in idx]
        y0 = r0 * self.tile_h
        h = min(r1 * self.tile_h, self.height) - y0
        im = self.open_mini(self.mini_tiff(self.width, h, datas, self.tile_h, False))
        return split_reduce(normalise(im), 0, y0, k)

    def _raw_strip_tasks(self, k: int) -> Iterator[Callable[[], list[Piece]]]:
        rb = self.row_bytes(self.width)
        rows = max(1, RAW_BAND_BYTES // rb)
        if rows >= k:
            rows -= rows % k
        for y0 in range(0, self.height, rows):
            y1 = min(y0 + rows, self.height)
            yield partial(self._decode_raw_rows, y0, y1, k, rb)

    def _decode_raw_rows(self, y0: int, y1: int, k: int, rb: int) -> list[Piece]:
        assert self.raw_mode is not None
        parts: list[bytes] = []
        y = y0
        while y < y1:
            i, r = divmod(y, self.tile_h)
            n = min(self.tile_h - r, y1 - y)
            off = self.offsets[i] + r * rb
            # extend over following strips that are contiguous in the file
            while y + n < y1:
                j = i + 1
                if self.offsets[j] != self.offsets[i] + self.tile_h * rb:
                    break
                i = j
                n = min(n + self.tile_h, y1 - y)
            parts.append(self.read(off, n * rb))
            y += n
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return split_reduce(normalise(self._raw_image(data, self.width, y1 - y0)), 0, y0, k)

    def _raw_image(self, data: bytes | bytearray, w: int, h: int,
                   palette: bool = True, scratch: bool = False) -> Image.Image:
        """An image of `h` raw rows of `w` pixels in the layout found by probe_raw (may share
        `data`); `palette`: attach the palette of a palette image; `scratch`: may be this
        thread's reusable image (valid until its next call with scratch)."""
        assert self.raw_mode is not None
        mode, rawmode = self.raw_mode
        if scratch and mode == rawmode == "RGB":
            im = getattr(self._tls, "image", None)
            if im is None or im.size != (w, h):
                self._tls.image = None
                im = self._tls.image = Image.new(mode, (w, h), None)
            im.frombytes(data, "raw", rawmode)
            return im
        if mode in ("I;16", "I;16B") and rawmode == mode:
            # straight to 8-bit (the high byte, as normalise() does): one buffer, not three
            im = Image.new("L", (w, h), None)
            im.frombytes(data, "raw", "L;16" if mode == "I;16" else "L;16B")
            return im
        if mode in ("L", "RGBX", "RGBA", "CMYK") and rawmode == mode:
            im = Image.frombuffer(mode, (w, h), data, "raw", rawmode, 0, 1)
        else:
            # frombuffer would copy through a zero-filled image: unpack into an unfilled one
            im = Image.new(mode, (w, h), None)
            im.frombytes(data, "raw", rawmode)
        if palette and self.palette is not None:
            im.putpalette(self.palette, "RGB;L")
        return im

    def _tile_tasks(self, k: int,
                    decode: Callable[[int, int, int, int], list[Piece]] | None = None,
                    ) -> Iterator[Callable[[], list[Piece]]]:
        col_bytes = self.tile_h * max(self.mem_row_bytes(self.tile_w),
                                      self.row_bytes(self.tile_w) * self.planes)
        # inflated tiles need no per-band codec set-up: small groups stay in the cache
        group = TILE_GROUP_BYTES if decode is None else INFLATE_GROUP_BYTES
        for r in range(self.down):
            for c0, c1 in self._groups(k, col_bytes, group):
                yield partial(decode or self._decode_tiles, r, c0, c1, k)

    def _inflate_tiles(self, r: int, c0: int, c1: int, k: int) -> list[Piece]:
        """Tiles c0..c1 of tile row r inflated by libdeflate; libtiff if that fails."""
        if self.tile_w % k == 0 and self.tile_h % k == 0:
            return self._inflate_tile_stack(r, c0, c1, k)
        assert self.raw_mode is not None
        x0, y0 = c0 * self.tile_w, r * self.tile_h
        w = min(c1 * self.tile_w, self.width) - x0
        h = min(self.tile_h, self.height - y0)
        size = self.tile_h * self.row_bytes(self.tile_w)
        buf = bytearray(size)
        band = Image.new(self.raw_mode[0], (w, h), None)
        from . import _inflate

        try:
            with _inflate.Inflater() as inf:
                for c in range(c0, c1):
                    i = r * self.across + c
                    inf.into(self.read(self.offsets[i], self.counts[i]), buf, 0, size)
                    # pasting clips the padding of edge tiles
                    band.paste(self._raw_image(buf, self.tile_w, self.tile_h, False),
                               ((c - c0) * self.tile_w, 0))
        except _inflate.InflateError:
            return self._decode_tiles(r, c0, c1, k)
        if self.palette is not None:
            band.putpalette(self.palette, "RGB;L")
        return split_reduce(normalise(band), x0, y0, k)

    def _inflate_tile_stack(self, r: int, c0: int, c1: int, k: int) -> list[Piece]:
        """Tiles whose sides are multiples of k: inflated one below the other into this
        thread's scratch buffer, unpacked by one call into its scratch image and reduced by
        one call; the reduced blocks are placed side by side in one band. Reusing the buffers
        saves zeroing and page-faulting ~2 MB of fresh memory per group; one reduce and one
        band (core crop/paste, no Image objects per tile) cut the per-tile Python work."""
        th, tw = self.tile_h, self.tile_w
        size = th * self.row_bytes(tw)
        n = c1 - c0
        scratch = self._scratch(n * size)
        from . import _inflate

        try:
            with _inflate.Inflater() as inf:
                for j in range(n):
                    i = r * self.across + c0 + j
                    inf.into(self.read(self.offsets[i], self.counts[i]), scratch, j * size,
                             size)
        except _inflate.InflateError:
            return self._decode_tiles(r, c0, c1, k)
        stack = normalise(self._raw_image(scratch, tw, n * th, scratch=True))
        y0 = r * th
        vh = min(th, self.height - y0)
        x0 = c0 * tw
        w = min(c1 * tw, self.width) - x0
        if vh % k or w % k:
            # the valid area ends inside a block: each tile's box keeps its padding out
            pieces: list[Piece] = []
            for j in range(n):
                x = (c0 + j) * tw
                vw = min(tw, self.width - x)
                pieces.append(("paste", x // k, y0 // k,
                               stack.reduce(k, box=(0, j * th, vw, j * th + vh)), 0))
            return pieces
        # one reduce for the whole stack, then its blocks side by side in one band (core
        # crop and paste: no Image objects per tile), so the accumulator takes one paste
        whole = stack.reduce(k) if k > 1 else stack
        tk, wk = th // k, tw // k
        band = Image.new(whole.mode, (w // k, vh // k), None)
        src, dst = whole.im, band.im
        for j in range(n):
            vw = min(tw, w - j * tw) // k
            dst.paste(src.crop((0, j * tk, vw, j * tk + vh // k)),
                      (j * wk, 0, j * wk + vw, vh // k))
        del stack, whole, src
        return [("paste", x0 // k, y0 // k, band, 0)]

    def _scratch(self, nbytes: int) -> bytearray:
        """This thread's reusable buffer of at least `nbytes` (contents undefined)."""
        tls = self._tls
        buf: bytearray | None = getattr(tls, "buf", None)
        if buf is None or len(buf) < nbytes:
            tls.buf = buf = None  # free the old one first
            buf = tls.buf = bytearray(nbytes)
        return buf

    def _decode_tiles(self, r: int, c0: int, c1: int, k: int) -> list[Piece]:
        idx = [p * self.per_plane + r * self.across + c
               for p in range(self.planes) for c in range(c0, c1)]
        datas = [self.read(self.offsets[i], self.counts[i]) for i in idx]
        x0, y0 = c0 * self.tile_w, r * self.tile_h
        w = min(c1 * self.tile_w, self.width) - x0
        h = min(self.tile_h, self.height - y0)
        im = self.open_mini(self.mini_tiff(w, h, datas, 0, True))
        return split_reduce(normalise(im), x0, y0, k)

    # TurboJPEG path: the segments of a band are decoded at M/8 straight into one buffer.
    def _turbo_tasks(self, m: int, k: int) -> Iterator[Callable[[], list[Piece]]]:
        from ._turbojpeg import scaled

        bpp = 1 if self.spp == 1 else 3
        if self.tiled:
            slot_w, slot_h = self.tile_w * m // 8, self.tile_h * m // 8
            col_bytes = slot_w * slot_h * (bpp + 4)  # the buffer and the band image
            unit = k // math.gcd(slot_w, k)  # tile columns per k-aligned step
            per = max(unit, (TILE_GROUP_BYTES // col_bytes) // unit * unit)
            for r in range(self.down):
                for c0 in range(0, self.across, per):
                    idx = [r * self.across + c for c in range(c0, min(c0 + per, self.across))]
                    yield partial(self._decode_turbo, idx, m, k)
        else:
            strip_bytes = scaled(self.width, m) * (self.tile_h * m // 8) * (bpp + 4)
            per = max(1, BAND_BYTES // max(1, strip_bytes))
            for r0 in range(0, self.down, per):
                yield partial(self._decode_turbo, list(range(r0, min(r0 + per, self.down))),
                              m, k)

    def _decode_turbo(self, idx: list[int], m: int, k: int) -> list[Piece]:
        """Segments idx (tiles of one tile row, or consecutive strips) decoded at m/8 into one
        band buffer, each at its place (rows `pitch` bytes apart); the band image is the valid
        part of it, reduced by k."""
        import ctypes

        from . import _turbojpeg as tj

        kind = "tile" if self.tiled else "strip"
        gray = self.spp == 1
        bpp = 1 if gray else 3
        sw_img, sh_img = tj.scaled(self.width, m), tj.scaled(self.height, m)
        if self.tiled:
            slot_w, slot_h = self.tile_w * m // 8, self.tile_h * m // 8
            band_w, band_h = slot_w * len(idx), slot_h
        else:
            slot_w, slot_h = sw_img, self.tile_h * m // 8
            band_w, band_h = slot_w, slot_h * len(idx)
        pitch = band_w * bpp
        buf = bytearray(pitch * band_h)
        cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
        base = ctypes.addressof(cbuf)
        tables = self.jpeg_tables
        segs = [self.segment(i) for i in idx]
        try:
            with tj.Decompressor() as dec:
                for j, g in enumerate(segs):
                    data = self.read(g.offset, g.count)
                    if tables and len(tables) > 4 and data[:2] == b"\xff\xd8":
                        data = tables[:-2] + data[2:]
                    try:
                        jw, jh, _sub, cs = dec.header(data)
                    except tj.JpegError as e:
                        raise TiffError(f"JPEG {kind} {g.index} is corrupt ({e})") from e
                    sw, sh = tj.scaled(jw, m), tj.scaled(jh, m)
                    vw, vh = tj.scaled(g.w, m), tj.scaled(g.h, m)
                    if cs not in (tj.CS_YCBCR, tj.CS_RGB, tj.CS_GRAY):
                        raise TiffError(f"JPEG {kind} {g.index} has colour space {cs}, "
                                        f"the TIFF says photometric {self.photometric}")
                    # never write outside the segment's slot; cover its valid pixels
                    if (sw > slot_w or sh > slot_h or sw < vw or sh < vh
                            or not tj.picks(jw, jh, m)):
                        raise TiffError(f"JPEG {kind} {g.index} is {jw}x{jh}, its geometry "
                                        f"needs {g.w}x{g.h} within "
                                        f"{self.tile_w if self.tiled else self.width}x"
                                        f"{self.tile_h}")
                    ox, oy = (j * slot_w, 0) if self.tiled else (0, j * slot_h)
                    try:
                        dec.decode(data, base + oy * pitch + ox * bpp, sw, pitch, sh,
                                   tj.PF_GRAY if gray else tj.PF_RGB)
                    except tj.JpegError as e:
                        raise TiffError(f"JPEG {kind} {g.index} is corrupt or truncated "
                                        f"({e})") from e
        finally:
            del cbuf
        x0, y0 = segs[0].x * m // 8, segs[0].y * m // 8
        w, h = min(band_w, sw_img - x0), min(band_h, sh_img - y0)
        band = Image.new("L" if gray else "RGB", (w, h), None)
        band.frombytes(buf, "raw", "L" if gray else "RGB", pitch, 1)
        return split_reduce(band, x0, y0, k)

    # JPEG fast path without TurboJPEG: each tile or strip is decoded as a standalone JPEG
    # by Pillow at 1/s scale.
    def _jpeg_tasks(self, k: int, s: int, kk: int) -> Iterator[Callable[[], list[Piece]]]:
        if self.tiled:
            col_bytes = self.tile_h * self.tile_w * self.spp // (s * s)
            for r in range(self.down):
                for c0, c1 in self._groups(k, col_bytes):
                    idx = [r * self.across + c for c in range(c0, c1)]
                    yield partial(self._decode_jpegs, idx, s, kk)
        else:
            strip_bytes = self.tile_h * self.width * self.spp // (s * s)
            per = max(1, BAND_BYTES // max(1, strip_bytes))
            for r0 in range(0, self.down, per):
                idx = list(range(r0, min(r0 + per, self.down)))
                yield partial(self._decode_jpegs, idx, s, kk)

    def _decode_jpegs(self, idx: list[int], s: int, kk: int) -> list[Piece]:
        segs = [self.segment(i) for i in idx]
        x0, y0 = segs[0].x, segs[0].y
        x1 = max(g.x + g.w for g in segs)
        y1 = max(g.y + g.h for g in segs)
        mode = "L" if self.spp == 1 else "RGB"
        # kk == 1 (a pyramid level, or DCT scaling did all the shrinking): each segment goes
        # straight into the accumulator, which clips the padding of edge segments; no band.
        band = None if kk == 1 else Image.new(mode, (-(-(x1 - x0) // s), -(-(y1 - y0) // s)),
                                               None)
        pieces: list[Piece] = []
        tables = self.jpeg_tables
        for g in segs:
            data = self.read(g.offset, g.count)
            if tables and len(tables) > 4 and data[:2] == b"\xff\xd8":
                data = tables[:-2] + data[2:]
            from PIL import JpegImagePlugin  # lazy: the TurboJPEG path does not need it

            tile: Image.Image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
            # the segment's own size: a last strip may be stored shorter than RowsPerStrip,
            # and draft() picks the smallest scale still covering the requested size
            jw, jh = tile.size
            want = (-(-jw // s), -(-jh // s))
            tile.draft(mode, want)
            tile.load()
            if tile.mode != mode:
                tile = tile.convert(mode)
            vw, vh = -(-g.w // s), -(-g.h // s)
            full_w = self.tile_w if self.tiled else self.width
            if (tile.size != want or tile.width < vw or tile.height < vh
                    or jw > full_w or jh > self.tile_h):
                raise TiffError(f"JPEG segment {g.index} is {jw}x{jh} and decodes to "
                                f"{tile.size}, its geometry needs {g.w}x{g.h} within "
                                f"{full_w}x{self.tile_h}")
            if band is None:
                pieces.append(("paste", g.x // s, g.y // s, tile, 0))
            else:
                # the band ends where the image does: pasting clips the padding of edge
                # segments
                band.paste(tile, ((g.x - x0) // s, (g.y - y0) // s))
        if band is None:
            return pieces
        return split_reduce(band, x0 // s, y0 // s, kk)


def run_tasks(tasks: Iterator[Callable[[], list[Piece]]], acc: Accumulator,
              workers: int) -> int:
    """Run band jobs on `workers` threads (this one included); returns the number of bands.

    Each thread takes the next job, decodes and reduces it (the codecs and reduce release the
    GIL), then adds it to the accumulator under a lock, so at most `workers` bands are alive.
    """
    lock = threading.Lock()
    count = 0
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal count
        while True:
            with lock:
                if errors:
                    return
                try:
                    task = next(tasks, None)
                except BaseException as e:
                    errors.append(e)
                    return
                if task is None:
                    return
                count += 1
            try:
                pieces = task()
                with lock:
                    acc.add(pieces)
            except BaseException as e:
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=work, name=f"thumb-{i}", daemon=True)
               for i in range(1, max(1, workers))]
    for t in threads:
        t.start()
    try:
        work()
    except BaseException as e:  # e.g. the CLI's time limit: stop the other threads too
        with lock:
            errors.append(e)
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return count
