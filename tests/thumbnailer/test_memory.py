"""Peak memory of `python -m thumbnailer` on a ~500 MB striped TIFF stays under 100 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from .gen import write_big_striped

LIMIT_MB = 100

# Runs the thumbnailer as its child so RUSAGE_CHILDREN measures exactly that one process.
WRAPPER = """
import json, resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "thumbnailer", *sys.argv[1:]],
                   capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
                  "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_500mb_striped_tiff_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "big.tif"
    write_big_striped(p, 13000, 13000)
    assert p.stat().st_size > 500_000_000
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(p), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["rc"] == 0, res["stderr"]
    meta = json.loads(res["stdout"])
    child_mb = res["children_maxrss_kb"] / 1024
    assert meta["peak_rss_mb"] < LIMIT_MB, meta
    assert child_mb < LIMIT_MB, child_mb
    assert abs(child_mb - meta["peak_rss_mb"]) < 10, (child_mb, meta["peak_rss_mb"])
    assert meta["path"] == "banded" and meta["width"] == 13000
    assert [(t["width"], t["height"]) for t in meta["thumbnails"]] == [(256, 256), (1024, 1024)]
    assert Image.open(out / "thumb-1024.jpg").size == (1024, 1024)
