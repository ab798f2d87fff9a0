"""The completion pipeline end to end: real server, real clients, real files, both backends."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from tusclient import client as tus_client

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import LogWatch

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=["embedded", "redis"])
def pipeline_server(request: pytest.FixtureRequest,
                    start_server: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """start(*flags): a server on the embedded store or on Redis."""

    def start(*flags: str, upload_dir: Path | None = None) -> ServerProcess:
        if request.param == "redis":
            flags = ("--redis-url", request.getfixturevalue("redis_url"), *flags)
        return start_server(*flags, upload_dir=upload_dir)

    return start


def upload(server: ServerProcess, data: bytes, filename: str, **meta: str) -> str:
    import base64

    pairs = {"filename": filename, **meta}
    header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(data)),
                                        "Upload-Metadata": header,
                                        "Content-Type": "application/offset+octet-stream"},
                   content=data, timeout=60)
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def api(server: ServerProcess, url: str) -> dict[str, Any]:
    r = httpx.get(f"{server.origin}/api/uploads/{url.rsplit('/', 1)[1]}", timeout=10)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


# The event each processing state is entered with (logged once the record says so).
_ENTERED_WITH = {"processing": r"processing\.started", "processed": r"processing\.done",
                 "failed": r"processing\.failed(?=.*\bwill_retry=False\b)"}


def wait_for(server: ServerProcess, url: str, states: set[str], timeout: float = 60.0,
             count: int = 1, log: ServerProcess | Path | None = None) -> dict[str, Any]:
    """The upload's record once it has entered one of `states` (`count` times), waiting for
    the event that puts it there in the log of `log` (the server's by default)."""
    uid = url.rsplit("/", 1)[1]
    either = "|".join(_ENTERED_WITH[state] for state in sorted(states))
    LogWatch(log or server, from_start=True).wait(
        rf"\s(?:{either})\s.*\bupload_id={uid}\b", count=count, timeout=timeout)
    doc = api(server, url)
    assert doc["state"] in states, doc
    return doc


def tiff_bytes(tmp_path: Path, size: tuple[int, int], compression: str = "raw") -> Path:
    path = tmp_path / f"scan-{size[0]}x{size[1]}.tif"
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.save(path, compression=None if compression == "raw" else compression)
    return path


def count_events(server: ServerProcess, event: str, upload_id: str) -> int:
    return sum(1 for line in server.log().splitlines()
               if f" {event} " in line and upload_id in line)


def test_plain_file_is_finalized_and_stays_downloadable(
        pipeline_server: Callable[..., ServerProcess]) -> None:
    server = pipeline_server("--namespace-key", "project")
    data = b"hello, final layout\n" * 1000
    url = upload(server, data, "../../notes v1.txt", project="Mars Rover")
    doc = wait_for(server, url, {"processed", "failed"})
    assert doc["state"] == "processed", doc
    assert doc["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["file"]["path"] == f"Mars Rover/{doc['id']}/_.._notes v1.txt"
    final = server.upload_dir / "final" / doc["file"]["path"]
    assert final.read_bytes() == data
    assert doc["image"] is None and doc["thumbnails"] == []
    assert doc["processing"]["attempts"] == 1 and doc["processing"]["error"] is None
    assert doc["completed_at"] and doc["processing"]["finished_at"]
    # tus-js-client HEADs after a lost final response: moving must not make that a 404.
    head = httpx.head(url, headers=TUS)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(data))
    assert httpx.get(url).content == data
    assert json.loads((final.parent / "upload.json").read_text())["file"]["sha256"] == \
        doc["file"]["sha256"]
    for stage in ("upload.completed", "processing.started", "processing.moved",
                  "processing.done"):
        assert count_events(server, stage, doc["id"]) == 1, stage
    assert httpx.delete(url, headers=TUS).status_code == 204
    assert not final.exists()


def test_tiff_via_tuspy_gets_thumbnails(pipeline_server: Callable[..., ServerProcess],
                                        tmp_path: Path) -> None:
    server = pipeline_server()
    path = tiff_bytes(tmp_path, (3000, 2000), "tiff_lzw")
    uploader = tus_client.TusClient(server.url).uploader(
        str(path), chunk_size=1 << 20, metadata={"filename": "scan.tif"})
    uploader.upload()
    doc = wait_for(server, uploader.url, {"processed", "failed"})
    assert doc["state"] == "processed", doc
    assert doc["image"]["width"] == 3000 and doc["image"]["height"] == 2000
    assert doc["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    sizes = {t["name"]: (t["width"], t["height"]) for t in doc["thumbnails"]}
    assert sizes == {"thumb-256.jpg": (256, 171), "thumb-1024.jpg": (1024, 683)}, sizes
    for thumb in doc["thumbnails"]:
        r = httpx.get(server.origin + thumb["url"])
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        with Image.open(__import__("io").BytesIO(r.content)) as img:
            assert img.size == (thumb["width"], thumb["height"])
        again = httpx.get(server.origin + thumb["url"],
                          headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304
    assert count_events(server, "processing.image", doc["id"]) == 1


def test_corrupt_tiff_fails_with_reason_and_stays_downloadable(
        pipeline_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = pipeline_server()
    good = tiff_bytes(tmp_path, (800, 600)).read_bytes()
    corrupt = good[: len(good) // 3]  # header says more strips than there are bytes
    url = upload(server, corrupt, "broken.tif")
    doc = wait_for(server, url, {"processed", "failed"})
    assert doc["state"] == "failed", doc
    assert "broken.tif" in doc["processing"]["error"]
    assert doc["processing"]["attempts"] == 1  # permanent: not retried
    assert httpx.get(url).content == corrupt
    assert count_events(server, "processing.failed", doc["id"]) == 1
    # Reprocessing on request runs the job again (and fails the same way).
    r = httpx.post(f"{server.origin}/api/uploads/{doc['id']}/reprocess")
    assert r.status_code == 202
    doc = wait_for(server, url, {"processed", "failed"}, count=2)
    assert doc["state"] == "failed" and count_events(server, "processing.failed",
                                                     doc["id"]) == 2


def test_zero_length_and_concatenation_are_processed_once_partials_never(
        pipeline_server: Callable[..., ServerProcess]) -> None:
    server = pipeline_server()
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": "0"})
    empty = r.headers["Location"]
    parts = []
    for chunk in (b"first half|", b"second half"):
        r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(chunk)),
                                            "Upload-Concat": "partial",
                                            "Content-Type": "application/offset+octet-stream"},
                       content=chunk)
        assert r.status_code == 201
        parts.append(r.headers["Location"])
    r = httpx.post(server.url, headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})
    final = r.headers["Location"]
    for url in (empty, final):
        doc = wait_for(server, url, {"processed", "failed"})
        assert doc["state"] == "processed", doc
        assert count_events(server, "processing.started", doc["id"]) == 1
    assert api(server, final)["file"]["sha256"] == hashlib.sha256(
        b"first half|second half").hexdigest()
    # No sleep: the final's job was queued after the partials completed, so a job for
    # a partial (were one queued) would have been taken before it.
    for url in parts:
        doc = api(server, url)
        assert doc["state"] == "completed" and doc["file"] is None
        assert count_events(server, "processing.started", doc["id"]) == 0


def test_server_killed_mid_processing_finishes_once_after_restart(
        pipeline_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    server = pipeline_server(upload_dir=shared)
    path = tiff_bytes(tmp_path, (9000, 6000))  # ~160 MB: thumbnailing takes a while
    url = upload(server, path.read_bytes(), "big.tif")
    wait_for(server, url, {"processing"})
    server.kill()
    server.start()
    doc = wait_for(server, url, {"processed", "failed"}, timeout=120)
    assert doc["state"] == "processed", doc
    assert doc["processing"]["attempts"] == 2
    folder = shared / "final" / doc["file"]["path"].rsplit("/", 1)[0]
    names = sorted(p.name for p in folder.rglob("*"))
    assert names == ["big.tif", "thumb-1024.jpg", "thumb-256.jpg", "thumbs", "upload.json"]


def test_head_stays_fast_while_a_big_tiff_is_processed(
        pipeline_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = pipeline_server()
    other = upload(server, b"x" * 10, "small.bin")
    path = tiff_bytes(tmp_path, (9000, 6000))
    url = upload(server, path.read_bytes(), "big.tif")
    wait_for(server, url, {"processing"})
    worst = 0.0
    while api(server, url)["state"] == "processing":
        started = time.monotonic()
        assert httpx.head(other, headers=TUS).status_code == 200
        worst = max(worst, time.monotonic() - started)
    print(f"worst HEAD latency while processing: {worst * 1000:.1f} ms")
    assert worst < 1.0  # the event loop was never blocked by the image work


class _HookReceiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    arrived = threading.Condition()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with _HookReceiver.arrived:
            _HookReceiver.received.append(json.loads(body))
            _HookReceiver.arrived.notify_all()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    _HookReceiver.received = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _HookReceiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hooks"
    httpd.shutdown()


def test_post_finish_hook_gets_tusd_shaped_json(
        pipeline_server: Callable[..., ServerProcess], hook_url: str) -> None:
    server = pipeline_server("--hooks-http", hook_url)
    url = upload(server, b"hooked", "h.txt")
    doc = wait_for(server, url, {"processed"})

    def finished() -> list[dict[str, Any]]:
        return [e for e in _HookReceiver.received if e["Type"] == "post-finish"]

    with _HookReceiver.arrived:
        _HookReceiver.arrived.wait_for(finished, timeout=10)
    (event,) = finished()
    # The default events are tusd's: creation and progress were announced too.
    assert {"pre-create", "post-create", "post-receive"} <= {
        e["Type"] for e in _HookReceiver.received}
    assert event["Event"]["Upload"]["ID"] == doc["id"]
    assert event["Event"]["Upload"]["MetaData"] == {"filename": "h.txt"}
    assert event["Event"]["Upload"]["Size"] == 6
    assert event["TusdPy"]["state"] == "processed"
    assert event["TusdPy"]["file"]["sha256"] == hashlib.sha256(b"hooked").hexdigest()


def test_separate_worker_processes_what_the_server_queues(
        start_server: Callable[..., ServerProcess], redis_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    shared = tmp_path / "shared"
    server = start_server("--redis-url", redis_url, "--no-processing", upload_dir=shared)
    url = upload(server, b"processed elsewhere", "w.txt")
    assert api(server, url)["state"] == "completed"  # the server itself does not process
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tusd_py", "worker", "--redis-url", redis_url,
         "--upload-dir", str(shared)], stdout=log, stderr=subprocess.STDOUT)
    try:
        doc = wait_for(server, url, {"processed", "failed"}, log=tmp_path / "worker.log")
    finally:
        worker.terminate()
        worker.wait(10)
    assert doc["state"] == "processed", (tmp_path / "worker.log").read_text()
    assert (shared / "final" / doc["file"]["path"]).read_bytes() == b"processed elsewhere"
    assert f"processing.done upload_id={doc['id']}" in (tmp_path / "worker.log").read_text()
    # The worker's run is the only one: the server never started one of its own.
    assert count_events(server, "processing.started", doc["id"]) == 0


def test_worker_refuses_the_embedded_store(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tusd_py", "worker", "--upload-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "needs --redis-url" in done.stderr
