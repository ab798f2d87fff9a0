"""The warm thumbnail worker pool, end to end: a real server, real HEIC/AVIF/TIFF/PNG/BMP files
made here, workers killed with SIGKILL, memory limits hit, corrupt photos."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pillow_heif
import pytest
from PIL import Image

from tests.conftest import ServerProcess
from tests.e2e.test_pipeline import upload, wait_for
from tests.thumbnailer.gen import corner_row, exif, pattern, photo, write_png
from tusd_py.config import Settings
from tusd_py.ops import metrics
from tusd_py.processing.pool import JobTimeout, ThumbnailPool, WorkerDied

TUS = {"Tus-Resumable": "1.0.0"}




def heic_bytes(im: Image.Image, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    pillow_heif.from_pillow(im).save(buf, format="HEIF", exif=exif(orientation), quality=85)
    return buf.getvalue()


def avif_bytes(im: Image.Image, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "AVIF", exif=exif(orientation), quality=70, speed=8)
    return buf.getvalue()


def red_corner(data: bytes) -> str:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    found = [name for name, xy in (("tl", (2, 2)), ("tr", (w - 3, 2)), ("bl", (2, h - 3)),
                                   ("br", (w - 3, h - 3)))
             if (px := im.getpixel(xy)) and isinstance(px, tuple)
             and px[0] > 200 and px[1] < 60 and px[2] < 60]
    assert len(found) == 1, found
    return found[0]


def wait_log(server: ServerProcess, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """The first log line matching `pattern` (a regex), waiting for it to be written."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log().splitlines():
            if m := rx.search(line):
                return m
        assert time.monotonic() < deadline, f"no log line like {pattern!r}:\n{server.log()}"
        time.sleep(0.01)


def scrape(server: ServerProcess) -> dict[str, float]:
    r = httpx.get(f"{server.origin}/metrics", timeout=10)
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line.startswith("tusd_py_thumbnail"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def thumbs(server: ServerProcess, doc: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for t in doc["thumbnails"]:
        r = httpx.get(server.origin + t["url"], timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.size == (t["width"], t["height"])
        out[t["name"]] = r.content
    return out


def test_settings_default_is_the_thumbnailers() -> None:
    from thumbnailer._core import DEFAULT_DECODE_MB

    assert Settings().thumbnail_max_decode_mb == DEFAULT_DECODE_MB == 64


def test_heic_and_avif_photos_get_upright_thumbnails_and_metadata(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    started = wait_log(server, r"thumbnail\.worker_started pid=(\d+)")  # warm before any job
    heic = heic_bytes(photo(1200, 800), orientation=6)
    # 3000x2000 AVIF: ~8.2 bytes a pixel to decode = ~47 MB, inside the default 64 MB bound
    avif = avif_bytes(photo(3000, 2000), orientation=6)
    # a 12 MP phone AVIF: decoded once by libavif and converted in bands (~57 MB peak)
    big_avif = avif_bytes(photo(4032, 3024))
    urls = {name: upload(server, data, name) for name, data in
            (("IMG_0001.HEIC", heic), ("photo.avif", avif), ("big.avif", big_avif))}
    docs = {name: wait_for(server, url, {"processed", "failed"}) for name, url in urls.items()}

    doc = docs["IMG_0001.HEIC"]
    assert doc["state"] == "processed", doc
    assert doc["file"]["sha256"] == hashlib.sha256(heic).hexdigest()
    image = doc["image"]
    assert {k: image[k] for k in ("format", "width", "height", "mode", "bit_depth",
                                  "orientation", "pages")} == {
        "format": "heif", "width": 1200, "height": 800, "mode": "RGB", "bit_depth": 8,
        "orientation": 6, "pages": 1}
    assert image["path"] == "full" and image["peak_rss_mb"] > 0
    sizes = {t["name"]: (t["width"], t["height"]) for t in doc["thumbnails"]}
    assert sizes == {"thumb-256.jpg": (171, 256), "thumb-1024.jpg": (683, 1024)}, sizes
    for data in thumbs(server, doc).values():
        assert red_corner(data) == "tr"  # turned a quarter clockwise, once

    doc = docs["photo.avif"]
    assert doc["state"] == "processed", doc
    image = doc["image"]
    assert {k: image[k] for k in ("format", "width", "height", "orientation")} == {
        "format": "avif", "width": 3000, "height": 2000, "orientation": 6}
    sizes = {t["name"]: (t["width"], t["height"]) for t in doc["thumbnails"]}
    assert sizes == {"thumb-256.jpg": (171, 256), "thumb-1024.jpg": (683, 1024)}, sizes
    for data in thumbs(server, doc).values():
        assert red_corner(data) == "tr"

    doc = docs["big.avif"]
    assert doc["state"] == "processed", doc  # within the default 64 MB decode bound
    assert (doc["image"]["width"], doc["image"]["height"]) == (4032, 3024)
    sizes = {t["name"]: (t["width"], t["height"]) for t in doc["thumbnails"]}
    assert sizes == {"thumb-256.jpg": (256, 192), "thumb-1024.jpg": (1024, 768)}, sizes
    r = httpx.get(urls["big.avif"], timeout=10)
    assert r.status_code == 200 and r.content == big_avif

    # All three ran in the one warm worker started with the server.
    pids = set(re.findall(r"thumbnail\.job_started .*pid=(\d+)", server.log()))
    assert pids == {started[1]}, server.log()
    m = scrape(server)
    assert m['tusd_py_thumbnail_jobs_total{outcome="ok"}'] == 3
    assert m.get('tusd_py_thumbnail_jobs_total{outcome="input"}', 0) == 0
    assert m["tusd_py_thumbnail_queue_depth"] == 0
    assert m['tusd_py_thumbnail_workers{state="idle"}'] == 1
    assert not any(k.startswith("tusd_py_thumbnail_workers_restarted_total") and v
                   for k, v in m.items())


def test_worker_killed_mid_job_is_retried_on_a_fresh_worker(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server()
    # 16000x12000 PNG, 2.5 MB: ~3 s of banded decoding, time enough to kill its worker
    path = tmp_path / "huge.png"
    write_png(path, 16000, 12000, lambda y, x0, dx: corner_row(16000, y, x0, dx, 3000))
    data = path.read_bytes()
    url = upload(server, data, "huge.png")
    upload_id = url.rsplit("/", 1)[1]
    pid = int(wait_log(server, rf"thumbnail\.job_started upload_id={upload_id} pid=(\d+)")[1])
    os.kill(pid, signal.SIGKILL)
    doc = wait_for(server, url, {"processed", "failed"}, timeout=120)
    assert doc["state"] == "processed", doc
    assert doc["processing"]["attempts"] == 2 and doc["processing"]["error"] is None
    assert doc["image"]["width"] == 16000 and doc["image"]["path"] == "banded"
    assert doc["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    log = server.log()
    assert (f"processing.failed upload_id={upload_id} error=\"WorkerDied: thumbnail worker "
            f"pid={pid} killed by SIGKILL during the job") in log, log
    assert f"thumbnail.worker_retired pid={pid} reason=crashed" in log
    again = re.findall(rf"thumbnail\.job_started upload_id={upload_id} pid=(\d+)", log)
    assert len(again) == 2 and int(again[1]) != pid
    assert log.count(f"processing.done upload_id={upload_id}") == 1
    folder = server.upload_dir / "final" / doc["file"]["path"].rsplit("/", 1)[0]
    assert sorted(p.name for p in folder.rglob("*")) == [
        "huge.png", "thumb-1024.jpg", "thumb-256.jpg", "thumbs", "upload.json"]
    m = scrape(server)
    assert m['tusd_py_thumbnail_workers_restarted_total{reason="crashed"}'] == 1
    assert m['tusd_py_thumbnail_jobs_total{outcome="crashed"}'] == 1
    assert m['tusd_py_thumbnail_jobs_total{outcome="ok"}'] == 1


def test_job_over_the_memory_limit_fails_and_the_pool_serves_the_next(
        start_server: Callable[..., ServerProcess]) -> None:
    # The decode bound is lifted, so the address-space limit is what stops the BMP.
    server = start_server("--processing-memory-mb", "200", "--thumbnail-max-decode-mb", "4000")
    buf = io.BytesIO()
    photo(7000, 7000).save(buf, "BMP")  # 147 MB file; Pillow holds it as 196 MB
    big = buf.getvalue()
    url = upload(server, big, "poster.bmp")
    doc = wait_for(server, url, {"processed", "failed"}, timeout=120)
    assert doc["state"] == "failed", doc
    assert doc["processing"]["attempts"] == 1
    assert doc["processing"]["error"] == (
        f"default/{doc['id']}/poster.bmp: out of memory (over the 200 MB limit)")
    wait_log(server, r"thumbnail\.worker_retired pid=\d+ reason=memory")
    # the next image is served (by a fresh worker)
    small = heic_bytes(photo(600, 400))
    url2 = upload(server, small, "next.heic")
    doc2 = wait_for(server, url2, {"processed", "failed"})
    assert doc2["state"] == "processed", doc2
    assert len(doc2["thumbnails"]) == 2
    assert httpx.get(url, timeout=30).content == big  # the refused bytes stay downloadable
    m = scrape(server)
    assert m['tusd_py_thumbnail_workers_restarted_total{reason="memory"}'] == 1
    assert m['tusd_py_thumbnail_jobs_total{outcome="memory"}'] == 1
    assert m['tusd_py_thumbnail_jobs_total{outcome="ok"}'] == 1


def test_corrupt_heic_fails_with_reason_and_stays_downloadable(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    data = heic_bytes(pattern(800, 600))
    mdat = data.index(b"mdat") + 4
    corrupt = data[:mdat + (len(data) - mdat) // 3]  # the coded image cut short
    url = upload(server, corrupt, "broken.heic")
    doc = wait_for(server, url, {"processed", "failed"})
    assert doc["state"] == "failed", doc
    assert doc["processing"]["attempts"] == 1
    error = doc["processing"]["error"]
    assert error.startswith(f"default/{doc['id']}/broken.heic: corrupt or truncated HEIF "
                            "image ("), error
    assert str(server.upload_dir) not in error
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(corrupt).hexdigest()
    # a bad image is not the worker's fault: it keeps serving
    assert "thumbnail.worker_retired" not in server.log()


def test_workers_are_recycled_after_jobs_per_worker(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--thumbnail-jobs-per-worker", "2")
    urls = []
    for i in range(3):
        urls.append(upload(server, heic_bytes(photo(300 + i, 200)), f"p{i}.heic"))
        assert wait_for(server, urls[-1], {"processed", "failed"})["state"] == "processed"
    log = server.log()
    pids = re.findall(r"thumbnail\.job_started upload_id=\w+ pid=(\d+) job=(\d+)", log)
    assert [j for _, j in pids] == ["1", "2", "1"], pids
    assert pids[0][0] == pids[1][0] != pids[2][0]
    assert f"thumbnail.worker_retired pid={pids[0][0]} reason=recycled jobs=2" in log
    m = scrape(server)
    assert m['tusd_py_thumbnail_workers_restarted_total{reason="recycled"}'] == 1


# --- the pool alone, with a worker that hangs where no alarm reaches it ---------------------

HANGING_WORKER = """
import json, os, signal, sys, time
signal.signal(signal.SIGALRM, signal.SIG_IGN)  # like a codec stuck in C code
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job["path"] == "hang":
        time.sleep(3600)
    if job["path"] == "die":
        os._exit(7)
    print(json.dumps({"id": job["id"], "ok": True, "meta": {}, "rss_mb": 1}), flush=True)
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pool_kills_an_overrunning_worker_and_replaces_it(anyio_backend: str) -> None:
    # A timeout a loaded 2-core machine meets for the quick jobs (0.3 s once was not).
    pool = ThumbnailPool(1, memory_mb=0, timeout=3.0, jobs_per_worker=0, grace=0.5,
                         command=lambda parent: [sys.executable, "-c", HANGING_WORKER])
    before = metrics.thumbnail_workers_restarted.labels("timeout")._value.get()
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        assert (await pool.submit({"path": "ok"}))["ok"]
        with anyio.fail_after(10):
            with pytest.raises(JobTimeout, match=r"ran over 3 s; its worker pid=\d+ was "
                               "killed"):
                await pool.submit({"path": "hang"})
        assert metrics.thumbnail_workers_restarted.labels("timeout")._value.get() == before + 1
        assert (await pool.submit({"path": "ok"}))["ok"]  # a fresh worker
        # 7, or 255 when asyncio's child watcher lost the race to reap it (it says so).
        with pytest.raises(WorkerDied, match=r"exited with status (7|255) during the job"):
            await pool.submit({"path": "die"})
        assert (await pool.submit({"path": "ok"}))["ok"]
        tg.cancel_scope.cancel()
    assert pool.alive == 0
