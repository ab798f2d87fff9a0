"""`tusd-py thumbnail`: the processor's thumbnail path on one file, without the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

TUSD_PY = [sys.executable, "-m", "tusd_py"]


def test_thumbnails_and_metadata_of_one_image(tmp_path: Path) -> None:
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "red.jpg", quality=90)
    proc = subprocess.run([*TUSD_PY, "thumbnail", str(tmp_path / "red.jpg"), "--out",
                           str(tmp_path / "out"), "--size", "64"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert (meta["width"], meta["height"]) == (640, 480)
    [thumb] = list((tmp_path / "out").iterdir())
    with Image.open(thumb) as im:
        assert max(im.size) == 64


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    proc = subprocess.run([*TUSD_PY, "thumbnail", str(tmp_path / "notes.txt"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a supported image" in proc.stderr


def test_it_imports_nothing_of_the_server(tmp_path: Path) -> None:
    """Why it starts as fast as `python -m thumbnailer`."""
    Image.new("RGB", (32, 32)).save(tmp_path / "s.png")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tusd_py", "thumbnail",
                           str(tmp_path / "s.png"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {"starlette", "uvicorn", "anyio", "tusd_py.cli", "tusd_py.app"} & imported
