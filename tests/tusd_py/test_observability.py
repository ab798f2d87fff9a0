"""/metrics under tusd's names, /readyz, request ids and JSON logs."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, ServerProcess

from .helpers import (
    OFFSET_CT,
    TUS,
    LogWatch,
    absolute,
    b64,
    event_re,
    upload_id,
    wait_for,
    wait_log,
)


def scrape(client: httpx.Client, srv: ServerProcess) -> dict[str, float]:
    r = client.get(srv.origin + "/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def upload(client: httpx.Client, srv: ServerProcess, data: bytes,
           headers: dict[str, str] | None = None) -> str:
    r = client.post(srv.url, headers={**TUS, "Upload-Length": str(len(data)),
                                      "Upload-Metadata": f"filename {b64('m.txt')}",
                                      **(headers or {})})
    assert r.status_code == 201
    url = absolute(srv, r.headers["Location"])
    r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0",
                                   **(headers or {})}, content=data)
    assert r.status_code == 204
    return url


def test_metrics_count_what_happened(server: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        before = scrape(client, server)
        uid = upload_id(upload(client, server, b"x" * 1000))
        doomed = client.post(server.url, headers={**TUS, "Upload-Length": "5"})
        assert client.head(server.url + "0" * 32, headers=TUS).status_code == 404
        assert client.delete(absolute(server, doomed.headers["Location"]),
                             headers=TUS).status_code == 204
        wait_log(server, event_re("processing.done", uid))  # counted before it is logged
        after = scrape(client, server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("tusd_uploads_created") == 2
    assert delta("tusd_uploads_terminated") == 1
    assert delta("tusd_uploads_finished") == 1
    assert delta("tusd_bytes_received") == 1000
    assert delta('tusd_requests_total{method="PATCH"}') == 1
    assert delta('tusd_requests_total{method="POST"}') == 2
    assert delta('tusd_errors_total{code="ERR_UPLOAD_NOT_FOUND",status="404"}') == 1
    assert "tusd_connections_open" in after
    assert after['tusd_py_processing_jobs_total{outcome="processed"}'] >= 1
    assert after["tusd_py_processing_seconds_count"] >= 1
    assert "tusd_py_processing_queue_depth" in after


def test_request_ids_are_returned_and_logged(server: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.post(server.url, headers={**TUS, "Upload-Length": "3",
                                             "X-Request-ID": "trace-abc.123"})
        assert r.headers["X-Request-ID"] == "trace-abc.123"
        uid = r.headers["Location"].rsplit("/", 1)[-1]
        forged = client.head(server.url + uid,
                             headers={**TUS, "X-Request-ID": 'x" injected=1'})
        assert re.fullmatch(r"[0-9a-f]{16}", forged.headers["X-Request-ID"])
        generated = client.options(server.url).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{16}", generated)
    # request.done is logged once the answer is out: wait for each line, no sleep.
    log = LogWatch(server, from_start=True)
    log.wait(rf"\supload\.created\s.*\bupload_id={uid}\b.*\brequest_id=trace-abc\.123\b")
    log.wait(r"\srequest\.done\s(?=.*\bmethod=POST\b)(?=.*\bstatus=201\b)"
             r".*\brequest_id=trace-abc\.123\b")
    log.wait(rf"\srequest\.done\s(?=.*\bupload_id={uid}\b)(?=.*\bmethod=HEAD\b)"
             r".*\bstatus=200\b")


def test_json_logs_carry_upload_and_request_ids(
        start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--log-format", "json", "--no-processing")
    with httpx.Client(timeout=10) as client:
        upload(client, srv, b"json", {"X-Request-ID": "req-json-1"})
    LogWatch(srv, from_start=True).wait(r'"event": "upload\.completed".*"request_id": "req-json-1"')
    events = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    stages = {e["event"] for e in events if e.get("request_id") == "req-json-1"}
    assert {"upload.created", "upload.completed"} <= stages, stages
    assert all("upload_id" in e for e in events if e["event"] == "upload.completed")


def test_readyz_reports_a_lost_redis(start_server: Callable[..., ServerProcess],
                                     redis_server: RedisServer) -> None:
    srv = start_server("--redis-url", redis_server.url, "--no-processing")
    with httpx.Client(timeout=15) as client:
        assert client.get(srv.origin + "/readyz").status_code == 200
        redis_server.stop()
        try:
            r = client.get(srv.origin + "/readyz")
            assert r.status_code == 503
            assert r.text.startswith("state store unavailable")
            assert client.get(srv.origin + "/healthz").status_code == 200  # still alive
        finally:
            redis_server.start()
        # No event marks "reconnected": poll the external state through the shared helper.
        assert wait_for(lambda: client.get(srv.origin + "/readyz").status_code == 200,
                        timeout=10), "never ready again after Redis came back"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "vol"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_readyz_reports_a_full_upload_volume(
        start_server: Callable[..., ServerProcess], tmpfs: Path) -> None:
    srv = start_server("--no-processing", upload_dir=tmpfs / "data")
    with httpx.Client(timeout=10) as client:
        assert client.get(srv.origin + "/readyz").status_code == 200
        ballast = tmpfs / "ballast"
        with ballast.open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        r = client.get(srv.origin + "/readyz")
        assert r.status_code == 503
        assert r.text == "upload dir not writable: No space left on device\n"
        ballast.unlink()
        assert client.get(srv.origin + "/readyz").status_code == 200
