"""JPEG decoded by TurboJPEG (ctypes) at M/8 scales, and the Pillow fallback without it."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from thumbnailer import ImageError, _core, _turbojpeg, make_thumbnails
from thumbnailer._tiff import TiffDecoder
from thumbnailer._tiffio import Tag, TiffWriter

from .gen import pattern, psnr, reference

W, H = 1200, 800
SIZES = (64, 160)
needs_turbojpeg = pytest.mark.skipif(not _turbojpeg.available(),
                                     reason="libturbojpeg not loadable")


@pytest.fixture(params=[True, False], ids=["turbojpeg", "pillow"])
def turbo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a test with TurboJPEG (skipped when not loadable) and with the Pillow fallback."""
    if request.param and not _turbojpeg.available():
        pytest.skip("libturbojpeg not loadable")
    monkeypatch.setattr(_turbojpeg, "ENABLED", request.param)
    return bool(request.param)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records which JPEG decoder ran: TIFF segments and plain JPEG files."""
    calls: list[str] = []
    for name in ("_decode_turbo", "_decode_jpegs", "_decode_tiles", "_decode_strips"):
        orig = getattr(TiffDecoder, name)

        def wrap(self: TiffDecoder, *a: object, _o=orig, _n=name) -> object:  # type: ignore[no-untyped-def]
            calls.append(_n)
            return _o(self, *a)
        monkeypatch.setattr(TiffDecoder, name, wrap)
    orig_file = _core._turbo_jpeg

    def wrap_file(*a: object) -> object:
        res = orig_file(*a)  # type: ignore[arg-type]
        calls.append("turbo-file" if res is not None else "pillow-file")
        return res
    monkeypatch.setattr(_core, "_turbo_jpeg", wrap_file)
    yield calls


# --- JPEG-in-TIFF writers ---------------------------------------------------------------------

def jpeg_bytes(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment) up to and including SOS; then (0, entropy data + EOI)."""
    out: list[tuple[int, bytes]] = []
    pos = 2
    while True:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((marker, data[pos:pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:
            out.append((0, data[pos:]))
            return out


def abbreviate(data: bytes) -> tuple[bytes, bytes]:
    """Split a JPEG into (tables-only stream, abbreviated image stream), as TIFF stores them
    with the JPEGTables tag."""
    segs = segments(data)
    tables = b"".join(s for m, s in segs if m in (0xDB, 0xC4))
    image = b"".join(s for m, s in segs if m not in (0xDB, 0xC4) and not 0xE0 <= m <= 0xEF)
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + image


def jpeg_ifd(wr: TiffWriter, img: Image.Image, tile: int | None, rows: int = 48,
             tables: bool = True, extra: list[Tag] | None = None,
             damage: dict[int, bytes] | None = None) -> int:
    """One IFD of JPEG tiles (or strips of `rows` rows, the last one only as tall as the
    image), YCbCr or grey; with a shared JPEGTables tag when `tables`. `damage` replaces the
    data of some segments."""
    w, h = img.size
    spp = 1 if img.mode == "L" else 3
    boxes = ([(x, y, x + tile, y + tile) for y in range(0, h, tile) for x in range(0, w, tile)]
             if tile else [(0, y, w, min(y + rows, h)) for y in range(0, h, rows)])
    offs, counts = [], []
    table_data = b""
    for i, box in enumerate(boxes):
        data = jpeg_bytes(img.crop(box))  # crop pads edge tiles with black
        if tables:
            table_data, data = abbreviate(data)
        if damage and i in damage:
            data = damage[i]
        offs.append(wr.write_data(data))
        counts.append(len(data))
    tags: list[Tag] = [(256, 4, (w,)), (257, 4, (h,)), (258, 3, (8,) * spp), (259, 3, (7,)),
                       (262, 3, (1 if spp == 1 else 6,)), (277, 3, (spp,))]
    if tile:
        tags += [(322, 3, (tile,)), (323, 3, (tile,)), (324, 4, tuple(offs)),
                 (325, 4, tuple(counts))]
    else:
        tags += [(278, 4, (rows,)), (273, 4, tuple(offs)), (279, 4, tuple(counts))]
    if tables:
        tags.append((347, 7, table_data))
    return wr.write_ifd(tags + (extra or []))


def write_jpeg_tiff(path: Path, img: Image.Image, tile: int | None = 64, **kw: object) -> None:
    with open(path, "wb") as f:
        wr = TiffWriter(f)
        wr.finish([jpeg_ifd(wr, img, tile, **kw)])  # type: ignore[arg-type]


def write_jpeg_pyramid(path: Path, img: Image.Image) -> None:
    """SubIFD pyramid of JPEG tiles: levels 1/2 and 1/4."""
    w, h = img.size
    with open(path, "wb") as f:
        wr = TiffWriter(f)
        subs = [jpeg_ifd(wr, img.resize((w // d, h // d), Image.Resampling.LANCZOS), 64,
                         extra=[(254, 4, (1,))]) for d in (2, 4)]
        wr.finish([jpeg_ifd(wr, img, 64, extra=[(330, 4, tuple(subs))])])


def _check(path: Path, out: Path, src: Image.Image, sizes: tuple[int, ...] = SIZES,
           floor: float = 30) -> dict[str, object]:
    meta = make_thumbnails(path, out, sizes=sizes)
    for t in meta["thumbnails"]:
        im = Image.open(out / t["name"])
        assert im.mode == src.mode
        q = psnr(im, reference(src, im.size))
        assert q >= floor, (t["name"], q)
    return meta


# --- decoding paths ---------------------------------------------------------------------------

TIFF_CASES = {
    "tiles-tables": dict(tile=64),
    "tiles-no-tables": dict(tile=64, tables=False),
    "tiles-gray": dict(tile=64, gray=True),
    "tiles-edge": dict(tile=112),  # 1200 = 10 * 112 + 80: partial edge tiles, both ways
    "strips": dict(tile=None, rows=48),  # 800 = 16 * 48 + 32: a shorter last strip
    "strips-gray": dict(tile=None, rows=16, gray=True),
}


@pytest.mark.parametrize("name", list(TIFF_CASES))
def test_jpeg_tiff(name: str, turbo: bool, tmp_path: Path, spy: list[str]) -> None:
    kw = dict(TIFF_CASES[name])
    src = pattern(W, H).convert("L") if kw.pop("gray", False) else pattern(W, H)
    p = tmp_path / "img.tif"
    write_jpeg_tiff(p, src, **kw)  # type: ignore[arg-type]
    meta = _check(p, tmp_path / "out", src)
    assert meta["path"] == "jpeg-draft"
    assert set(spy) == ({"_decode_turbo"} if turbo else {"_decode_jpegs"})
    if turbo:
        # the smallest M/8 whose image still covers 160 x 107: 2/8 (300 x 200)
        assert meta["reduction"] == 4.0


@needs_turbojpeg
@pytest.mark.parametrize("size, m", [(160, 2), (300, 2), (301, 3), (500, 4), (1000, 7),
                                     (1100, 8)])
def test_scale_just_above_target(size: int, m: int, tmp_path: Path) -> None:
    src = pattern(W, H)
    p = tmp_path / "img.tif"
    write_jpeg_tiff(p, src, tile=64)
    meta = _check(p, tmp_path / "out", src, sizes=(size,))
    assert meta["reduction"] == pytest.approx(8 / m, abs=1e-3)
    assert meta["path"] == ("jpeg-draft" if m < 8 else "banded")


def test_jpeg_pyramid(turbo: bool, tmp_path: Path, spy: list[str]) -> None:
    src = pattern(W, H)
    p = tmp_path / "img.tif"
    write_jpeg_pyramid(p, src)
    # the 300 x 200 level covers 200 px; TurboJPEG decodes it at 6/8 (225 x 150)
    meta = _check(p, tmp_path / "out", src, sizes=(200,), floor=32)
    assert meta["path"] == "pyramid" and meta["levels"] == 3
    assert meta["reduction"] == pytest.approx(W / 225 if turbo else 4.0, abs=1e-3)
    assert set(spy) == ({"_decode_turbo"} if turbo else {"_decode_jpegs"})


def test_same_output_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _turbojpeg.available():
        pytest.skip("libturbojpeg not loadable")
    src = pattern(W, H)
    p = tmp_path / "img.tif"
    write_jpeg_tiff(p, src, tile=64)
    make_thumbnails(p, tmp_path / "a", sizes=SIZES)
    monkeypatch.setattr(_turbojpeg, "ENABLED", False)
    make_thumbnails(p, tmp_path / "b", sizes=SIZES)
    for n in SIZES:
        a = Image.open(tmp_path / "a" / f"thumb-{n}.jpg")
        b = Image.open(tmp_path / "b" / f"thumb-{n}.jpg")
        assert a.size == b.size and psnr(a, b) >= 35


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_file(mode: str, turbo: bool, tmp_path: Path, spy: list[str]) -> None:
    src = pattern(W, H).convert(mode)
    p = tmp_path / "img.jpg"
    src.save(p, quality=95)
    meta = _check(p, tmp_path / "out", Image.open(p).convert(mode))
    assert meta["path"] == "jpeg-draft" and meta["mode"] == mode
    assert spy == (["turbo-file"] if turbo else ["pillow-file"])


def test_jpeg_file_exif_orientation(turbo: bool, tmp_path: Path) -> None:
    src = pattern(W, H)
    exif = Image.Exif()
    exif[274] = 6
    p = tmp_path / "img.jpg"
    src.save(p, quality=95, exif=exif)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(160,))
    assert meta["orientation"] == 6
    im = Image.open(tmp_path / "out" / "thumb-160.jpg")
    assert im.size == (107, 160)
    ref = reference(src.transpose(Image.Transpose.ROTATE_270), im.size)
    assert psnr(im, ref) >= 30


def test_cmyk_jpeg_file_uses_pillow(tmp_path: Path, spy: list[str]) -> None:
    """Adobe CMYK JPEGs are stored inverted; Pillow knows, so they stay on its path."""
    src = pattern(W, H)
    p = tmp_path / "img.jpg"
    src.convert("CMYK").save(p, quality=95)
    meta = _check(p, tmp_path / "out", Image.open(p).convert("RGB"))
    assert meta["mode"] == "CMYK" and "turbo-file" not in spy


def test_large_jpeg_file_streamed_by_pillow(tmp_path: Path, spy: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_core, "TURBO_MAX_FILE_BYTES", 1000)
    src = pattern(W, H)
    p = tmp_path / "img.jpg"
    src.save(p, quality=95)
    _check(p, tmp_path / "out", Image.open(p).convert("RGB"))
    assert spy == ["pillow-file"]


# --- corrupt input ----------------------------------------------------------------------------

def test_truncated_jpeg_tile(turbo: bool, tmp_path: Path) -> None:
    src = pattern(W, H)
    good = abbreviate(jpeg_bytes(src.crop((64, 64, 128, 128))))[1]
    p = tmp_path / "cut.tif"
    write_jpeg_tiff(p, src, tile=64, damage={20: good[:len(good) // 2]})
    with pytest.raises(ImageError, match=r"cut\.tif: .*(truncated|corrupt)") as e:
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)
    if turbo:
        assert "JPEG tile 20" in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@needs_turbojpeg
def test_corrupt_jpeg_tile_data(tmp_path: Path) -> None:
    """Damaged entropy data is only a libjpeg warning (the rest of the tile turns grey): it
    must fail, not become a silently partial thumbnail."""
    src = pattern(W, H)
    good = bytearray(abbreviate(jpeg_bytes(src.crop((0, 0, 64, 64))))[1])
    mid = len(good) // 2
    good[mid:mid + 16] = b"\xff\xd3" * 8  # restart markers where none belong
    p = tmp_path / "bad.tif"
    write_jpeg_tiff(p, src, tile=64, damage={3: bytes(good)})
    with pytest.raises(ImageError, match=r"bad\.tif: JPEG tile 3 is corrupt .*Corrupt JPEG"):
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)


@needs_turbojpeg
def test_jpeg_tile_larger_than_its_slot(tmp_path: Path) -> None:
    """A tile whose JPEG is bigger than the TIFF's tile size is refused, never decoded past
    its place in the band buffer."""
    src = pattern(W, H)
    big = abbreviate(jpeg_bytes(src.crop((0, 0, 128, 128))))[1]
    p = tmp_path / "big.tif"
    write_jpeg_tiff(p, src, tile=64, damage={5: big})
    with pytest.raises(ImageError, match=r"JPEG tile 5 is 128x128, its geometry needs 64x64"):
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg_file(cut: float, turbo: bool, tmp_path: Path) -> None:
    p = tmp_path / "cut.jpg"
    pattern(W, H).save(p, quality=95)
    data = p.read_bytes()
    p.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ImageError, match=r"cut\.jpg: .*truncated"):
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)


def test_junk_before_eoi_accepted(turbo: bool, tmp_path: Path) -> None:
    """Padding between the scan and EOI (some cameras write it) leaves the pixels whole."""
    src = pattern(W, H)
    data = jpeg_bytes(src)
    assert data.endswith(b"\xff\xd9")
    p = tmp_path / "pad.jpg"
    p.write_bytes(data[:-2] + b"\x00" * 7 + b"\xff\xd9")
    _check(p, tmp_path / "out", Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("message, damaging", [
    ("Premature end of JPEG file", True),
    ("Corrupt JPEG data: premature end of data segment", True),
    ("Corrupt JPEG data: bad Huffman code", True),
    ("Corrupt JPEG data: found marker 0xd9 instead of RST3", True),
    ("Corrupt JPEG data: 12 extraneous bytes before marker 0xd2", True),
    ("Corrupt JPEG data: 7 extraneous bytes before marker 0xd9", False),
    ("Corrupt JPEG data: bad ICC marker", False),
    ("Warning: unknown JFIF revision number 3.01", False),
])
def test_damaging_warnings(message: str, damaging: bool) -> None:
    assert _turbojpeg._damaging(message) is damaging


def test_env_var_disables_turbojpeg() -> None:
    code = "from thumbnailer import _turbojpeg; print(_turbojpeg.available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"THUMBNAILER_NO_TURBOJPEG": "1", "PATH": ""}, check=True)
    assert r.stdout.strip() == "False"


@needs_turbojpeg
def test_plan_logs_decoder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = pattern(W, H)
    p = tmp_path / "img.tif"
    write_jpeg_tiff(p, src, tile=64)
    with caplog.at_level(logging.INFO, logger="thumbnailer"):
        make_thumbnails(p, tmp_path / "out", sizes=SIZES)
    plan = next(r for r in caplog.records if r.getMessage() == "thumbnail.plan")
    fields = plan.fields  # type: ignore[attr-defined]
    assert fields["decoder"] == "turbojpeg" and fields["dct_scale"] == "2/8"
