"""Malformed input, limits, the CLI contract and logging."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from thumbnailer import ImageError, make_thumbnails, sniff
from thumbnailer._tiffio import TiffWriter

from .gen import pattern


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thumbnailer", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def header_bomb(path: Path, w: int, h: int, compression: int = 1) -> None:
    """A ~19 KB file declaring a huge image whose strips all point at one tiny blob."""
    with open(path, "wb") as f:
        wr = TiffWriter(f)
        blob = wr.write_data(b"\0" * 64)
        n = 2000
        rps = -(-h // n)
        tags = [(256, 4, (w,)), (257, 4, (h,)), (258, 3, (8, 8, 8)), (259, 3, (compression,)),
                (262, 3, (2,)), (277, 3, (3,)), (278, 4, (rps,)),
                (273, 4, (blob,) * n), (279, 4, (64,) * n)]
        wr.finish([wr.write_ifd(tags)])


@pytest.fixture
def tiff(tmp_path: Path) -> Path:
    p = tmp_path / "ok.tif"
    pattern(600, 400).save(p, compression="tiff_lzw")
    return p


def test_sniff(tmp_path: Path, tiff: Path) -> None:
    assert sniff(tiff) == "tiff"
    im = pattern(40, 30)
    for fmt, ext in [("jpeg", "jpg"), ("png", "png"), ("webp", "webp"), ("gif", "gif"),
                     ("bmp", "bmp")]:
        p = tmp_path / f"x.{ext}"
        im.save(p)
        assert sniff(p) == fmt
        # content sniffing, not the claimed type
        q = tmp_path / f"x-{fmt}.tif"
        q.write_bytes(p.read_bytes())
        assert sniff(q) == fmt
    (tmp_path / "t.txt").write_text("hello world, not an image")
    assert sniff(tmp_path / "t.txt") is None
    assert sniff(tmp_path / "missing") is None


def test_garbage(tmp_path: Path) -> None:
    p = tmp_path / "garbage.jpg"
    p.write_bytes(b"this is not an image at all" * 50)
    with pytest.raises(ImageError, match=r"garbage\.jpg: not a supported image"):
        make_thumbnails(p, tmp_path / "out")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        make_thumbnails(tmp_path / "nope.tif", tmp_path / "out")


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw", "tiff_adobe_deflate"])
def test_truncated_tiff(tmp_path: Path, compression: str) -> None:
    p = tmp_path / "cut.tif"
    pattern(600, 400).save(p, compression=compression)
    data = p.read_bytes()
    # Pillow writes the IFD after the data: keep the IFD, cut the data in the middle
    from thumbnailer._tiffio import read_structure
    with open(p, "rb") as f:
        st = read_structure(f)
    offs = st.pages[0].ints(273)
    mid = offs[len(offs) // 2]
    p.write_bytes(data[:mid])
    with pytest.raises(ImageError, match=r"cut\.tif: .*"):
        make_thumbnails(p, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_truncated_tiff_ifd(tmp_path: Path, tiff: Path) -> None:
    p = tmp_path / "cut.tif"
    p.write_bytes(tiff.read_bytes()[:-50])
    with pytest.raises(ImageError, match=r"cut\.tif: "):
        make_thumbnails(p, tmp_path / "out")


def test_corrupt_compressed_data(tmp_path: Path) -> None:
    p = tmp_path / "bad.tif"
    pattern(600, 400).save(p, compression="tiff_adobe_deflate")
    from thumbnailer._tiffio import read_structure
    with open(p, "rb") as f:
        st = read_structure(f)
    off = st.pages[0].ints(273)[3]
    data = bytearray(p.read_bytes())
    data[off:off + 200] = bytes(range(200))
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"bad\.tif: corrupt"):
        make_thumbnails(p, tmp_path / "out")


@pytest.mark.parametrize("fmt", ["jpg", "png", "gif", "webp"])
def test_truncated_other(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"cut.{fmt}"
    pattern(600, 400).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt}: "):
        make_thumbnails(p, tmp_path / "out")


def test_header_bomb_rejected_fast(tmp_path: Path) -> None:
    p = tmp_path / "bomb.tif"
    header_bomb(p, 100_000, 100_000)
    assert p.stat().st_size < 40_000
    t = time.monotonic()
    with pytest.raises(ImageError, match=r"bomb\.tif: image is 100000x100000 = 10000 Mpx, "
                                         r"over the 1000 Mpx cap"):
        make_thumbnails(p, tmp_path / "out")
    assert time.monotonic() - t < 0.5


def test_header_bomb_under_cap_rejected_by_validation(tmp_path: Path) -> None:
    p = tmp_path / "bomb.tif"
    header_bomb(p, 30_000, 30_000)
    t = time.monotonic()
    with pytest.raises(ImageError, match="uncompressed strip 0 has 64 bytes"):
        make_thumbnails(p, tmp_path / "out")
    assert time.monotonic() - t < 0.5


def test_pixel_cap_parameter(tmp_path: Path, tiff: Path) -> None:
    with pytest.raises(ImageError, match=r"600x400 = 0 Mpx, over the 0 Mpx cap"):
        make_thumbnails(tiff, tmp_path / "out", max_pixels=1000)


def test_ifd_outside_file(tmp_path: Path) -> None:
    p = tmp_path / "x.tif"
    p.write_bytes(b"II*\0" + (10**6).to_bytes(4, "little") + b"\0" * 100)
    with pytest.raises(ImageError, match="outside the file"):
        make_thumbnails(p, tmp_path / "out")


def test_too_few_strips(tmp_path: Path) -> None:
    p = tmp_path / "x.tif"
    with open(p, "wb") as f:
        wr = TiffWriter(f)
        off = wr.write_data(b"\0" * 300)
        tags = [(256, 4, (10,)), (257, 4, (20,)), (258, 3, (8,)), (259, 3, (1,)),
                (262, 3, (1,)), (278, 4, (10,)), (273, 4, (off,)), (279, 4, (100,))]
        wr.finish([wr.write_ifd(tags)])
    with pytest.raises(ImageError, match="has 1 strips, its geometry needs 2"):
        make_thumbnails(p, tmp_path / "out")


def test_small_image_not_upscaled(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    pattern(100, 50).save(p)
    meta = make_thumbnails(p, tmp_path / "out", sizes=(256, 64))
    assert [(t["size"], t["width"], t["height"]) for t in meta["thumbnails"]] == [
        (64, 64, 32), (256, 100, 50)]
    assert Image.open(tmp_path / "out" / "thumb-256.jpg").size == (100, 50)


def test_webp_output(tmp_path: Path, tiff: Path) -> None:
    meta = make_thumbnails(tiff, tmp_path / "out", sizes=(128,), fmt="webp")
    assert meta["thumbnails"][0]["name"] == "thumb-128.webp"
    assert Image.open(tmp_path / "out" / "thumb-128.webp").format == "WEBP"


def test_metadata(tmp_path: Path) -> None:
    p = tmp_path / "m.tif"
    pattern(600, 400).save(p, compression="tiff_lzw", dpi=(300, 300), tiffinfo={274: 8})
    meta = make_thumbnails(p, tmp_path / "out", sizes=(100,))
    assert meta["dpi"] == [300.0, 300.0]
    assert meta["orientation"] == 8
    assert meta["thumbnails"][0]["width"] == 67 and meta["thumbnails"][0]["height"] == 100
    assert set(meta) == {"format", "width", "height", "mode", "bit_depth", "pages", "levels",
                         "dpi", "orientation", "icc", "path", "reduction", "seconds",
                         "peak_rss_mb", "thumbnails"}


def test_logging(tmp_path: Path, tiff: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="thumbnailer"):
        make_thumbnails(tiff, tmp_path / "out", sizes=(64,))
    events = {r.getMessage(): r.fields for r in caplog.records}  # type: ignore[attr-defined]
    assert {"thumbnail.open", "thumbnail.plan", "thumbnail.decoded",
            "thumbnail.done"} <= set(events)
    assert events["thumbnail.open"]["width"] == 600
    assert events["thumbnail.plan"]["path"] == "banded"
    assert events["thumbnail.plan"]["reduction"] > 1
    assert events["thumbnail.decoded"]["peak_rss_mb"] > 0


# --- CLI --------------------------------------------------------------------------------------

def test_cli_ok(tmp_path: Path, tiff: Path) -> None:
    r = run_cli(tiff, "--out", tmp_path / "out", "--size", "64", "--size", "300")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    meta = json.loads(lines[0])
    assert meta["format"] == "tiff" and meta["width"] == 600 and meta["height"] == 400
    assert [t["name"] for t in meta["thumbnails"]] == ["thumb-64.jpg", "thumb-300.jpg"]
    assert (tmp_path / "out" / "thumb-300.jpg").is_file()
    assert meta["peak_rss_mb"] > 0


def test_cli_default_sizes_webp(tmp_path: Path, tiff: Path) -> None:
    r = run_cli(tiff, "--out", tmp_path / "out", "--format", "webp")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert [t["name"] for t in meta["thumbnails"]] == ["thumb-256.webp", "thumb-1024.webp"]
    assert meta["thumbnails"][1]["width"] == 600  # never upscaled


@pytest.mark.parametrize("kind", ["garbage", "bomb", "cap", "truncated"])
def test_cli_bad_input(tmp_path: Path, tiff: Path, kind: str) -> None:
    p = tmp_path / "in.bin"
    extra: list[str] = []
    if kind == "garbage":
        p.write_bytes(b"nope" * 100)
        why = "not a supported image"
    elif kind == "bomb":
        header_bomb(p, 100_000, 100_000)
        why = "over the 1000 Mpx cap"
    elif kind == "cap":
        p.write_bytes(tiff.read_bytes())
        extra = ["--max-pixels", "1000"]
        why = "over the 0 Mpx cap"
    else:
        p.write_bytes(tiff.read_bytes()[:3000])
        why = ""
    r = run_cli(p, "--out", tmp_path / "out", *extra)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"thumbnailer: {p}: ")
    assert why in lines[0]


def test_cli_timeout(tmp_path: Path, tiff: Path) -> None:
    r = run_cli(tiff, "--out", tmp_path / "out", "--timeout", "0.001")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"thumbnailer: {tiff}: processing took longer than 0.001 s"]


def test_cli_memory_limit(tmp_path: Path) -> None:
    # a whole-image decode (GIF) allowed by --max-decode-mb but not by --memory-mb
    p = tmp_path / "big.gif"
    Image.new("P", (9000, 9000), 3).save(p)
    r = run_cli(p, "--out", tmp_path / "out", "--memory-mb", "120", "--max-decode-mb", "4096")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "memory" in lines[0], r.stderr


@pytest.mark.parametrize("obj", [
    {"a": 1, "b": [1.5, None, True, False], "c": "é\"\\\n\x01", "d": {"e": []}, "f": {}},
    [0.1, 1e300, -0.0, 12345678901234567890, "", (1, 2)],
    {1: "x", 2.5: "y", None: "z"}, {False: "w"},
    float("nan"), float("inf"), -float("inf"),
])
def test_cli_dumps_matches_json(obj: object) -> None:
    from thumbnailer.cli import dumps

    assert dumps(obj) == json.dumps(obj)


def test_cli_dumps_rejects_unknown() -> None:
    from thumbnailer.cli import dumps

    with pytest.raises(TypeError):
        dumps({"x": object()})
    with pytest.raises(TypeError):
        dumps({(1,): 1})
