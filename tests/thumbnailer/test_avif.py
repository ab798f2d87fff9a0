"""AVIF through libavif directly (YUV planes once, RGB in bands): a 12 MP phone photo within the
default decode limit and under 100 MB of peak RSS, orientation from irot/imir, the same pixels
as Pillow's plugin, and Pillow's plugin as the fallback when libavif cannot be loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from thumbnailer import ImageError, _avif, make_thumbnails
from thumbnailer._isobmff import read as read_boxes

from .gen import exif, pattern, photo, psnr
from .test_heif_png import red_corner, run_measured
from .test_memory import LIMIT_MB

needs_libavif = pytest.mark.skipif(not _avif.available(),
                                   reason="libavif 0.11 (Debian libavif15) is not installed")


def phone_photo(path: Path, orientation: int = 1) -> None:
    """A 4032x3024 (12 MP) 8-bit 4:2:0 AVIF, textured, red block in the stored top left."""
    im = pattern(4032, 3024)
    im.paste((255, 0, 0), (0, 0, 1008, 756))
    im.save(path, quality=80, speed=10, exif=exif(orientation) if orientation != 1 else None)


@pytest.fixture
def no_libavif(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_avif, "_load", lambda: None)


@needs_libavif
def test_12mp_avif_at_defaults_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "phone.avif"
    phone_photo(p, 6)
    with open(p, "rb") as f:
        assert read_boxes(f).transforms == [("irot", 3)]
    rc, out, err, peak = run_measured(p, "--out", tmp_path / "out")
    assert rc == 0, err
    meta = json.loads(out)
    assert peak < LIMIT_MB, peak
    assert meta["peak_rss_mb"] < LIMIT_MB
    assert {k: meta[k] for k in ("format", "width", "height", "mode", "bit_depth",
                                 "orientation", "path")} == {
        "format": "avif", "width": 4032, "height": 3024, "mode": "RGB", "bit_depth": 8,
        "orientation": 6, "path": "full"}
    assert [(t["width"], t["height"]) for t in meta["thumbnails"]] == [(192, 256), (768, 1024)]
    assert Image.open(tmp_path / "out" / "thumb-1024.jpg").size == (768, 1024)
    assert red_corner(tmp_path / "out" / "thumb-1024.jpg") == "tr"
    assert red_corner(tmp_path / "out" / "thumb-256.jpg") == "tr"


@needs_libavif
def test_12mp_avif_estimate_fits_default_limit(tmp_path: Path) -> None:
    p = tmp_path / "phone.avif"
    phone_photo(p)
    with _avif.AvifFile(p, 2) as f:
        assert (f.width, f.height, f.depth, f.yuv_format, f.alpha) == (
            4032, 3024, 8, _avif.PIXEL_FORMAT_YUV420, False)
        cost = f.cost(p.stat().st_size)
    assert 30 << 20 < cost < 64 << 20


def test_12mp_avif_without_libavif_refused_as_before(tmp_path: Path, no_libavif: None) -> None:
    p = tmp_path / "phone.avif"
    phone_photo(p)
    with pytest.raises(ImageError) as e:
        make_thumbnails(p, tmp_path / "out")
    assert str(e.value).startswith(
        f"{p}: avif image is 4032x3024; decoding it needs about 96 MB, over the 64 MB limit "
        "for whole-image decoding (--max-decode-mb); with libavif (Debian package libavif15) "
        "it would need about ")
    meta = make_thumbnails(p, tmp_path / "out", max_decode_mb=128)
    assert (meta["width"], meta["height"], meta["path"]) == (4032, 3024, "full")
    assert red_corner(tmp_path / "out" / "thumb-1024.jpg") == "tl"


@needs_libavif
@pytest.mark.parametrize(("orientation", "corner"), [(3, "br"), (8, "bl"), (6, "tr")])
def test_avif_irot_orientations(tmp_path: Path, orientation: int, corner: str) -> None:
    p = tmp_path / "o.avif"
    photo().save(p, exif=exif(orientation), quality=90)
    with open(p, "rb") as f:
        assert read_boxes(f).transforms, "Pillow wrote no irot/imir box"
    meta = make_thumbnails(p, tmp_path / "out", sizes=(100,))
    assert meta["orientation"] == orientation
    assert red_corner(tmp_path / "out" / "thumb-100.jpg") == corner


@needs_libavif
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_libavif_bands_match_pillow(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    src = pattern(1203, 901)  # odd sizes: the last band and the chroma edge
    if mode == "RGBA":
        src.putalpha(Image.linear_gradient("L").resize(src.size))
    p = tmp_path / "m.avif"
    src.save(p, quality=90)
    with _avif.AvifFile(p, 1) as f:
        assert f.mode == mode
        whole = Image.new("RGB", src.size)  # bands are normalised: alpha over white
        for y, band in f.bands(50):  # 4:2:0 chroma upsampled across the band edges
            whole.paste(band, (0, y))
    ref = Image.open(p)
    ref = Image.alpha_composite(Image.new("RGBA", src.size, "white"), ref.convert("RGBA")) \
        .convert("RGB") if mode == "RGBA" else ref.convert("RGB")
    if mode == "RGB":
        extrema = ImageChops.difference(whole.convert("RGB"), ref).getextrema()
        assert max(hi for _lo, hi in extrema) <= 2, extrema
    else:
        assert psnr(whole.convert("RGB"), ref) > 45
    a = make_thumbnails(p, tmp_path / "a", sizes=(300,))
    monkeypatch.setattr(_avif, "_load", lambda: None)
    b = make_thumbnails(p, tmp_path / "b", sizes=(300,))
    assert {k: a[k] for k in ("width", "height", "mode", "bit_depth", "pages")} == \
        {k: b[k] for k in ("width", "height", "mode", "bit_depth", "pages")}
    assert psnr(Image.open(tmp_path / "a" / "thumb-300.jpg").convert("RGB"),
                Image.open(tmp_path / "b" / "thumb-300.jpg").convert("RGB")) > 40
