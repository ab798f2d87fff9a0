"""make_thumbnails: metadata + thumbnails of any supported image with bounded memory."""

from __future__ import annotations

import logging
import os
import resource
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from ._reduce import Accumulator, resize, shrink, to_output_mode
from ._rows import band_rows, image_bands, reduce_bands
from ._tiff import TiffDecoder, TiffError, choose_level, describe, levels, run_tasks
from ._tiffio import TiffFormatError, read_structure
from .sniff import sniff

log = logging.getLogger("thumbnailer")

DEFAULT_SIZES = (256, 1024)
DEFAULT_MAX_PIXELS = 1_000_000_000
# Whatever is decoded whole (a JPEG after DCT scaling, a HEIF/AVIF image, a GIF, WebP or BMP, a
# PNG when libspng is missing) may use this much memory for its decode buffers: with the
# interpreter, Pillow and the output that keeps a run under 100 MB of peak RSS. TIFFs and
# PNGs are decoded in bands and are not limited by it.
DEFAULT_DECODE_MB = 64
DECODE_FLAG = "--max-decode-mb"
# Bytes of memory per pixel that Pillow's decoders use, beyond the image itself (4 bytes a
# pixel for RGB): WebP decodes into a canvas, copies it to bytes and then into the image.
PILLOW_EXTRA_BYTES = {"webp": 8.0}
# PNGs up to this many pixels are decoded whole by Pillow (exact and fastest when small).
PNG_WHOLE_MAX_PIXELS = 4_000_000
# JPEG files up to this size are read whole and decoded by TurboJPEG (when loadable) at any
# M/8 scale; larger ones are streamed through Pillow's decoder.
TURBO_MAX_FILE_BYTES = 32 << 20
OVERLAP_MAX_PIXELS = 4_000_000  # accumulator size up to which thumbnail sizes overlap
FORMATS = ("tiff", "jpeg", "png", "webp", "gif", "bmp", "heif", "avif")
EXTENSIONS = {"jpeg": "jpg", "webp": "webp"}
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class ImageError(Exception):
    """Bad input: not an image, truncated, corrupt, over a limit. The message names the file."""


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def target_size(w: int, h: int, n: int) -> tuple[int, int]:
    """Fit (w, h) into n on the longest side; never upscale."""
    longest = max(w, h)
    if longest <= n:
        return w, h
    scale = n / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def shrink_factor(w: float, h: float, tw: int, th: int) -> int:
    """Integer pre-shrink factor leaving at least 2x for the final Lanczos."""
    return max(1, int(min(w / tw, h / th) / 2))


def _event(event: str, **fields: Any) -> None:
    log.info(event, extra={"fields": fields})


_OPEN_LOCK = threading.Lock()


@contextmanager
def _pillow_open(path: Path) -> Iterator[Image.Image]:
    """Image.open with Pillow's bomb guard off: our own pixel cap runs right after, from the
    header, and decoding is bounded by draft scaling or FULL_DECODE_MAX_PIXELS."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        yield im
    finally:
        im.close()


def make_thumbnails(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    sizes: Sequence[int] = DEFAULT_SIZES,
    fmt: str = "jpeg",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    workers: int | None = None,
    max_decode_mb: int = DEFAULT_DECODE_MB,
) -> dict[str, Any]:
    """Write `thumb-<N>.<ext>` into out_dir for each size; return the metadata dict."""
    t0 = time.monotonic()
    p = Path(path)
    if fmt not in EXTENSIONS:
        raise ValueError(f"unsupported output format {fmt!r}")
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] <= 0:
        raise ValueError("sizes must be positive")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    try:
        kind = sniff(p)
        if kind is None:
            if not p.is_file():
                raise ImageError(f"{p}: no such file")
            raise ImageError(f"{p}: not a supported image (unknown format)")
        limit = max_decode_mb << 20
        oriented = False
        if kind == "tiff":
            meta, acc_img, box, icc, soft = _tiff(p, sizes, max_pixels, workers)
        elif kind in ("heif", "avif"):
            meta, acc_img, box, icc, soft, oriented = _heif(p, kind, sizes, max_pixels, limit,
                                                            workers)
        elif kind == "png":
            meta, acc_img, box, icc, soft = _png(p, sizes, max_pixels, limit)
        else:
            meta, acc_img, box, icc, soft = _pillow(p, kind, sizes, max_pixels, limit)
        meta["thumbnails"] = _write(p, out_dir, acc_img, box, icc, meta, sizes, fmt, workers,
                                    soft, oriented)
    except ImageError:
        raise
    except (TiffError, TiffFormatError) as e:
        raise ImageError(f"{p}: {e}") from e
    except MemoryError as e:
        raise ImageError(f"{p}: out of memory while decoding") from e
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
        raise ImageError(f"{p}: corrupt or truncated image ({_reason(e)})") from e
    meta["seconds"] = round(time.monotonic() - t0, 3)
    meta["peak_rss_mb"] = peak_rss_mb()
    _event("thumbnail.done", file=str(p), path=meta["path"], seconds=meta["seconds"],
           peak_rss_mb=meta["peak_rss_mb"])
    return meta


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_cap(p: Path, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError(f"{p}: image is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the "
                         f"{max_pixels / 1e6:.0f} Mpx cap (--max-pixels)")


def _base_meta(fmt: str, w: int, h: int, mode: str, bits: int) -> dict[str, Any]:
    return {"format": fmt, "width": w, "height": h, "mode": mode, "bit_depth": bits,
            "pages": 1, "levels": 1, "dpi": None, "orientation": 1, "icc": False}


# (metadata, accumulator image, its box in source pixels / k, ICC profile, DCT-scaled)
Result = tuple[dict[str, Any], Image.Image, tuple[float, float, float, float], bytes | None,
               bool]


def _tiff(p: Path, sizes: list[int], max_pixels: int, workers: int) -> Result:
    t0 = time.monotonic()
    fd = os.open(p, os.O_RDONLY)
    try:
        with os.fdopen(os.dup(fd), "rb") as fp:
            st = read_structure(fp)
        first = st.pages[0]
        lvls, pages = levels(st)
        W, H = lvls[0].width, lvls[0].height
        _check_cap(p, W, H, max_pixels)
        mode, bits = describe(first)
        meta = _base_meta("tiff", W, H, mode, bits)
        meta["pages"], meta["levels"] = pages, len(lvls)
        meta["orientation"] = first.num(274, 1) if 1 <= first.num(274, 1) <= 8 else 1
        icc = first.raw(34675)
        meta["icc"] = bool(icc)
        xres, yres = first.real(282), first.real(283)
        unit = first.num(296, 2)
        if xres and yres and unit in (2, 3):
            f = 2.54 if unit == 3 else 1.0
            meta["dpi"] = [round(xres * f, 2), round(yres * f, 2)]
        _event("thumbnail.open", file=str(p), format="tiff", width=W, height=H, mode=mode,
               bit_depth=bits, pages=pages, levels=len(lvls), bigtiff=st.bigtiff)

        tw, th = target_size(W, H, sizes[-1])
        level = choose_level(lvls, tw, th)
        dec = TiffDecoder(st, level.ifd, fd)
        m = dec.turbo_scale(tw, th)
        s = 0
        if m:
            # TurboJPEG decodes at m/8: the level is then sw x sh pixels, reduced by k
            sw, sh = dec.width * m / 8, dec.height * m / 8
            kk = k = shrink_factor(sw, sh, tw, th)
            acc = Accumulator(-(-dec.width * m // 8), -(-dec.height * m // 8), k)
            scale = f"{m}/8"
        else:
            # Pillow's draft(): DCT scale s in 1, 2, 4, 8 within the integer shrink k
            sw, sh = dec.width, dec.height
            k = shrink_factor(dec.width, dec.height, tw, th)
            s = dec.jpeg_scale(k)
            if s > 1:
                k -= k % s
            kk = k // max(s, 1)
            acc = Accumulator(-(-dec.width // max(s, 1)), -(-dec.height // max(s, 1)), kk)
            scale = f"1/{max(s, 1)}"
        soft = 0 < m < 8
        path = "pyramid" if level is not lvls[0] else (
            "jpeg-draft" if soft or s > 1 else "banded")
        reduction = round(W / (sw / k), 3)
        _event("thumbnail.plan", file=str(p), path=path, level=lvls.index(level),
               level_source=level.source, level_width=dec.width, level_height=dec.height,
               compression=dec.compression, tiled=dec.tiled, shrink=kk, dct_scale=scale,
               decoder="turbojpeg" if m else "pillow", reduction=reduction, workers=workers)
        t1 = time.monotonic()
        bands = run_tasks(dec.tasks(k, 0, m) if m else dec.tasks(k, s), acc, workers)
        img = acc.finish()
        _event("thumbnail.decoded", file=str(p), bands=bands, acc_width=img.width,
               acc_height=img.height, seconds=round(time.monotonic() - t1, 3),
               peak_rss_mb=peak_rss_mb())
    finally:
        os.close(fd)
    meta["path"], meta["reduction"] = path, reduction
    box = (0.0, 0.0, sw / k, sh / k)
    _ = t0
    return meta, img, box, icc, soft


def _pillow(p: Path, kind: str, sizes: list[int], max_pixels: int, limit: int) -> Result:
    with _pillow_open(p) as im:
        fmt = (im.format or kind).lower()
        if fmt == "mpo":
            fmt = "jpeg"
        W, H = im.size
        _check_cap(p, W, H, max_pixels)
        meta = _base_meta(fmt, W, H, im.mode, _bits(im, p))
        meta["pages"] = int(getattr(im, "n_frames", 1))
        dpi = im.info.get("dpi")
        if isinstance(dpi, tuple) and len(dpi) == 2:
            meta["dpi"] = [round(float(dpi[0]), 2), round(float(dpi[1]), 2)]
        icc = im.info.get("icc_profile") or None
        meta["icc"] = bool(icc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = im.getexif().get(274, 1)
        meta["orientation"] = orientation if isinstance(orientation, int) and \
            1 <= orientation <= 8 else 1
        _event("thumbnail.open", file=str(p), format=fmt, width=W, height=H, mode=im.mode,
               pages=meta["pages"])
        tw, th = target_size(W, H, sizes[-1])
        path = "full"
        t1 = time.monotonic()
        turbo = None
        if fmt == "jpeg" and im.mode in ("RGB", "L"):
            turbo = _turbo_jpeg(p, W, H, tw, th, limit)
        if turbo is not None:
            img, sw, sh, m = turbo
            dw, dh = img.size
            soft = m < 8
            path = "jpeg-draft" if soft else "full"
        else:
            soft = False
            if fmt == "jpeg" and im.mode in ("RGB", "L", "CMYK"):
                im.draft(im.mode, (2 * tw, 2 * th))
                if im.size != (W, H):
                    path = "jpeg-draft"
            dw, dh = im.size
            sw, sh = dw, dh
            _check_decode(p, fmt, W, H, _pillow_cost(im, fmt), limit)
            im.load()
        if turbo is None:
            # cut into bands: converting the whole image (palette, alpha) would double it
            k = shrink_factor(sw, sh, tw, th)
            out, bx = reduce_bands(image_bands(im, band_rows(dw, k, 4)), dw, dh, (tw, th))
        else:
            k = shrink_factor(sw, sh, tw, th)
            out = img.reduce(k) if k > 1 else img
            bx = (0.0, 0.0, sw / k, sh / k)
        reduction = round(W / bx[2], 3)
        _event("thumbnail.plan", file=str(p), path=path, decoded_width=dw, decoded_height=dh,
               decoder="turbojpeg" if turbo else "pillow", reduction=reduction)
        _event("thumbnail.decoded", file=str(p), seconds=round(time.monotonic() - t1, 3),
               peak_rss_mb=peak_rss_mb())
    meta["path"], meta["reduction"] = path, reduction
    return meta, out, bx, icc if isinstance(icc, bytes) else None, soft


def _pillow_cost(im: Image.Image, fmt: str) -> int:
    """Bytes Pillow's decode of the opened image (at its current, maybe drafted, size) needs."""
    w, h = im.size
    per = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    return int(w * h * (per + PILLOW_EXTRA_BYTES.get(fmt, 0.0)))


def _png(p: Path, sizes: list[int], max_pixels: int, limit: int) -> Result:
    """PNG: the header and EXIF from the chunk list; rows through libspng in bands, or (small,
    or libspng missing) Pillow's whole-image decode."""
    from . import _png as png
    from . import _spng

    hd = png.read_header(p)
    with _pillow_open(p) as im:
        W, H = im.size
        _check_cap(p, W, H, max_pixels)
        meta = _base_meta("png", W, H, im.mode, hd.bit_depth)
        meta["pages"] = int(getattr(im, "n_frames", 1))
        dpi = im.info.get("dpi")
        if isinstance(dpi, tuple) and len(dpi) == 2:
            meta["dpi"] = [round(float(dpi[0]), 2), round(float(dpi[1]), 2)]
        icc = im.info.get("icc_profile") or None
        meta["icc"] = bool(icc)
        meta["orientation"] = png.exif_orientation(hd.exif or im.info.get("exif"))
        _event("thumbnail.open", file=str(p), format="png", width=W, height=H, mode=im.mode,
               interlaced=hd.interlaced, pages=meta["pages"])
        tw, th = target_size(W, H, sizes[-1])
        t1 = time.monotonic()
        banded = (W * H > PNG_WHOLE_MAX_PIXELS and _spng.available()
                  and png.source_height(hd) >= 1)
        if banded:
            sh = png.source_height(hd)
            k = shrink_factor(W, sh, tw, th)
            _event("thumbnail.plan", file=str(p), path="banded", decoder="libspng",
                   interlaced=hd.interlaced, shrink=k)
            try:
                out, bx = reduce_bands(png.bands(p, hd, band_rows(W, k, 4)), W, sh, (tw, th))
            except _spng.PngError as e:
                raise ImageError(f"{p}: corrupt or truncated image ({e})") from e
            path = "banded"
        else:
            hint = "" if _spng.available() else \
                "; with libspng (Debian package libspng0) it would be decoded in bands"
            _check_decode(p, "png", W, H, _pillow_cost(im, "png"), limit, hint)
            _event("thumbnail.plan", file=str(p), path="full", decoder="pillow")
            im.load()
            k = shrink_factor(W, H, tw, th)
            out, bx = reduce_bands(image_bands(im, band_rows(W, k, 4)), W, H, (tw, th))
            path = "full"
        _event("thumbnail.decoded", file=str(p), seconds=round(time.monotonic() - t1, 3),
               peak_rss_mb=peak_rss_mb())
    meta["path"], meta["reduction"] = path, round(W / bx[2], 3)
    return meta, out, bx, icc if isinstance(icc, bytes) else None, False


def _heif(p: Path, kind: str, sizes: list[int], max_pixels: int, limit: int,
          workers: int) -> tuple[dict[str, Any], Image.Image, tuple[float, float, float, float],
                                 bytes | None, bool, bool]:
    """HEIC (pillow-heif) or AVIF (Pillow): metadata from the boxes, then the smallest stored
    thumbnail that covers the largest size, or the whole image decoded to packed rows and
    reduced in bands. Returns the Result plus whether the pixels are already upright."""
    from . import _heif as hf
    from . import _isobmff as iso
    from ._rows import buffer_bands

    name = kind.upper()
    file_bytes = p.stat().st_size
    try:
        with open(p, "rb") as f:
            info = iso.read(f)
    except (iso.IsoError, struct.error, IndexError) as e:
        raise ImageError(f"{p}: corrupt or truncated {name} image ({_reason(e)})") from e
    # what a decoder will allocate at least: the file (read whole) and the coded size
    _check_cap(p, info.width, info.height, max_pixels)
    _check_decode(p, kind, info.width, info.height, file_bytes, limit)
    o = info.orientation
    t1 = time.monotonic()
    try:
        if kind == "heif":
            try:
                heic = hf.HeicFile(p, workers)
            except ImportError as e:
                raise ImageError(f"{p}: HEIC/HEIF images need the pillow-heif package, "
                                 "which is not installed") from e
            dw, dh = heic.size  # upright: libheif applies irot/imir
            W, H = (dh, dw) if o in (5, 6, 7, 8) else (dw, dh)
            _check_cap(p, W, H, max_pixels)
            meta = _base_meta(kind, W, H, heic.mode, heic.bit_depth)
            meta["pages"] = heic.images
            icc = heic.icc or info.icc
            tw, th = target_size(dw, dh, sizes[-1])
            use = next(((i, s) for i, s in heic.thumbnails()
                        if s[0] >= tw and s[1] >= th
                        and abs(s[0] * dh - s[1] * dw) <= max(s[0], s[1]) * max(dw, dh) / 100),
                       None)
            if use is not None:
                _check_decode(p, kind, W, H, hf.decode_cost(kind, use[1][0] * use[1][1], 8,
                                                            file_bytes), limit)
                path = "embedded-thumbnail"
            else:
                _check_decode(p, kind, W, H, hf.decode_cost(kind, dw * dh, heic.bit_depth,
                                                            file_bytes), limit)
                path = "full"
            _event("thumbnail.plan", file=str(p), path=path, decoder="libheif",
                   thumbnails=len(heic.thumbnails()))
            data, stride, mode, size = heic.decode(use[0] if use else None)
            oriented = True
        elif _avif_lib():
            from . import _avif

            try:
                avf = _avif.AvifFile(p, workers)
            except _avif.AvifError as e:
                raise hf.HeifDecodeError(str(e)) from e
            with closing(avf):
                W, H = avf.width, avf.height  # stored: irot/imir are applied afterwards
                _check_cap(p, W, H, max_pixels)
                meta = _base_meta(kind, W, H, avf.mode, avf.depth)
                meta["pages"] = avf.images if info.sequence else info.images
                icc = info.icc
                _check_decode(p, kind, W, H, avf.cost(file_bytes), limit)
                tw, th = target_size(W, H, sizes[-1])
                path = "full"
                _event("thumbnail.plan", file=str(p), path=path, decoder="libavif",
                       banded=True)
                k = shrink_factor(W, H, tw, th)
                try:
                    avf.decode()
                    rows = band_rows(W, k, 4, _avif.BAND_BYTES)
                    out, bx = reduce_bands(avf.bands(rows), W, H, (tw, th))
                except _avif.AvifError as e:
                    raise hf.HeifDecodeError(str(e)) from e
            oriented = False
            return _heif_done(p, kind, meta, o, icc, out, bx, path, (W, H), t1, oriented)
        else:
            from PIL import UnidentifiedImageError

            try:
                opened = _pillow_open(p).__enter__()
            except UnidentifiedImageError as e:
                # Pillow drops libavif's reason when its parser refuses the file
                raise hf.HeifDecodeError("libavif cannot parse it") from e
            except (OSError, ValueError, SyntaxError) as e:
                raise hf.HeifDecodeError(_reason(e)) from e
            with closing(opened) as im:
                if im.format != "AVIF":
                    raise ImageError(f"{p}: AVIF images need Pillow with AVIF support "
                                     "(Pillow >= 11.3)")
                W, H = im.size
                _check_cap(p, W, H, max_pixels)
                meta = _base_meta(kind, W, H, im.mode, info.bit_depth)
                meta["pages"] = int(getattr(im, "n_frames", 1)) if info.sequence \
                    else info.images
                icc = im.info.get("icc_profile") or info.icc
                hint = "" if _avif_lib() else \
                    "; with libavif (Debian package libavif15) it would need about " \
                    f"{-(-_avif_cost(W, H, info.bit_depth, file_bytes) >> 20)} MB"
                _check_decode(p, kind, W, H, hf.decode_cost(kind, W * H, info.bit_depth,
                                                            file_bytes), limit, hint)
                tw, th = target_size(W, H, sizes[-1])
                path = "full"
                _event("thumbnail.plan", file=str(p), path=path, decoder="libavif")
                data, stride, mode, size = hf.decode_avif(im)
                if stride == 0:  # Pillow's plugin changed: a loaded image
                    data = data.copy()
            oriented = False
    except hf.HeifDecodeError as e:
        raise ImageError(f"{p}: corrupt or truncated {name} image ({e})") from e
    sw, sh = size
    k = shrink_factor(sw, sh, tw, th)
    rows = band_rows(sw, k, 4)
    bands = image_bands(data, rows) if stride == 0 else \
        buffer_bands(data, size, stride, mode, rows)
    out, bx = reduce_bands(bands, sw, sh, (tw, th))
    del data
    return _heif_done(p, kind, meta, o, icc, out, bx, path, size, t1, oriented)


def _heif_done(p: Path, kind: str, meta: dict[str, Any], o: int, icc: Any, out: Image.Image,
               bx: tuple[float, float, float, float], path: str, size: tuple[int, int],
               t1: float, oriented: bool
               ) -> tuple[dict[str, Any], Image.Image, tuple[float, float, float, float],
                          bytes | None, bool, bool]:
    W, H = meta["width"], meta["height"]
    sw, sh = size
    meta["orientation"] = o
    meta["icc"] = bool(icc)
    _event("thumbnail.open", file=str(p), format=kind, width=W, height=H, mode=meta["mode"],
           bit_depth=meta["bit_depth"], orientation=o, pages=meta["pages"])
    _event("thumbnail.decoded", file=str(p), seconds=round(time.monotonic() - t1, 3),
           peak_rss_mb=peak_rss_mb())
    meta["path"] = path
    meta["reduction"] = round(max(W, H) / max(sw, sh) * sw / bx[2], 3)
    return meta, out, bx, icc if isinstance(icc, bytes) else None, False, oriented


def _avif_lib() -> bool:
    """Whether AVIF is decoded by libavif directly (banded RGB) rather than Pillow's plugin."""
    from . import _avif

    return _avif.available()


def _avif_cost(W: int, H: int, bit_depth: int, file_bytes: int) -> int:
    """What the libavif path would need for a 4:2:0 image without alpha (for the hint)."""
    from . import _avif

    return _avif.decode_cost(W, H, bit_depth, _avif.PIXEL_FORMAT_YUV420, False, file_bytes)


def _check_decode(p: Path, fmt: str, W: int, H: int, need: int, limit: int,
                  hint: str = "") -> None:
    """Refuse, before any pixel buffer exists, a decode that needs more than `limit` bytes."""
    if need > limit:
        raise ImageError(f"{p}: {fmt} image is {W}x{H}; decoding it needs about "
                         f"{-(-need >> 20)} MB, over the {limit >> 20} MB limit for "
                         f"whole-image decoding ({DECODE_FLAG}){hint}")


def _turbo_jpeg(p: Path, W: int, H: int, tw: int, th: int,
                limit: int) -> tuple[Image.Image, float, float, int] | None:
    """A JPEG file decoded by TurboJPEG at the smallest M/8 covering tw x th: (image, its size
    in exact scaled source pixels, M); None when TurboJPEG is not loadable or the file is
    too big to read whole (Pillow's decoder streams it)."""
    from . import _turbojpeg as tj  # lazy: loads ctypes and the library

    if not tj.available():
        return None
    with open(p, "rb") as f:
        if os.fstat(f.fileno()).st_size > TURBO_MAX_FILE_BYTES:
            return None
        data = f.read()
    with tj.Decompressor() as dec:
        try:
            jw, jh, _sub, cs = dec.header(data)
        except tj.JpegError as e:
            raise ImageError(f"{p}: corrupt JPEG ({e})") from e
        if (jw, jh) != (W, H) or cs not in (tj.CS_YCBCR, tj.CS_RGB, tj.CS_GRAY):
            return None  # let Pillow decide
        m = next((m for m in tj.scales()
                  if m == 8 or (tj.scaled(W, m) >= tw and tj.scaled(H, m) >= th)), 8)
        if not tj.picks(W, H, m):
            m = 8
        dw, dh = tj.scaled(W, m), tj.scaled(H, m)
        # the file, the decoded rows (3 bytes a pixel) and their Pillow image (4)
        _check_decode(p, "jpeg", W, H, len(data) + 7 * dw * dh, limit)
        gray = cs == tj.CS_GRAY
        mode = "L" if gray else "RGB"
        bpp = 1 if gray else 3
        buf = bytearray(dw * dh * bpp)
        import ctypes

        cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
        try:
            dec.decode(data, ctypes.addressof(cbuf), dw, dw * bpp, dh,
                       tj.PF_GRAY if gray else tj.PF_RGB)
        except tj.JpegError as e:
            raise ImageError(f"{p}: corrupt or truncated JPEG ({e})") from e
        finally:
            del cbuf
    del data
    img = Image.new(mode, (dw, dh), None)
    img.frombytes(buf, "raw", mode)
    return img, W * m / 8, H * m / 8, m


def _bits(im: Image.Image, p: Path) -> int:
    if im.mode == "1":
        return 1
    if im.mode.startswith("I;16"):
        return 16
    if im.mode in ("I", "F"):
        return 32
    if im.format == "PNG":
        with open(p, "rb") as f:
            head = f.read(25)
        if len(head) == 25:
            return head[24]
    return 8


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _create_temp(directory: Path, prefix: str, suffix: str) -> tuple[Path, BinaryIO]:
    """A new file (exclusive, mode 0600) for an atomic replace. Not tempfile: importing it pulls
    in shutil, random and the compression modules, a noticeable start-up cost. The file object
    keeps its path as `name`, so Pillow picks the plugin from the extension."""
    for _ in range(100):
        tmp = directory / f"{prefix}.{os.urandom(6).hex()}{suffix}"
        try:
            return tmp, open(tmp, "xb", opener=_private)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def _write(p: Path, out_dir: str | os.PathLike[str], acc: Image.Image,
           box: tuple[float, float, float, float], icc: bytes | None, meta: dict[str, Any],
           sizes: list[int], fmt: str, workers: int = 1,
           soft: bool = False, oriented: bool = False) -> list[dict[str, Any]]:
    """`oriented`: the accumulator is already upright (libheif applied irot/imir)."""
    t0 = time.monotonic()
    img, converted = to_output_mode(acc, icc)
    keep_icc = icc if icc and not converted and acc.mode != "CMYK" else None
    if fmt == "webp" and img.mode == "L":
        img = img.convert("RGB")
    W, H = meta["width"], meta["height"]
    transpose = TRANSPOSE.get(meta["orientation"])
    if oriented:
        if meta["orientation"] in (5, 6, 7, 8):
            W, H = H, W
        transpose = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = EXTENSIONS[fmt]

    def render(n: int, reduced: dict[int, Image.Image], threads: int) -> Image.Image:
        """Size n from the accumulator (not yet transposed)."""
        tw, th = target_size(W, H, n)
        if (tw, th) == img.size:
            return img
        # each size gets its own integer pre-shrink, so small sizes stay cheap
        k = shrink_factor(box[2], box[3], tw, th)
        if k not in reduced:
            reduced[k] = img.reduce(k) if k > 1 else img
        b = (0.0, 0.0, box[2] / k, box[3] / k)
        return resize(reduced[k], (tw, th), b, threads, soft and k == 1)

    def derive(n: int, done: dict[int, Image.Image]) -> Image.Image:
        """Size n from the smallest finished larger thumbnail at least twice its size (much
        less work than from the accumulator, and better: see SMALL_FILTER), else from the
        accumulator."""
        tw, th = target_size(W, H, n)
        for m in sorted(done):
            src = done[m]
            if (tw, th) == src.size:
                return src
            if src.width >= 2 * tw and src.height >= 2 * th:
                return shrink(src, (tw, th))
        return render(n, {}, 1)

    def save(n: int, t: Image.Image) -> dict[str, Any]:
        if transpose is not None:
            t = t.transpose(transpose)
        name = f"thumb-{n}.{ext}"
        # the temp name keeps the extension: Pillow then loads only that format's plugin
        tmp, f = _create_temp(out, f".thumb-{n}", f".{ext}")
        try:
            with f:
                # 4:4:4 chroma: subsampling visibly smears colour edges at thumbnail sizes
                opts: dict[str, Any] = ({"quality": 90, "subsampling": 0} if fmt == "jpeg"
                                        else {"quality": 90})
                if keep_icc:
                    opts["icc_profile"] = keep_icc
                t.save(f, **opts)
            os.replace(tmp, out / name)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        _event("thumbnail.written", file=str(p), name=name, width=t.width, height=t.height)
        return {"name": name, "size": n, "width": t.width, "height": t.height}

    # The largest size is rendered first (resampling on `workers` threads), then the smaller
    # ones are derived from it on a helper thread while this one encodes the largest:
    # resampling releases the GIL, the encoders do not, so they overlap. A size that must come
    # from the accumulator overlaps only when that is small: with a large one the second
    # thread's buffers and malloc arena add ~7 MB of peak RSS.
    largest_img = render(sizes[-1], {}, workers)
    done: dict[int, Image.Image] = {sizes[-1]: largest_img}
    small: dict[int, Image.Image] = {}
    errors: list[BaseException] = []

    def render_small() -> None:
        try:
            for n in reversed(sizes[:-1]):
                small[n] = done[n] = derive(n, dict(done))
        except BaseException as e:  # re-raised below, in this thread
            errors.append(e)

    helper: threading.Thread | None = None
    if workers > 1 and len(sizes) > 1 and (
            img.width * img.height <= OVERLAP_MAX_PIXELS
            or all(largest_img.width >= 2 * target_size(W, H, n)[0]
                   and largest_img.height >= 2 * target_size(W, H, n)[1]
                   for n in sizes[:-1])):
        helper = threading.Thread(target=render_small, name="thumb-sizes", daemon=True)
        helper.start()
    else:
        render_small()
    try:
        largest = save(sizes[-1], largest_img)
    finally:
        if helper is not None:
            helper.join()
    if errors:
        raise errors[0]
    thumbs = [save(n, small[n]) for n in sizes[:-1]]
    thumbs.append(largest)
    _event("thumbnail.encoded", file=str(p), seconds=round(time.monotonic() - t0, 3),
           icc_converted=converted)
    return thumbs
