"""Deflate TIFFs inflated by libdeflate (ctypes), and the libtiff fallback."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from thumbnailer import ImageError, _inflate, make_thumbnails
from thumbnailer._tiff import TiffDecoder
from thumbnailer._tiffio import Entry, Tag, TiffWriter, read_structure

from .gen import pattern, psnr, reference

W, H = 1000, 700
SIZES = (64, 100)  # pre-shrink factor 5
needs_libdeflate = pytest.mark.skipif(not _inflate.available(), reason="libdeflate not loadable")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records which decode method ran for each band."""
    calls: list[str] = []
    for name in ("_inflate_strips", "_inflate_tiles", "_inflate_tile_stack", "_decode_strips",
                 "_decode_tiles"):
        orig = getattr(TiffDecoder, name)

        def wrap(self: TiffDecoder, *a: int, _o=orig, _n=name) -> object:  # type: ignore[no-untyped-def]
            calls.append(_n)
            return _o(self, *a)
        monkeypatch.setattr(TiffDecoder, name, wrap)
    yield calls


def _codec(mode: str) -> list[Tag]:
    spp = len(mode) if mode != "P" else 1
    photometric = {"RGB": 2, "L": 1, "P": 3}[mode]
    return [(259, 3, (8,)), (262, 3, (photometric,)), (258, 3, (8,) * spp), (277, 3, (spp,))]


def write_deflate(path: Path, img: Image.Image, tile: int | None, rows: int = 32,
                  pad_last: bool = False, corrupt: int | None = None) -> None:
    """Deflate (zlib) segments, no predictor: tiles of `tile` px, or strips of `rows` rows."""
    w, h = img.size
    mode = img.mode
    extra: list[Tag] = []
    if mode == "P":
        pal = img.getpalette() or []
        pal += [0] * (768 - len(pal))
        extra = [(320, 3, tuple(v * 257 for v in (pal[0::3] + pal[1::3] + pal[2::3])))]
    with open(path, "wb") as f:
        wr = TiffWriter(f)
        offs, counts = [], []
        if tile:
            for y in range(0, h, tile):
                for x in range(0, w, tile):
                    data = zlib.compress(img.crop((x, y, x + tile, y + tile)).tobytes())
                    offs.append(wr.write_data(data))
                    counts.append(len(data))
            geo: list[Tag] = [(322, 3, (tile,)), (323, 3, (tile,)), (324, 4, tuple(offs)),
                              (325, 4, tuple(counts))]
        else:
            for y in range(0, h, rows):
                n = rows if pad_last else min(rows, h - y)
                data = zlib.compress(img.crop((0, y, w, y + n)).tobytes())
                offs.append(wr.write_data(data))
                counts.append(len(data))
            geo = [(278, 4, (rows,)), (273, 4, tuple(offs)), (279, 4, tuple(counts))]
        if corrupt is not None:
            f.flush()
            f.seek(offs[corrupt] + 2)
            f.write(b"\xff" * 8)
            f.seek(0, 2)
        wr.finish([wr.write_ifd([*_codec(mode), (256, 4, (w,)), (257, 4, (h,)), *geo,
                                 *extra])])


def _check(path: Path, out: Path, ref: Image.Image) -> dict[str, object]:
    meta = make_thumbnails(path, out, sizes=SIZES)
    assert meta["path"] == "banded"
    for t in meta["thumbnails"]:
        im = Image.open(out / t["name"])
        want = reference(ref, im.size)
        assert im.mode == want.mode
        assert psnr(im, want) >= 30, t
    return meta


CASES = {
    # tile sides multiple of the pre-shrink factor 5: one unpack, per-tile reduce
    "tile-rgb-stack": ("RGB", 80, 32, False),
    # 64-px tiles are not: tiles are pasted into a band first
    "tile-rgb-band": ("RGB", 64, 32, False),
    "tile-gray": ("L", 80, 32, False),
    "tile-palette": ("P", 80, 32, False),
    "tile-palette-band": ("P", 64, 32, False),
    "strip-rgb": ("RGB", None, 32, False),
    "strip-gray-odd-rows": ("L", None, 7, False),
    "strip-palette": ("P", None, 16, False),
    # last strip stored with its full RowsPerStrip: libdeflate refuses, libtiff decodes it
    "strip-padded-last": ("RGB", None, 32, True),
}


@needs_libdeflate
@pytest.mark.parametrize("name", list(CASES))
def test_libdeflate_paths(name: str, tmp_path: Path, spy: list[str]) -> None:
    mode, tile, rows, pad = CASES[name]
    src = pattern(W, H)
    img = src.convert("L") if mode == "L" else src.quantize(64) if mode == "P" else src
    p = tmp_path / "img.tif"
    write_deflate(p, img, tile, rows, pad)
    _check(p, tmp_path / "out", img.convert("RGB") if mode == "P" else img)
    kinds = set(spy)
    if tile:
        assert "_inflate_tiles" in kinds and "_decode_tiles" not in kinds
        assert ("_inflate_tile_stack" in kinds) == (name.endswith("stack")
                                                      or name in ("tile-gray", "tile-palette"))
    elif pad:
        assert "_inflate_strips" in kinds and "_decode_strips" in kinds
    else:
        assert kinds == {"_inflate_strips"}


@pytest.mark.parametrize("name", ["tile-rgb-stack", "strip-palette"])
def test_fallback_without_libdeflate(name: str, tmp_path: Path, spy: list[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_inflate, "ENABLED", False)
    mode, tile, rows, pad = CASES[name]
    src = pattern(W, H)
    img = src.quantize(64) if mode == "P" else src
    p = tmp_path / "img.tif"
    write_deflate(p, img, tile, rows, pad)
    _check(p, tmp_path / "out", img.convert("RGB"))
    assert set(spy) == {"_decode_tiles" if tile else "_decode_strips"}


@needs_libdeflate
def test_same_output_with_and_without_libdeflate(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "img.tif"
    write_deflate(p, pattern(W, H), 64)
    make_thumbnails(p, tmp_path / "a", sizes=SIZES)
    make_thumbnails(p, tmp_path / "one", sizes=SIZES, workers=1)
    monkeypatch.setattr(_inflate, "ENABLED", False)
    make_thumbnails(p, tmp_path / "b", sizes=SIZES)
    for n in SIZES:
        a = Image.open(tmp_path / "a" / f"thumb-{n}.jpg")
        b = Image.open(tmp_path / "b" / f"thumb-{n}.jpg")
        assert psnr(a, b) >= 45
        # one thread (no overlapped sizes, no parallel bands): the very same pixels
        one = Image.open(tmp_path / "one" / f"thumb-{n}.jpg")
        assert one.tobytes() == a.tobytes()


def test_env_var_disables_libdeflate() -> None:
    code = "from thumbnailer import _inflate; print(_inflate.available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"THUMBNAILER_NO_LIBDEFLATE": "1", "PATH": ""}, check=True)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("tile", [64, None])
def test_corrupt_deflate_segment(tmp_path: Path, tile: int | None) -> None:
    p = tmp_path / "bad.tif"
    write_deflate(p, pattern(W, H), tile, corrupt=3)
    with pytest.raises(ImageError, match=r"bad\.tif"):
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@needs_libdeflate
def test_inflater_checks_size() -> None:
    data = zlib.compress(b"abc" * 100)
    out = bytearray(400)
    with _inflate.Inflater() as inf:
        inf.into(data, out, 50, 300)
        assert bytes(out[50:350]) == b"abc" * 100
        with pytest.raises(_inflate.InflateError):
            inf.into(data, out, 0, 299)  # more data than room
        with pytest.raises(_inflate.InflateError):
            inf.into(data, out, 0, 301)  # less data than expected
        with pytest.raises(_inflate.InflateError):
            inf.into(b"\x78\x9c garbage", out, 0, 10)
        with pytest.raises(ValueError):
            inf.into(data, out, 200, 300)


@pytest.mark.parametrize(("tags", "expect"), [
    ({}, True),
    ({317: 2}, False),  # horizontal predictor: libtiff undoes it
    ({262: 6}, False),  # YCbCr: libtiff converts it
    ({259: 32946}, True),  # the old Deflate code
    ({259: 5}, False),  # LZW
])
def test_use_libdeflate(tmp_path: Path, tags: dict[int, int], expect: bool) -> None:
    p = tmp_path / "img.tif"
    write_deflate(p, pattern(64, 64), 32)
    with open(p, "rb") as f:
        st = read_structure(f)
    ifd = st.pages[0]
    for tag, value in tags.items():
        ifd.entries[tag] = Entry(tag, 3, 1, value.to_bytes(2, "little"), "<")
    with open(p, "rb") as f:
        dec = TiffDecoder(st, ifd, f.fileno())
        assert dec.use_libdeflate() == (expect and _inflate.available())



@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("compression", [1, 8])
def test_gray16_raw_rows_straight_to_8bit(tmp_path: Path, order: str, compression: int) -> None:
    """16-bit grey rows (uncompressed, or inflated) are unpacked to their high byte directly."""
    g = pattern(W, H).convert("L")
    raw = g.tobytes()
    data = bytearray(2 * len(raw))
    hi, lo = (1, 0) if order == "<" else (0, 1)
    data[hi::2] = raw
    data[lo::2] = bytes(len(raw))
    rows, rb = 50, 2 * W
    p = tmp_path / "g16.tif"
    with open(p, "wb") as f:
        wr = TiffWriter(f, order)
        offs, counts = [], []
        for y in range(0, H, rows):
            seg = bytes(data[y * rb:min(y + rows, H) * rb])
            if compression == 8:
                seg = zlib.compress(seg)
            offs.append(wr.write_data(seg))
            counts.append(len(seg))
        wr.finish([wr.write_ifd([(256, 4, (W,)), (257, 4, (H,)), (258, 3, (16,)),
                                 (259, 3, (compression,)), (262, 3, (1,)), (277, 3, (1,)),
                                 (278, 4, (rows,)), (273, 4, tuple(offs)),
                                 (279, 4, tuple(counts))])])
    meta = _check(p, tmp_path / "out", g)
    assert meta["mode"] == "I;16" and meta["bit_depth"] == 16
