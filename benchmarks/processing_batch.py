"""Benchmark: a batch of photos and scans uploaded at once through tus, until all processed,
against a warm libvips loop making the same thumbnails from the same files.

    .venv/bin/python benchmarks/processing_batch.py [--processors 1 2] [--dir /tmp/tpy-batch]

The batch (generated once into --dir, deterministic):
  * 60 12 MP phone JPEGs (4032x3024 with grain, quality 88-92, 1.2-1.8 MB), a third stored with
    EXIF orientation 6;
  * 20 12 MP HEICs (4032x3024, 512 px grid tiles like a phone's; ~4.6 bytes a pixel to decode
    = ~54 MB, inside the thumbnailer's default 64 MB whole-decode bound);
  * 10 AVIFs of 3072x2304 (7.1 Mpx): libavif needs ~8.2 bytes a pixel, ~58 MB, inside the
    default bound (a 12 MP AVIF, ~96 MB, would be refused at the defaults);
  * 4 large TIFF classes of benchmarks/thumbnail_corpus.py (tiled JPEG, SubIFD pyramid,
    LZW+predictor strips, tiled deflate) at --tiff-scale.
Distinct files are few (4 JPEG pictures x qualities, 4 HEIC, 2 AVIF pictures); the batch
uploads each name as its own upload.

tusd-py side: `tusd-py serve --processors N` on loopback; every file is created and sent
with a plain HTTP client (POST + one PATCH each, 8 at a time), and the clock runs from the
first POST until /api/uploads?state=processed,failed lists all of them. The server does
everything it does in production: receive, fsync, sha256, link into the final folder,
thumbnails 256 and 1024 (JPEG) in its warm worker pool, upload.json.

libvips side: one process, pyvips warm (one throw-away thumbnail first), a plain loop over the
same files: thumbnail(file, 1024) (shrink-on-load, auto-rotate) saved as JPEG, and 256 made
from that 1024 image, saved as JPEG. It receives nothing, hashes nothing, places nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thumbnail_corpus import Spec, corpus, phone_photo, region

ROOT = Path(__file__).resolve().parent.parent
TIFF_CLASSES = ("tile_jpeg_rgb", "pyramid_subifd_jpeg", "strip_lzw_pred_rgb", "tile_deflate_rgb")
SIZES = (256, 1024)
TUS = {"Tus-Resumable": "1.0.0"}


def exif6() -> bytes:
    e = Image.Exif()
    e[274] = 6
    return e.tobytes()


def build_batch(folder: Path, tiff_scale: float) -> list[Path]:
    """The batch's files (made once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    W, H = 4032, 3024
    pictures: list[Image.Image] = []
    for i in range(60):
        p = folder / f"phone-{i:02d}.jpg"
        if not p.exists():
            if not pictures:
                # four different crops of the corpus picture, as a 12 MP photo each
                # with sensor-like grain, so the files are 1.2-1.8 MB, not 0.3 MB
                grain = Image.merge("RGB", [Image.effect_noise((W, H), 24 + 4 * c)
                                            for c in range(3)])
                pictures = [Image.blend(region(W * 2, H * 2, (x, y, x + W, y + H)), grain, 0.12)
                            for x, y in ((0, 0), (W, 0), (0, H), (W // 2, H // 2))]
            pictures[i % 4].save(p, "JPEG", quality=88 + i % 5,
                                 **({"exif": exif6()} if i % 3 == 0 else {}))
        files.append(p)
    for i in range(20):
        p = folder / f"phone-{i:02d}.heic"
        src = folder / f"heic-{i % 4}.heic"
        if not src.exists():
            phone_photo("heic")(src, Spec("heic", "rgb", W + i % 4 * 16, H, phone_photo("heic"),
                                          "heic"))
        if not p.exists():
            shutil.copyfile(src, p)
        files.append(p)
    for i in range(10):
        p = folder / f"photo-{i:02d}.avif"
        src = folder / f"avif-{i % 2}.avif"
        if not src.exists():
            phone_photo("avif")(src, Spec("avif", "rgb", 3072 + i % 2 * 16, 2304,
                                          phone_photo("avif"), "avif"))
        if not p.exists():
            shutil.copyfile(src, p)
        files.append(p)
    for spec in corpus(tiff_scale):
        if spec.name in TIFF_CLASSES:
            p = folder / f"{spec.name}-{tiff_scale:g}.{spec.ext}"
            if not p.exists():
                print(f"  generating {p.name} ({spec.w}x{spec.h})", flush=True)
                spec.build(p, spec)
            files.append(p)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(processors: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = workdir / f"server-{processors}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_PY_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--upload-dir", str(workdir / f"data-{processors}"), "--processors", str(processors)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    origin = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    # the server starts its workers with the processors: wait until they are warm
    while log.read_text().count("thumbnail.worker_started") < processors:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, origin, log


async def upload_all(origin: str, files: list[Path], concurrency: int = 8) -> list[str]:
    import base64

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(path: Path) -> str:
            async with sem:
                size = (await asyncio.to_thread(path.stat)).st_size
                meta = "filename " + base64.b64encode(path.name.encode()).decode()
                r = await client.post(f"{origin}/files/", headers={
                    **TUS, "Upload-Length": str(size), "Upload-Metadata": meta})
                assert r.status_code == 201, r.text
                url = r.headers["Location"]
                url = url if url.startswith("http") else origin + url
                data = await asyncio.to_thread(path.read_bytes)
                r = await client.patch(url, content=data, headers={
                    **TUS, "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream"})
                assert r.status_code == 204, r.text
                return url

        return await asyncio.gather(*(one(p) for p in files))


def run_tusd(processors: int, files: list[Path], workdir: Path) -> tuple[float, int, str]:
    proc, origin, log = start_server(processors, workdir)
    try:
        t0 = time.monotonic()
        asyncio.run(upload_all(origin, files))
        uploaded = time.monotonic() - t0
        while True:
            r = httpx.get(f"{origin}/api/uploads",
                          params={"state": "processed,failed", "limit": "1000"}, timeout=30)
            done = r.json()["uploads"]
            if len(done) >= len(files):
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        failed = [(u["metadata"].get("filename"), u["processing"]["error"]) for u in done
                  if u["state"] == "failed"]
        for name, error in failed:
            print(f"  FAILED {name}: {error}")
        restarts = log.read_text().count("thumbnail.worker_retired")
        return elapsed, len(failed), f"uploads sent in {uploaded:.1f} s, {restarts} restarts"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def run_vips(files: list[Path], out: Path) -> float:
    import pyvips

    out.mkdir(parents=True, exist_ok=True)
    warm = pyvips.Image.thumbnail(str(files[0]), 1024, size="down")
    warm.jpegsave(str(out / "warm.jpg"), Q=85)
    t0 = time.monotonic()
    for i, path in enumerate(files):
        big = pyvips.Image.thumbnail(str(path), SIZES[1], size="down").copy_memory()
        big.jpegsave(str(out / f"{i}-{SIZES[1]}.jpg"), Q=85)
        small = big.thumbnail_image(SIZES[0], size="down")
        small.jpegsave(str(out / f"{i}-{SIZES[0]}.jpg"), Q=85)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "tpy-batch")
    ap.add_argument("--processors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tiff-scale", type=float, default=0.5)
    ap.add_argument("--no-vips", action="store_true", help="skip the libvips loop")
    args = ap.parse_args()
    print(f"batch in {args.dir} ...", flush=True)
    files = build_batch(args.dir / "files", args.tiff_scale)
    total = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files, {total / 2**20:.0f} MiB; cpus: {os.cpu_count()}", flush=True)
    vips = float("nan") if args.no_vips else run_vips(files, args.dir / "vips-out")
    print(f"libvips loop: {vips:.2f} s", flush=True)
    rows = [("libvips loop (1 process, warm)", vips, 0, "thumbnails only")]
    for n in args.processors:
        work = args.dir / f"run-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        elapsed, failed, note = run_tusd(n, files, work)
        print(f"tusd-py --processors {n}: {elapsed:.2f} s", flush=True)
        rows.append((f"tusd-py --processors {n} (upload + process)", elapsed, failed, note))
        shutil.rmtree(work / f"data-{n}", ignore_errors=True)  # the server log stays
    print()
    print("| run | seconds | files/s | vs libvips loop | failed | note |")
    print("|---|---|---|---|---|---|")
    for name, secs, failed, note in rows:
        print(f"| {name} | {secs:.2f} | {len(files) / secs:.1f} | {vips / secs:.2f}x | "
              f"{failed} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
