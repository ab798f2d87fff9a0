"""Deterministic test images and TIFF writers (small, generated in tmp_path)."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageStat

from thumbnailer._tiff import CODEC_TAGS
from thumbnailer._tiffio import Tag, TiffWriter, read_structure


def pattern(w: int, h: int) -> Image.Image:
    """Smooth gradients plus a few hard-edged shapes: RGB."""
    r = Image.linear_gradient("L").resize((w, h), Image.Resampling.BILINEAR)
    g = Image.radial_gradient("L").resize((w, h), Image.Resampling.BILINEAR)
    b = r.transpose(Image.Transpose.ROTATE_90).resize((w, h), Image.Resampling.BILINEAR)
    im = Image.merge("RGB", (r, g, b))
    d = ImageDraw.Draw(im)
    d.ellipse((w * 0.2, h * 0.15, w * 0.55, h * 0.6), fill=(200, 40, 60))
    d.rectangle((w * 0.6, h * 0.55, w * 0.9, h * 0.85), fill=(20, 160, 90))
    d.line((0, h - 1, w - 1, 0), fill=(250, 250, 20), width=max(2, w // 60))
    return im


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    assert a.mode == b.mode, (a.mode, b.mode)
    diff = ImageChops.difference(a, b)
    rms = ImageStat.Stat(diff).rms
    mse = sum(x * x for x in rms) / len(rms)
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def reference(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    return im.resize(size, Image.Resampling.LANCZOS)


def dup16(data: bytes) -> bytes:
    """8-bit samples to 16-bit little-endian (v * 257)."""
    out = bytearray(2 * len(data))
    out[0::2] = data
    out[1::2] = data
    return bytes(out)


def pillow_segment(img: Image.Image, compression: str,
                   tiffinfo: dict[int, int] | None = None) -> tuple[bytes, list[Tag]]:
    """Encode `img` as one strip with Pillow/libtiff; return its bytes and its codec tags."""
    buf = io.BytesIO()
    img.save(buf, "TIFF", compression=compression, tiffinfo=tiffinfo or {},
             strip_size=1 << 30)
    buf.seek(0)
    st = read_structure(buf)
    ifd = st.pages[0]
    offs, counts = ifd.ints(273), ifd.ints(279)
    assert len(offs) == 1
    data = buf.getvalue()[offs[0]:offs[0] + counts[0]]
    tags = [(t, e.type, e.raw) for t, e in ifd.entries.items() if t in CODEC_TAGS]
    return data, tags


def segment_encoder(compression: str, predictor: bool = False):  # type: ignore[no-untyped-def]
    """A function img -> (bytes, codec tags) for tiles."""
    if compression == "jpeg-ycbcr":
        def enc(img: Image.Image) -> tuple[bytes, list[Tag]]:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=92)
            spp = 1 if img.mode == "L" else 3
            tags: list[Tag] = [(259, 3, (7,)), (262, 3, (1 if spp == 1 else 6,)),
                               (258, 3, (8,) * spp), (277, 3, (spp,))]
            return buf.getvalue(), tags
        return enc

    def enc2(img: Image.Image) -> tuple[bytes, list[Tag]]:
        return pillow_segment(img, compression, {317: 2} if predictor else None)
    return enc2


def write_tiled(path: Path, img: Image.Image, tile: int = 64, compression: str = "raw",
                predictor: bool = False, bigtiff: bool = False,
                extra: list[Tag] | None = None) -> None:
    enc = segment_encoder(compression, predictor)
    with open(path, "wb") as f:
        wr = TiffWriter(f, "<", bigtiff)
        ifd = write_tiled_ifd(wr, img, tile, enc, extra or [])
        wr.finish([ifd])


def write_tiled_ifd(wr: TiffWriter, img: Image.Image, tile: int, enc, extra: list[Tag]) -> int:  # type: ignore[no-untyped-def]
    w, h = img.size
    offs, counts = [], []
    codec: list[Tag] = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            data, codec = enc(img.crop((x, y, x + tile, y + tile)))
            offs.append(wr.write_data(data))
            counts.append(len(data))
    otype = 16 if wr.big else 4
    tags: list[Tag] = [*codec, (256, 4, (w,)), (257, 4, (h,)), (322, 3, (tile,)),
                       (323, 3, (tile,)), (324, otype, tuple(offs)),
                       (325, otype, tuple(counts)), *extra]
    seen: set[int] = set()
    uniq: list[Tag] = []
    for t in reversed(tags):  # later tags (extra) win
        if t[0] not in seen:
            seen.add(t[0])
            uniq.append(t)
    return wr.write_ifd(uniq)


def write_strips_raw(path: Path, size: tuple[int, int], spp: int, bps: int, photometric: int,
                     rows: list[bytes] | None = None, planes: list[bytes] | None = None,
                     rps: int = 16, extra: list[Tag] | None = None,
                     bigtiff: bool = False) -> None:
    """Uncompressed strips from whole-image bytes: chunky (`rows`) or planar (`planes`)."""
    w, h = size
    with open(path, "wb") as f:
        wr = TiffWriter(f, "<", bigtiff)
        offs, counts = [], []
        if planes is not None:
            rb = w * bps // 8
            for plane in planes:
                for y in range(0, h, rps):
                    n = min(rps, h - y)
                    offs.append(wr.write_data(plane[y * rb:(y + n) * rb]))
                    counts.append(n * rb)
        else:
            assert rows is not None
            data = rows[0]
            rb = -(-(w * spp * bps) // 8)
            for y in range(0, h, rps):
                n = min(rps, h - y)
                offs.append(wr.write_data(data[y * rb:(y + n) * rb]))
                counts.append(n * rb)
        otype = 16 if bigtiff else 4
        tags: list[Tag] = [(256, 4, (w,)), (257, 4, (h,)), (258, 3, (bps,) * spp),
                           (259, 3, (1,)), (262, 3, (photometric,)), (277, 3, (spp,)),
                           (278, 4, (rps,)), (273, otype, tuple(offs)),
                           (279, otype, tuple(counts)),
                           (284, 3, (2 if planes is not None else 1,)), *(extra or [])]
        wr.finish([wr.write_ifd(tags)])


# --- a tiny CMYK ICC profile (lut16 A2B0, PCS XYZ) ------------------------------------------

def cmyk_icc() -> bytes:
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    m = ((0.4360747, 0.3850649, 0.1430804), (0.2225045, 0.7168786, 0.0606169),
         (0.0139322, 0.0971045, 0.7141733))
    clut = bytearray()
    for c in (0, 1):
        for mg in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = ((1 - c) * (1 - k) * 0.95 + 0.02, (1 - mg) * (1 - k) * 0.9 + 0.03,
                           (1 - y) * (1 - k) * 0.97 + 0.01)
                    xyz = [sum(m[i][j] * rgb[j] for j in range(3)) for i in range(3)]
                    clut += struct.pack(">3H", *(min(65535, round(v * 32768)) for v in xyz))
    lut = bytearray(b"mft2\0\0\0\0" + bytes([4, 3, 2, 0]))
    for i in range(3):
        for j in range(3):
            lut += s15(1.0 if i == j else 0.0)
    lut += struct.pack(">HH", 2, 2)
    lut += struct.pack(">2H", 0, 65535) * 4
    lut += clut
    lut += struct.pack(">2H", 0, 65535) * 3
    wtpt = b"XYZ \0\0\0\0" + s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"test CMYK\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    tags = [(b"desc", bytes(desc)), (b"wtpt", wtpt), (b"A2B0", bytes(lut))]
    offset = 128 + 4 + 12 * len(tags)
    table = struct.pack(">I", len(tags))
    body = b""
    for sig, data in tags:
        pad = data + b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += pad
    total = offset + len(body)
    header = (struct.pack(">I", total) + b"\0\0\0\0" + struct.pack(">I", 0x02100000)
              + b"prtrCMYKXYZ " + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128, len(header)
    return header + table + body


def write_big_striped(path: Path, w: int, h: int, rows_per_strip: int = 64,
                      band_rows: int = 256) -> None:
    """Stream an uncompressed RGB TIFF of any size to disk, holding one band at a time."""
    band = pattern(w, band_rows).tobytes()
    rb = w * 3
    with open(path, "wb") as f:
        wr = TiffWriter(f, "<", bigtiff=w * h * 3 > 4_000_000_000)
        start = wr.pos
        y = 0
        while y < h:
            n = min(band_rows, h - y)
            wr.write_data(memoryview(band)[: n * rb])
            y += n
        strips = range(0, h, rows_per_strip)
        otype = 16 if wr.big else 4
        offs = tuple(start + y * rb for y in strips)
        counts = tuple(min(rows_per_strip, h - y) * rb for y in strips)
        tags: list[Tag] = [(256, 4, (w,)), (257, 4, (h,)), (258, 3, (8, 8, 8)), (259, 3, (1,)),
                           (262, 3, (2,)), (277, 3, (3,)), (278, 4, (rows_per_strip,)),
                           (273, otype, offs), (279, otype, counts), (284, 3, (1,))]
        wr.finish([wr.write_ifd(tags)])


# --- PNG files of any size, streamed (the generator holds a few rows) ------------------------

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of each pass


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def corner_row(w: int, y: int, x0: int, dx: int, corner: int,
               ink: bytes = b"\xff\x00\x00", paper: bytes = b"\x00\x00\xff") -> bytes:
    """Pixels x0, x0 + dx, ... of row y of an RGB image that is `paper` except a
    corner x corner block of `ink` at the top left."""
    n = len(range(x0, w, dx))
    if y >= corner:
        return paper * n
    k = len(range(x0, min(corner, w), dx))
    return ink * k + paper * (n - k)


def write_png(path: Path, w: int, h: int, row, interlace: bool = False,  # type: ignore[no-untyped-def]
              exif: bytes | None = None, exif_after_idat: bool = False,
              idat_size: int = 1 << 20) -> None:
    """An 8-bit RGB PNG whose pixels x0, x0 + dx, ... of row y are row(y, x0, dx), deflated as
    one stream (Adam7 passes take their pixels the same way)."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, int(interlace))))
        if exif is not None and not exif_after_idat:
            f.write(_chunk(b"eXIf", exif))
        z = zlib.compressobj(1)
        pending = bytearray()

        def put(data: bytes) -> None:
            pending.extend(z.compress(data))
            while len(pending) >= idat_size:
                f.write(_chunk(b"IDAT", bytes(pending[:idat_size])))
                del pending[:idat_size]

        if not interlace:
            for y in range(h):
                put(b"\0" + row(y, 0, 1))
        else:
            for x0, y0, dx, dy in ADAM7:
                if x0 >= w:
                    continue
                for y in range(y0, h, dy):
                    put(b"\0" + row(y, x0, dx))
        pending.extend(z.flush())
        f.write(_chunk(b"IDAT", bytes(pending)))
        if exif is not None and exif_after_idat:
            f.write(_chunk(b"eXIf", exif))
        f.write(_chunk(b"IEND", b""))


RED, BLUE = (255, 0, 0), (0, 0, 255)


def photo(w: int = 600, h: int = 400) -> Image.Image:
    """Blue with a red block in the stored top-left corner (orientation checks look for it)."""
    im = Image.new("RGB", (w, h), BLUE)
    im.paste(RED, (0, 0, w // 4, h // 4))
    return im


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[274] = orientation
    return e.tobytes()
