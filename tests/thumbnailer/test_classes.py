"""Every image class of issue 4: output size, mode and PSNR against a full-decode reference."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from thumbnailer import make_thumbnails
from thumbnailer._tiffio import Tag, TiffWriter

from .gen import (
    cmyk_icc,
    dup16,
    pattern,
    psnr,
    reference,
    segment_encoder,
    write_strips_raw,
    write_tiled,
    write_tiled_ifd,
)

W, H = 1200, 800
SIZES = (64, 160)
# builder(tmp_path) -> (file, reference source image in L or RGB, expected metadata subset)
Case = tuple[Path, Image.Image, dict[str, object]]


def _rgb() -> Image.Image:
    return pattern(W, H)


def _gray() -> Image.Image:
    return pattern(W, H).convert("L")


def striped(compression: str, predictor: bool = False) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        src = _rgb()
        p = tmp / "img.tif"
        src.save(p, compression=compression, tiffinfo={317: 2} if predictor else {})
        if compression == "jpeg":
            src = Image.open(p).convert("RGB")
        return p, src, {"mode": "RGB", "bit_depth": 8}
    return build


def tiled(compression: str, predictor: bool = False, bigtiff: bool = False,
          mode: str = "RGB") -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        src = _rgb() if mode == "RGB" else _gray()
        p = tmp / "img.tif"
        write_tiled(p, src, 64, compression, predictor, bigtiff)
        if compression == "jpeg-ycbcr":
            pass  # reference is the lossless source; JPEG q92 loss stays far above 30 dB
        return p, src, {"mode": mode, "bit_depth": 8}
    return build


def bilevel(compression: str, tile: bool = False) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        one = _gray().convert("1")
        p = tmp / "img.tif"
        if tile:
            write_tiled(p, one, 64, compression)
        else:
            one.save(p, compression=compression)
        return p, one.convert("L"), {"mode": "1", "bit_depth": 1}
    return build


def gray16(compression: str) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        g = _gray()
        im16 = Image.frombytes("I;16", g.size, dup16(g.tobytes()))
        p = tmp / "img.tif"
        im16.save(p, compression=compression)
        return p, g, {"mode": "I;16", "bit_depth": 16}
    return build


def rgb16(tmp: Path) -> Case:
    src = _rgb()
    p = tmp / "img.tif"
    write_strips_raw(p, src.size, 3, 16, 2, rows=[dup16(src.tobytes())], rps=7)
    return p, src, {"mode": "RGB", "bit_depth": 16}


def planar(tmp: Path) -> Case:
    src = _rgb()
    p = tmp / "img.tif"
    write_strips_raw(p, src.size, 3, 8, 2, planes=[c.tobytes() for c in src.split()], rps=16)
    return p, src, {"mode": "RGB"}


def alpha(mode: str) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        base = _rgb() if mode == "RGBA" else _gray()
        a = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((W, H))
        im = base.copy()
        im.putalpha(a)
        p = tmp / "img.tif"
        im.save(p, compression="tiff_adobe_deflate")
        white = Image.new("RGBA", (W, H), (255, 255, 255, 255))
        ref = Image.alpha_composite(white, im.convert("RGBA")).convert(base.mode)
        return p, ref, {"mode": mode}
    return build


def palette(compression: str = "tiff_lzw") -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        im = _rgb().quantize(64)
        p = tmp / "img.tif"
        im.save(p, compression=compression)
        return p, im.convert("RGB"), {"mode": "P"}
    return build


def cmyk(with_icc: bool) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        im = _rgb().convert("CMYK")
        p = tmp / "img.tif"
        if with_icc:
            icc = cmyk_icc()
            im.save(p, compression="tiff_lzw", icc_profile=icc)
            prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            ref = ImageCms.profileToProfile(im, prof, ImageCms.createProfile("sRGB"),
                                            outputMode="RGB")
            assert ref is not None
        else:
            im.save(p, compression="tiff_lzw")
            ref = im.convert("RGB")
        return p, ref, {"mode": "CMYK", "icc": with_icc}
    return build


def orientation(tmp: Path) -> Case:
    src = _rgb()
    p = tmp / "img.tif"
    src.save(p, compression="tiff_lzw", tiffinfo={274: 6})
    return p, src.transpose(Image.Transpose.ROTATE_270), {"orientation": 6}


def multipage(tmp: Path) -> Case:
    src = _rgb()
    p = tmp / "img.tif"
    src.save(p, compression="tiff_lzw", save_all=True,
             append_images=[src.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    return p, src, {"pages": 2, "levels": 1}


def _levels(src: Image.Image) -> list[Image.Image]:
    return [src.resize((W // f, H // f), Image.Resampling.LANCZOS) for f in (2, 4)]


def subifd_pyramid(tmp: Path) -> Case:
    src = _rgb()
    enc = segment_encoder("tiff_adobe_deflate")
    p = tmp / "img.tif"
    with open(p, "wb") as f:
        wr = TiffWriter(f, "<")
        subs = [write_tiled_ifd(wr, lv, 64, enc, [(254, 4, (1,))]) for lv in _levels(src)]
        label = write_tiled_ifd(wr, src.resize((200, 200)), 64, enc, [(254, 4, (1,))])
        ifd0 = write_tiled_ifd(wr, src, 64, enc, [(330, 4, (*subs, label))])
        wr.finish([ifd0])
    return p, src, {"path": "pyramid", "levels": 3, "pages": 1}


def page_pyramid(tmp: Path) -> Case:
    src = _rgb()
    enc = segment_encoder("tiff_lzw", predictor=True)
    p = tmp / "img.tif"
    with open(p, "wb") as f:
        wr = TiffWriter(f, "<")
        chain = [write_tiled_ifd(wr, src, 64, enc, [])]
        extra: list[Tag] = [(254, 4, (1,))]
        chain += [write_tiled_ifd(wr, lv, 64, enc, extra) for lv in _levels(src)]
        wr.finish(chain)
    return p, src, {"path": "pyramid", "levels": 3, "pages": 1}


def pillow_format(fmt: str, mode: str = "RGB", **save: object) -> Callable[[Path], Case]:
    def build(tmp: Path) -> Case:
        src = _rgb()
        if mode == "L":
            src = src.convert("L")
        p = tmp / f"img.{fmt}"
        if mode == "P":
            pal = src.quantize(128)
            pal.save(p, **save)
            ref = pal.convert("RGB")
        elif mode == "RGBA":
            im = src.copy()
            im.putalpha(Image.radial_gradient("L").resize((W, H)))
            im.save(p, **save)
            white = Image.new("RGBA", (W, H), (255, 255, 255, 255))
            ref = Image.alpha_composite(white, Image.open(p).convert("RGBA")).convert("RGB")
        elif mode == "I;16":
            g = src.convert("L")
            Image.frombytes("I;16", g.size, dup16(g.tobytes())).save(p, **save)
            ref = g
        else:
            src.save(p, **save)
            ref = Image.open(p).convert(src.mode)
        return p, ref, {}
    return build


CASES: dict[str, Callable[[Path], Case]] = {
    "strip-none": striped("raw"),
    "strip-lzw-predictor": striped("tiff_lzw", predictor=True),
    "strip-lzw": striped("tiff_lzw"),
    "strip-deflate": striped("tiff_adobe_deflate"),
    "strip-deflate-predictor": striped("tiff_adobe_deflate", predictor=True),
    "strip-packbits": striped("packbits"),
    "strip-jpeg": striped("jpeg"),
    "strip-g3": bilevel("group3"),
    "strip-g4": bilevel("group4"),
    "tile-none": tiled("raw"),
    "tile-lzw-predictor": tiled("tiff_lzw", predictor=True),
    "tile-deflate": tiled("tiff_adobe_deflate"),
    "tile-packbits": tiled("packbits"),
    "tile-jpeg-ycbcr": tiled("jpeg-ycbcr"),
    "tile-jpeg-gray": tiled("jpeg-ycbcr", mode="L"),
    "tile-g4": bilevel("group4", tile=True),
    "tile-gray8": tiled("tiff_adobe_deflate", mode="L"),
    "bigtiff-tile-deflate": tiled("tiff_adobe_deflate", bigtiff=True),
    "bigtiff-tile-none": tiled("raw", bigtiff=True),
    "gray16-none": gray16("raw"),
    "gray16-lzw": gray16("tiff_lzw"),
    "rgb16": rgb16,
    "planar-separate": planar,
    "rgba": alpha("RGBA"),
    "la": alpha("LA"),
    "palette": palette(),
    "palette-none": palette("raw"),
    "cmyk": cmyk(False),
    "cmyk-icc": cmyk(True),
    "orientation": orientation,
    "multipage": multipage,
    "subifd-pyramid": subifd_pyramid,
    "page-pyramid": page_pyramid,
    "jpeg": pillow_format("jpg", quality=95),
    "jpeg-gray": pillow_format("jpg", "L", quality=95),
    "png": pillow_format("png"),
    "png-rgba": pillow_format("png", "RGBA"),
    "png-16bit-gray": pillow_format("png", "I;16"),
    "webp": pillow_format("webp", quality=95),
    "gif": pillow_format("gif", "P"),
    "bmp": pillow_format("bmp"),
}


PATHS = {"tile-jpeg-ycbcr": "jpeg-draft", "tile-jpeg-gray": "jpeg-draft", "jpeg": "jpeg-draft",
         "jpeg-gray": "jpeg-draft", "strip-none": "banded", "tile-lzw-predictor": "banded",
         "strip-g4": "banded", "png": "full", "gif": "full", "bmp": "full", "webp": "full"}


@pytest.mark.parametrize("name", list(CASES))
def test_class(name: str, tmp_path: Path) -> None:
    path, ref_src, expect = CASES[name](tmp_path)
    out = tmp_path / "out"
    meta = make_thumbnails(path, out, sizes=SIZES)
    if name in PATHS:
        assert meta["path"] == PATHS[name]
    for key, value in expect.items():
        assert meta[key] == value, (key, meta[key])
    assert meta["width"] == W and meta["height"] == H
    # the integer pre-shrink never goes below the largest thumbnail
    assert 1 <= meta["reduction"] <= W / SIZES[-1]
    rot = meta["orientation"] in (5, 6, 7, 8)
    assert [t["name"] for t in meta["thumbnails"]] == [f"thumb-{n}.jpg" for n in SIZES]
    for t in meta["thumbnails"]:
        n = t["size"]
        tw, th = n, round(H * n / W)
        if rot:
            tw, th = th, tw
        assert (t["width"], t["height"]) == (tw, th)
        im = Image.open(out / t["name"])
        assert im.format == "JPEG" and im.size == (tw, th)
        expect_mode = "L" if ref_src.mode == "L" else "RGB"
        assert im.mode == expect_mode
        quality = psnr(im, reference(ref_src, (tw, th)))
        assert quality >= 30, f"{name} {n}px: PSNR {quality:.1f} dB"
    assert sorted(f.name for f in out.iterdir()) == sorted(t["name"] for t in meta["thumbnails"])


# --- several sizes: smaller ones derived from the largest thumbnail ---------------------------

def _quality(out: Path, meta: dict[str, object], src: Image.Image) -> dict[int, float]:
    res: dict[int, float] = {}
    for t in meta["thumbnails"]:  # type: ignore[attr-defined]
        im = Image.open(out / t["name"])
        res[t["size"]] = psnr(im.convert(src.mode), reference(src, im.size))
    return res


@pytest.mark.parametrize("sizes", [(40, 64, 160), (100, 160), (64, 160, 600)])
@pytest.mark.parametrize("name", ["strip-lzw", "orientation", "page-pyramid", "jpeg"])
def test_sizes_derived_from_larger_thumbnail(name: str, sizes: tuple[int, ...],
                                             tmp_path: Path) -> None:
    """Each size made alone (from the accumulator) vs all at once (a smaller size from the
    smallest finished one at least twice its size, else from the accumulator): same sizes, and
    no worse than 0.5 dB below the size made alone."""
    path, src, _ = CASES[name](tmp_path)
    together = _quality(tmp_path / "all", make_thumbnails(path, tmp_path / "all", sizes=sizes),
                        src)
    for n in sizes:
        alone = _quality(tmp_path / f"one{n}",
                         make_thumbnails(path, tmp_path / f"one{n}", sizes=(n,)), src)
        assert together[n] >= 30, (n, together[n])
        assert together[n] >= alone[n] - 0.5, (n, together[n], alone[n])
        a = Image.open(tmp_path / "all" / f"thumb-{n}.jpg")
        b = Image.open(tmp_path / f"one{n}" / f"thumb-{n}.jpg")
        assert a.size == b.size


def test_pyramid_level_under_2x_quality(tmp_path: Path) -> None:
    """A level less than 2x the target is resized with NEAR_FILTER; its quality stays close
    to a Lanczos resize of the full image (the pattern's edges make this a hard case)."""
    path, src, _ = page_pyramid(tmp_path)
    meta = make_thumbnails(path, tmp_path / "out", sizes=(200,))  # level 300 px: 1.5x
    assert meta["path"] == "pyramid" and meta["reduction"] == 4.0
    assert _quality(tmp_path / "out", meta, src)[200] >= 37  # 39.0 dB; bicubic: 39.8
