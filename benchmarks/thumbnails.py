"""Benchmark: naive Pillow vs pyvips vs tusd-py's thumbnailer on the issue-4 corpus.

    .venv/bin/python benchmarks/thumbnails.py [--scale 0.5] [--dir /tmp/thumbcorpus] [--only X]
        [--tools vips,ours] [--repeat 5] [--keep]

Generates the corpus deterministically (TIFF, plus a 16000x12000 PNG and 12 MP HEIC and AVIF
photos) (band by band, never a whole image in memory), then runs
each tool per file in a fresh process (256 and 1024 px thumbnails), measuring wall time, peak
RSS (RUSAGE_CHILDREN of a wrapper that runs only that tool) and PSNR of the 1024 px output
against the ideal thumbnail rendered from the corpus' master picture. pyvips is only needed
here (pip install "pyvips[binary]"); the package never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image, ImageChops, ImageStat  # noqa: E402
from thumbnail_corpus import Spec, corpus, truth  # noqa: E402

WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t
print(json.dumps({"rc": r.returncode, "out": r.stdout[-2000:], "err": r.stderr[-400:],
                  "seconds": dt,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

NAIVE = """
import resource, sys
from PIL import Image
resource.setrlimit(resource.RLIMIT_AS, (12 << 30, resource.RLIM_INFINITY))
Image.MAX_IMAGE_PIXELS = None
src, out = sys.argv[1], sys.argv[2]
for n in (1024, 256):
    im = Image.open(src)
    im.thumbnail((n, n))
    im.convert("RGB").save(f"{out}/thumb-{n}.jpg", quality=90)
"""

VIPS = """
import sys
import pyvips
src, out = sys.argv[1], sys.argv[2]
t = pyvips.Image.thumbnail(src, 1024, size="down").copy_memory()
if t.interpretation not in ("srgb", "b-w") or t.format != "uchar":
    t = t.colourspace("srgb")
if t.hasalpha():
    t = t.flatten(background=255)
t.write_to_file(f"{out}/thumb-1024.jpg", Q=90)
t.thumbnail_image(256).write_to_file(f"{out}/thumb-256.jpg", Q=90)
"""


def tool_cmd(tool: str, src: Path, out: Path) -> list[str]:
    py = sys.executable
    if tool == "pillow":
        return [py, "-c", NAIVE, str(src), str(out)]
    if tool == "vips":
        return [py, "-c", VIPS, str(src), str(out)]
    return [py, "-m", "thumbnailer", str(src), "--out", str(out)]


def psnr(a: Image.Image, b: Image.Image) -> float:
    if a.size != b.size:
        a = a.resize(b.size, Image.Resampling.LANCZOS)
    a = a.convert(b.mode)
    rms = ImageStat.Stat(ImageChops.difference(a, b)).rms
    mse = sum(x * x for x in rms) / len(rms)
    return 99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse)


def run(tool: str, spec: Spec, src: Path, work: Path) -> dict[str, object]:
    out = work / f"out-{tool}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=False)  # warm cache
    r = subprocess.run([sys.executable, "-c", WRAPPER, *tool_cmd(tool, src, out)],
                       capture_output=True, text=True, timeout=900)
    res = json.loads(r.stdout)
    row: dict[str, object] = {"seconds": res["seconds"], "rss_mb": res["rss_mb"],
                              "ok": res["rc"] == 0}
    thumb = out / "thumb-1024.jpg"
    if res["rc"] == 0 and thumb.exists() and spec.kind:
        im = Image.open(thumb)
        w, h = spec.w, spec.h
        s = 1024 / max(w, h)
        size = (max(1, round(w * s)), max(1, round(h * s))) if s < 1 else (w, h)
        ref = truth(spec.kind, size)
        row["psnr"] = psnr(im, ref)
    else:
        lines = [ln for ln in res["err"].strip().splitlines() if ln.strip()]
        row["error"] = lines[-1][:70] if lines else f"exit {res['rc']}"
    if tool == "ours" and res["rc"] == 0:
        row["path"] = json.loads(res["out"])["path"]
    return row


def _median(rows: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median wall time, with the min and max wall time and the largest
    peak RSS of all runs."""
    ok = [r for r in rows if r["ok"]] or rows
    ok.sort(key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
    row = dict(ok[(len(ok) - 1) // 2])
    times = [float(r["seconds"]) for r in ok]  # type: ignore[arg-type]
    row["seconds"] = statistics.median(times)
    row["spread"] = (min(times), max(times))
    row["rss_mb"] = max(float(r["rss_mb"]) for r in rows)  # type: ignore[arg-type]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scale", type=float, default=1.0, help="linear size factor (default 1)")
    ap.add_argument("--dir", default="/tmp/thumbcorpus", help="corpus directory")
    ap.add_argument("--only", action="append", help="run only these corpus names")
    ap.add_argument("--tools", default="pillow,vips,ours")
    ap.add_argument("--keep", action="store_true", help="keep generated files")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs per tool, interleaved; reports the median time (default 5)")
    args = ap.parse_args()
    tools = args.tools.split(",")
    if "ours" in tools:
        # An installed package ships bytecode. Under PYTHONDONTWRITEBYTECODE (set in this
        # project's environment) every fresh "ours" process would otherwise recompile the
        # package, about 30-40 ms that pyvips (precompiled in site-packages) does not pay.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "thumbnailer")],
                       check=False)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"scale {args.scale}; tools {tools}; sizes 256+1024; median of {args.repeat}\n")
    print("| file | size | pixels | tool | wall s, median (min-max) | peak RSS MB | PSNR dB "
          "| vs vips | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in corpus(args.scale):
        if args.only and spec.name not in args.only:
            continue
        src = work / f"{spec.name}.{spec.ext}"
        if not src.exists():
            t = time.perf_counter()
            spec.build(src, spec)
            print(f"<!-- generated {src.name} in {time.perf_counter() - t:.1f} s -->",
                  file=sys.stderr)
        size_mb = src.stat().st_size / 1e6
        runs: dict[str, list[dict[str, object]]] = {tool: [] for tool in tools}
        for _ in range(max(1, args.repeat)):
            for tool in tools:  # interleaved, so load changes hit every tool alike
                runs[tool].append(run(tool, spec, src, work))
        results = {tool: _median(rows) for tool, rows in runs.items()}
        vips_t = results.get("vips", {}).get("seconds")
        for tool, row in results.items():
            ratio = ""
            if isinstance(vips_t, float) and results["vips"]["ok"] and row["ok"]:
                ratio = f"{float(row['seconds']) / vips_t:.2f}"  # type: ignore[arg-type]
            q = row.get("psnr")
            lo, hi = row["spread"]  # type: ignore[misc]
            spread = f" ({lo:.2f}-{hi:.2f})" if len(runs[tool]) > 1 else ""
            notes = str(row.get("path", "")) if row["ok"] else f"FAILED: {row.get('error')}"
            print(f"| {spec.name} | {size_mb:.1f} MB | {spec.w}x{spec.h} | {tool} | "
                  f"{float(row['seconds']):.2f}{spread} | {float(row['rss_mb']):.0f} | "  # type: ignore[arg-type]
                  f"{'' if q is None else f'{q:.1f}'} | {ratio} | {notes} |", flush=True)
        if not args.keep:
            src.unlink()
        for tool in tools:
            shutil.rmtree(work / f"out-{tool}", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
