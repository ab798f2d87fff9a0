"""Deterministic benchmark corpus for the thumbnailer, written band by band (bounded memory).

Every image is a bilinear upscale of one small master picture, so the ideal thumbnail is known
without decoding the big file: `truth(name, size)` renders it from the master.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from thumbnailer._tiffio import Tag, TiffWriter, read_structure

MASTER_SIZE = 1536
CODEC = (258, 259, 262, 266, 277, 284, 292, 293, 317, 320, 338, 339, 347, 530)


def master() -> Image.Image:
    n = MASTER_SIZE
    r = Image.linear_gradient("L").resize((n, n))
    g = Image.radial_gradient("L").resize((n, n))
    b = r.transpose(Image.Transpose.ROTATE_90)
    im = Image.merge("RGB", (r, g, b))
    d = ImageDraw.Draw(im)
    for i in range(12):
        x, y = (i * 397) % n, (i * 613) % n
        d.ellipse((x, y, x + n // 6, y + n // 8), fill=((i * 70) % 256, (i * 150) % 256, 90))
    d.line((0, n - 1, n - 1, 0), fill=(250, 250, 20), width=n // 80)
    return im


_MASTER: Image.Image | None = None


def _m() -> Image.Image:
    global _MASTER
    if _MASTER is None:
        _MASTER = master()
    return _MASTER


_PALETTE: Image.Image | None = None


def palette_image() -> Image.Image:
    global _PALETTE
    if _PALETTE is None:
        _PALETTE = _m().quantize(64, dither=Image.Dither.NONE)
    return _PALETTE


def convert(im: Image.Image, kind: str) -> Image.Image:
    """Master-space RGB band -> the stored mode of corpus kind `kind`."""
    if kind == "gray16":
        g = im.convert("L").tobytes()
        out = bytearray(2 * len(g))
        out[0::2] = g
        out[1::2] = g
        return Image.frombytes("I;16", im.size, bytes(out))
    if kind == "cmyk":
        return im.convert("CMYK")
    if kind == "palette":
        return im.quantize(palette=palette_image(), dither=Image.Dither.NONE)
    if kind == "bilevel":
        return im.convert("L").convert("1", dither=Image.Dither.NONE)
    return im


def truth(kind: str, size: tuple[int, int]) -> Image.Image:
    """The ideal thumbnail of a corpus image of kind `kind`, in L or RGB."""
    im = convert(_m(), kind)
    if kind == "gray16":
        return _m().convert("L").resize(size, Image.Resampling.LANCZOS)
    if kind == "bilevel":
        return im.convert("L").resize(size, Image.Resampling.LANCZOS)
    return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def region(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    """Pixels `box` of the master upscaled to w x h (bilinear), without the whole image."""
    x0, y0, x1, y1 = box
    sx, sy = MASTER_SIZE / w, MASTER_SIZE / h
    return _m().resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR,
                       box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def _pillow_segment(img: Image.Image, compression: str, predictor: bool) -> tuple[bytes, list[Tag]]:
    buf = io.BytesIO()
    img.save(buf, "TIFF", compression=compression, tiffinfo={317: 2} if predictor else {},
             strip_size=1 << 30)
    buf.seek(0)
    ifd = read_structure(buf).pages[0]
    off, cnt = ifd.ints(273)[0], ifd.ints(279)[0]
    tags = [(t, e.type, e.raw) for t, e in ifd.entries.items() if t in CODEC]
    return buf.getvalue()[off:off + cnt], tags


def encoder(compression: str, predictor: bool = False) -> Callable[[Image.Image],
                                                                   tuple[bytes, list[Tag]]]:
    if compression == "jpeg":
        def jpeg(img: Image.Image) -> tuple[bytes, list[Tag]]:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            return buf.getvalue(), [(259, 3, (7,)), (262, 3, (6,)), (258, 3, (8, 8, 8)),
                                    (277, 3, (3,))]
        return jpeg
    if compression == "deflate" and not predictor:
        def deflate(img: Image.Image) -> tuple[bytes, list[Tag]]:
            spp = len(img.getbands())
            return zlib.compress(img.tobytes(), 1), [
                (259, 3, (8,)), (262, 3, (2 if spp == 3 else 1,)), (258, 3, (8,) * spp),
                (277, 3, (spp,))]
        return deflate
    name = {"lzw": "tiff_lzw", "deflate": "tiff_adobe_deflate", "g4": "group4",
            "packbits": "packbits"}[compression]
    return lambda img: _pillow_segment(img, name, predictor)


def write_level(wr: TiffWriter, w: int, h: int, kind: str, tile: int | None,
                enc: Callable[[Image.Image], tuple[bytes, list[Tag]]] | None,
                extra: list[Tag], rps: int = 64) -> int:
    """Write one IFD's data (tiles, or strips of `rps` rows) and the IFD; returns its offset."""
    offs: list[int] = []
    counts: list[int] = []
    codec: list[Tag] = []
    if tile:
        assert enc is not None
        for y in range(0, h, tile):
            band = convert(region(w, h, (0, y, w, min(y + tile, h))), kind)
            for x in range(0, w, tile):
                data, codec = enc(band.crop((x, 0, x + tile, tile)))
                offs.append(wr.write_data(data))
                counts.append(len(data))
        geo: list[Tag] = [(322, 3, (tile,)), (323, 3, (tile,))]
        otag, ctag = 324, 325
    else:
        band_rows = max(rps, (4 << 20) // (w * 3) // rps * rps)
        for y in range(0, h, band_rows):
            band = convert(region(w, h, (0, y, w, min(y + band_rows, h))), kind)
            for r in range(0, band.height, rps):
                part = band.crop((0, r, w, min(r + rps, band.height)))
                if enc is None:
                    data = part.tobytes()
                else:
                    data, codec = enc(part)
                offs.append(wr.write_data(data))
                counts.append(len(data))
        geo = [(278, 4, (rps,))]
        otag, ctag = 273, 279
        if enc is None:
            mode_tags = {"rgb": [(262, 3, (2,)), (277, 3, (3,)), (258, 3, (8, 8, 8))],
                         "gray16": [(262, 3, (1,)), (277, 3, (1,)), (258, 3, (16,))]}[kind]
            codec = [(259, 3, (1,)), *mode_tags]
    ot = 16 if wr.big else 4
    tags: dict[int, Tag] = {t[0]: t for t in codec}
    for t in [(256, 4, (w,)), (257, 4, (h,)), *geo, (otag, ot, tuple(offs)),
              (ctag, ot, tuple(counts)), *extra]:
        tags[t[0]] = t
    return wr.write_ifd(list(tags.values()))


@dataclass
class Spec:
    name: str
    kind: str  # rgb, gray16, cmyk, palette, bilevel
    w: int
    h: int
    build: Callable[[Path, Spec], None]
    ext: str = "tif"


def simple(compression: str | None, tile: int | None, predictor: bool = False,
           bigtiff: bool = False, rps: int = 64) -> Callable[[Path, Spec], None]:
    def build(path: Path, s: Spec) -> None:
        enc = encoder(compression, predictor) if compression else None
        with open(path, "wb") as f:
            wr = TiffWriter(f, "<", bigtiff)
            wr.finish([write_level(wr, s.w, s.h, s.kind, tile, enc, [], rps)])
    return build


def pyramid(style: str) -> Callable[[Path, Spec], None]:
    def build(path: Path, s: Spec) -> None:
        enc = encoder("jpeg")
        with open(path, "wb") as f:
            wr = TiffWriter(f, "<")
            dims = []
            w, h = s.w, s.h
            while min(w, h) >= 512:
                dims.append((w, h))
                w, h = -(-w // 2), -(-h // 2)
            reduced: list[Tag] = [(254, 4, (1,))]
            if style == "subifd":
                subs = [write_level(wr, lw, lh, s.kind, 256, enc, reduced) for lw, lh in dims[1:]]
                ifd0 = write_level(wr, s.w, s.h, s.kind, 256, enc, [(330, 4, tuple(subs))])
                wr.finish([ifd0])
            else:
                chain = [write_level(wr, s.w, s.h, s.kind, 256, enc, [])]
                chain += [write_level(wr, lw, lh, s.kind, 256, enc, reduced)
                          for lw, lh in dims[1:]]
                wr.finish(chain)
    return build


def header_bomb(path: Path, s: Spec) -> None:
    with open(path, "wb") as f:
        wr = TiffWriter(f)
        blob = wr.write_data(zlib.compress(b"\0" * 65536))
        n = 2000
        tags: list[Tag] = [(256, 4, (s.w,)), (257, 4, (s.h,)), (258, 3, (8, 8, 8)),
                           (259, 3, (8,)), (262, 3, (2,)), (277, 3, (3,)),
                           (278, 4, (-(-s.h // n),)), (273, 4, (blob,) * n),
                           (279, 4, (100,) * n)]
        wr.finish([wr.write_ifd(tags)])


def png_file(path: Path, s: Spec) -> None:
    """An 8-bit RGB PNG streamed band by band (filter 0, zlib level 1)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", s.w, s.h, 8, 2, 0, 0, 0)))
        z = zlib.compressobj(1)
        rb = s.w * 3
        for y in range(0, s.h, 64):
            band = region(s.w, s.h, (0, y, s.w, min(y + 64, s.h))).tobytes()
            raw = b"".join(b"\0" + band[i:i + rb] for i in range(0, len(band), rb))
            data = z.compress(raw)
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", z.flush()))
        f.write(chunk(b"IEND", b""))


def phone_photo(fmt: str) -> Callable[[Path, Spec], None]:
    """A 12 MP photo as HEIC (pillow-heif, 512 px grid tiles like a phone's) or AVIF."""
    def build(path: Path, s: Spec) -> None:
        im = region(s.w, s.h, (0, 0, s.w, s.h))
        if fmt == "heic":
            import pillow_heif

            pillow_heif.from_pillow(im).save(path, quality=80, tile_size=512)
        else:
            im.save(path, "AVIF", quality=70, speed=8)
    return build


def corpus(scale: float) -> Iterator[Spec]:
    def d(n: int) -> int:
        return max(256, int(n * scale))

    yield Spec("strip_raw_rgb_500MB", "rgb", d(13000), d(13000), simple(None, None))
    yield Spec("bigtiff_raw_rgb_2GB", "rgb", d(27000), d(26000), simple(None, None, bigtiff=True))
    yield Spec("strip_lzw_pred_rgb", "rgb", d(10000), d(10000), simple("lzw", None, True, rps=16))
    yield Spec("tile_lzw_rgb", "rgb", d(10000), d(10000), simple("lzw", 256))
    yield Spec("tile_deflate_rgb", "rgb", d(10000), d(10000), simple("deflate", 256))
    yield Spec("tile_jpeg_rgb", "rgb", d(12000), d(12000), simple("jpeg", 256))
    yield Spec("pyramid_subifd_jpeg", "rgb", d(27000), d(26000), pyramid("subifd"))
    yield Spec("pyramid_pages_jpeg", "rgb", d(27000), d(26000), pyramid("pages"))
    yield Spec("gray16_raw", "gray16", d(10000), d(10000), simple(None, None))
    yield Spec("cmyk_lzw", "cmyk", d(10000), d(8000), simple("lzw", None, rps=16))
    yield Spec("palette_lzw", "palette", d(10000), d(10000), simple("lzw", None, rps=32))
    yield Spec("bilevel_g4", "bilevel", d(20000), d(20000), simple("g4", None, rps=256))
    yield Spec("header_bomb_19KB", "rgb", 100000, 100000, header_bomb)
    yield Spec("png_rgb_192Mpx", "rgb", d(16000), d(12000), png_file, "png")
    yield Spec("heic_phone_12MP", "rgb", d(4032), d(3024), phone_photo("heic"), "heic")
    yield Spec("avif_phone_12MP", "rgb", d(4032), d(3024), phone_photo("avif"), "avif")
