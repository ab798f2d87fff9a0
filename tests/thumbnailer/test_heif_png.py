"""HEIC/AVIF (orientation, metadata, 10-bit, corrupt files) and huge PNG/WebP within the
memory bound, all from files generated here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image

from thumbnailer import make_thumbnails, sniff
from thumbnailer._isobmff import read as read_boxes

from .gen import BLUE, RED, corner_row, dup16, exif, pattern, photo, write_png
from .test_memory import LIMIT_MB, WRAPPER


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thumbnailer", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def run_measured(*args: str | Path) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of `python -m thumbnailer args`."""
    r = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    return res["rc"], res["stdout"], res["stderr"], res["children_maxrss_kb"] / 1024




def corners(path: Path) -> dict[str, tuple[int, ...]]:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    return {"tl": im.getpixel((2, 2)), "tr": im.getpixel((w - 3, 2)),  # type: ignore[dict-item]
            "bl": im.getpixel((2, h - 3)), "br": im.getpixel((w - 3, h - 3))}


def red_corner(path: Path) -> str:
    found = [k for k, (r, g, b) in corners(path).items() if r > 200 and g < 60 and b < 60]
    assert len(found) == 1, corners(path)
    return found[0]


def write_heic(path: Path, im: Image.Image, orientation: int = 1, **kw: object) -> None:
    pillow_heif.from_pillow(im).save(path, exif=exif(orientation), quality=90, **kw)


def clear_exif_orientation(path: Path) -> None:
    """Set the EXIF Orientation tag inside the file to 1, keeping irot/imir as they are."""
    data = bytearray(path.read_bytes())
    for old in (b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00",  # little-endian, value 6
                b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"):
        i = data.find(old)
        if i >= 0:
            new = old[:-2] + (b"\x01\x00" if old[0] == 0x12 else b"\x00\x01")
            data[i:i + len(old)] = new
            path.write_bytes(bytes(data))
            return
    raise AssertionError("no EXIF orientation 6 in the file")


# --- sniffing --------------------------------------------------------------------------------

@pytest.mark.parametrize(("major", "compat", "kind"), [
    (b"heic", [b"mif1", b"heic"], "heif"), (b"heix", [b"mif1"], "heif"),
    (b"mif1", [b"heic"], "heif"), (b"msf1", [b"hevc"], "heif"), (b"heim", [], "heif"),
    (b"avif", [b"mif1", b"miaf"], "avif"), (b"mif1", [b"avif"], "avif"),
    (b"avis", [b"msf1"], "avif"), (b"isom", [b"mp41"], None), (b"qt  ", [], None),
])
def test_sniff_ftyp_brands(tmp_path: Path, major: bytes, compat: list[bytes],
                           kind: str | None) -> None:
    body = major + b"\0\0\0\0" + b"".join(compat)
    p = tmp_path / "f.bin"
    p.write_bytes((8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\0" * 40)
    assert sniff(p) == kind


def test_sniff_written_files(tmp_path: Path) -> None:
    write_heic(tmp_path / "a.heic", photo())
    photo().save(tmp_path / "a.avif")
    assert sniff(tmp_path / "a.heic") == "heif"
    assert sniff(tmp_path / "a.avif") == "avif"


# --- orientation and metadata ----------------------------------------------------------------

@pytest.mark.parametrize("ext", ["heic", "avif"])
def test_exif_6_with_irot_rotated_once(tmp_path: Path, ext: str) -> None:
    # Both encoders store EXIF 6 as an irot box and keep the EXIF tag: the thumbnail must be
    # turned a quarter clockwise once, not twice.
    p = tmp_path / f"photo.{ext}"
    if ext == "heic":
        write_heic(p, photo(), 6)
    else:
        photo().save(p, exif=exif(6), quality=90)
    with open(p, "rb") as f:
        assert read_boxes(f).transforms == [("irot", 3)]
    r = run_cli(p, "--out", tmp_path / "out", "--size", "64", "--size", "300")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert {k: meta[k] for k in ("format", "width", "height", "mode", "bit_depth", "pages",
                                 "orientation", "icc")} == {
        "format": "heif" if ext == "heic" else "avif", "width": 600, "height": 400,
        "mode": "RGB", "bit_depth": 8, "pages": 1, "orientation": 6, "icc": False}
    assert [(t["width"], t["height"]) for t in meta["thumbnails"]] == [(43, 64), (200, 300)]
    assert Image.open(tmp_path / "out" / "thumb-300.jpg").size == (200, 300)
    assert red_corner(tmp_path / "out" / "thumb-300.jpg") == "tr"
    assert red_corner(tmp_path / "out" / "thumb-64.jpg") == "tr"


def test_heic_irot_without_exif_orientation(tmp_path: Path) -> None:
    p = tmp_path / "irot.heic"
    write_heic(p, photo(), 6)
    clear_exif_orientation(p)
    assert pillow_heif.open_heif(p).info["exif"] is not None
    meta = make_thumbnails(p, tmp_path / "out", sizes=(120,))
    assert meta["orientation"] == 6
    assert red_corner(tmp_path / "out" / "thumb-120.jpg") == "tr"


@pytest.mark.parametrize(("orientation", "corner"), [(1, "tl"), (3, "br"), (8, "bl"),
                                                     (2, "tr"), (5, "tl")])
def test_heic_orientations(tmp_path: Path, orientation: int, corner: str) -> None:
    p = tmp_path / "o.heic"
    write_heic(p, photo(), orientation)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(100,))
    assert meta["orientation"] == orientation
    assert red_corner(tmp_path / "out" / "thumb-100.jpg") == corner


def test_heic_icc_pages_and_alpha(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = photo().convert("RGBA")
    rgba.putalpha(255)
    heif = pillow_heif.from_pillow(rgba)
    heif.add_from_pillow(photo(300, 200))
    p = tmp_path / "two.heic"
    heif.save(p, icc_profile=icc, quality=90)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(90,))
    assert (meta["pages"], meta["mode"], meta["icc"]) == (2, "RGBA", True)
    assert red_corner(tmp_path / "out" / "thumb-90.jpg") == "tl"


def test_heic_stored_thumbnail_used_when_big_enough(tmp_path: Path) -> None:
    p = tmp_path / "thumbs.heic"
    write_heic(p, photo(1600, 1200), 6, thumbnails=[160, 400])
    meta = make_thumbnails(p, tmp_path / "out", sizes=(64, 300))
    assert meta["path"] == "embedded-thumbnail"
    assert [(t["width"], t["height"]) for t in meta["thumbnails"]] == [(48, 64), (225, 300)]
    assert red_corner(tmp_path / "out" / "thumb-300.jpg") == "tr"
    meta = make_thumbnails(p, tmp_path / "out2", sizes=(600,))
    assert meta["path"] == "full"
    assert red_corner(tmp_path / "out2" / "thumb-600.jpg") == "tr"


def test_heic_10_bit_scaled_to_8(tmp_path: Path) -> None:
    w, h = 320, 240
    im = photo(w, h)
    p = tmp_path / "ten.heic"
    # 16-bit samples v * 257: stored as 10 bits, decoded back to about v
    pillow_heif.from_bytes("RGB;16", (w, h), dup16(im.tobytes())).save(p, quality=95)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(64,))
    assert meta["bit_depth"] == 10
    c = corners(tmp_path / "out" / "thumb-64.jpg")
    assert all(abs(a - b) <= 12 for a, b in zip(c["tl"], RED, strict=True)), c
    assert all(abs(a - b) <= 12 for a, b in zip(c["br"], BLUE, strict=True)), c


def test_heif_whole_decode_refused_over_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.heic"
    write_heic(p, photo(1600, 1200))
    r = run_cli(p, "--out", tmp_path / "out", "--max-decode-mb", "4")
    assert r.returncode == 2
    assert r.stderr == (f"thumbnailer: {p}: heif image is 1600x1200; decoding it needs about "
                        "9 MB, over the 4 MB limit for whole-image decoding "
                        "(--max-decode-mb)\n")


@pytest.mark.parametrize("ext", ["heic", "avif"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_heif_avif(tmp_path: Path, ext: str, damage: str) -> None:
    p = tmp_path / f"bad.{ext}"
    src = pattern(400, 300)
    if ext == "heic":
        pillow_heif.from_pillow(src).save(p, quality=80)
    else:
        src.save(p, quality=80)
    data = bytearray(p.read_bytes())
    mdat = data.index(b"mdat") + 4
    if damage == "truncated":
        data = data[:mdat + (len(data) - mdat) // 3]
    else:
        data[mdat + 8:] = bytes((i * 7 + 3) % 256 for i in range(len(data) - mdat - 8))
    p.write_bytes(bytes(data))
    r = run_cli(p, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stdout
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    name = "HEIF" if ext == "heic" else "AVIF"
    assert len(lines) == 1 and lines[0].startswith(
        f"thumbnailer: {p}: corrupt or truncated {name} image ("), r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_no_meta_box(tmp_path: Path) -> None:
    p = tmp_path / "x.heic"
    p.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0\0\0\x10mdat" + b"\0" * 8)
    r = run_cli(p, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr == f"thumbnailer: {p}: corrupt or truncated HEIF image (no meta box)\n"


# --- PNG -------------------------------------------------------------------------------------

@pytest.mark.parametrize("big", [False, True])
def test_png_exif_after_idat(tmp_path: Path, big: bool) -> None:
    w, h = (3000, 2000) if big else (300, 200)  # banded by libspng / whole by Pillow
    p = tmp_path / "late.png"
    write_png(p, w, h, lambda y, x0, dx: corner_row(w, y, x0, dx, w // 4), exif=exif(6),
              exif_after_idat=True)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(150,))
    assert meta["path"] == ("banded" if big else "full")
    assert meta["orientation"] == 6
    assert Image.open(tmp_path / "out" / "thumb-150.jpg").size == (100, 150)
    assert red_corner(tmp_path / "out" / "thumb-150.jpg") == "tr"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "1"])
def test_png_modes_banded_match_pillow(tmp_path: Path, mode: str) -> None:
    src = pattern(2400, 1800)
    im = src.convert("L").convert("I;16") if mode == "I;16" else \
        src.quantize(32) if mode == "P" else src.convert(mode)
    p = tmp_path / "m.png"
    im.save(p)
    banded = make_thumbnails(p, tmp_path / "a", sizes=(200,))
    assert banded["path"] == "banded"
    assert banded["mode"] == mode
    from thumbnailer import _spng

    _spng.ENABLED = False
    try:
        whole = make_thumbnails(p, tmp_path / "b", sizes=(200,), max_decode_mb=1024)
    finally:
        _spng.ENABLED = True
    assert whole["path"] == "full"
    from .gen import psnr

    a = Image.open(tmp_path / "a" / "thumb-200.jpg").convert("RGB")
    b = Image.open(tmp_path / "b" / "thumb-200.jpg").convert("RGB")
    assert psnr(a, b) > 35


def test_png_without_libspng_refused_with_hint(tmp_path: Path) -> None:
    p = tmp_path / "m.png"
    pattern(6000, 4000).save(p, compress_level=1)
    r = subprocess.run([sys.executable, "-m", "thumbnailer", str(p), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "THUMBNAILER_NO_SPNG": "1"})
    assert r.returncode == 2
    assert r.stderr == (f"thumbnailer: {p}: png image is 6000x4000; decoding it needs about "
                        "92 MB, over the 64 MB limit for whole-image decoding (--max-decode-mb); "
                        "with libspng (Debian package libspng0) it would be decoded in bands\n")


def test_corrupt_png_rows(tmp_path: Path) -> None:
    p = tmp_path / "bad.png"
    write_png(p, 3000, 2000, lambda y, x0, dx: corner_row(3000, y, x0, dx, 100))
    data = bytearray(p.read_bytes())
    data[-2000:-1000] = bytes(1000)
    p.write_bytes(bytes(data))
    r = run_cli(p, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.startswith(f"thumbnailer: {p}: corrupt or truncated image (")
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("interlace", [False, True])
def test_huge_png_bounded_memory(tmp_path: Path, interlace: bool) -> None:
    w, h = 16000, 12000
    p = tmp_path / "huge.png"
    write_png(p, w, h, lambda y, x0, dx: corner_row(w, y, x0, dx, 2000), interlace=interlace,
              exif=exif(6), exif_after_idat=True)
    rc, out, err, peak = run_measured(p, "--out", tmp_path / "out")
    assert rc == 0, err
    meta = json.loads(out)
    assert peak < LIMIT_MB, peak
    assert meta["peak_rss_mb"] < LIMIT_MB
    assert (meta["width"], meta["height"], meta["path"], meta["orientation"]) == (
        16000, 12000, "banded", 6)
    assert [(t["width"], t["height"]) for t in meta["thumbnails"]] == [(192, 256), (768, 1024)]
    assert red_corner(tmp_path / "out" / "thumb-1024.jpg") == "tr"
    assert red_corner(tmp_path / "out" / "thumb-256.jpg") == "tr"


def test_huge_webp_refused_up_front(tmp_path: Path) -> None:
    p = tmp_path / "huge.webp"
    Image.new("RGB", (5000, 4000), (10, 200, 30)).save(p, lossless=True, method=0)
    rc, stdout, err, peak = run_measured(p, "--out", tmp_path / "out")
    assert (rc, stdout) == (2, "")
    assert err == (f"thumbnailer: {p}: webp image is 5000x4000; decoding it needs about "
                   "229 MB, over the 64 MB limit for whole-image decoding (--max-decode-mb)\n")
    assert peak < 40, peak


def test_huge_gif_refused_and_small_gif_ok(tmp_path: Path) -> None:
    p = tmp_path / "huge.gif"
    Image.new("P", (9000, 8000), 3).save(p)
    r = run_cli(p, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert "over the 64 MB limit for whole-image decoding (--max-decode-mb)" in r.stderr
    meta = make_thumbnails(p, tmp_path / "out", sizes=(100,), max_decode_mb=100)
    assert meta["thumbnails"][0]["width"] == 100
