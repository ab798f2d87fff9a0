"""tusd v2-compatible HTTP hooks: every event, blocking answers, failures and retries."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, free_port

from .helpers import (
    OFFSET_CT,
    TUS,
    assert_error_body,
    b64,
    files_under,
    serve_refusing,
    wait_for,
)

Answer = tuple[int, dict[str, Any]]


@dataclass
class HookReceiver:
    """A real HTTP hook endpoint: records every call, answers with `respond`."""

    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    # The HTTP headers of each hook request, in the order of `calls`.
    headers: list[dict[str, str]] = field(default_factory=list)
    respond: Callable[[dict[str, Any]], Answer] = lambda event: (200, {})
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def record(self, event: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        with self.arrived:
            self.calls.append(event)
            self.headers.append(headers or {})
            self.arrived.notify_all()

    def types(self) -> list[str]:
        return [c["Type"] for c in self.calls]

    def wait_until(self, done: Callable[[list[dict[str, Any]]], bool],
                   timeout: float = 10.0) -> None:
        """Wakes on every call that arrives (no polling)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: done(self.calls), timeout):
                raise AssertionError(f"hooks received: {self.types()}")

    def wait_for(self, hook_type: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        self.wait_until(lambda calls: sum(c["Type"] == hook_type for c in calls) >= count,
                        timeout)
        return [c for c in self.calls if c["Type"] == hook_type][count - 1]


@contextmanager
def running_receiver() -> Iterator[HookReceiver]:
    """A HookReceiver on a real loopback HTTP server, for the `with` block."""
    rec = HookReceiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, body = rec.respond(event)
            rec.record(event, {k.lower(): v for k, v in self.headers.items()})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks"
    try:
        yield rec
    finally:
        httpd.shutdown()


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with running_receiver() as rec:
        yield rec


ALL_EVENTS = "pre-create,post-create,post-receive,pre-finish,post-finish,pre-terminate," \
             "post-terminate"


def hooked(start_server: Callable[..., ServerProcess], url: str, *flags: str,
           events: str = ALL_EVENTS) -> ServerProcess:
    return start_server("--hooks-http", url, "--hooks-enabled-events", events,
                        "--hooks-http-backoff", "0.05", "--no-processing", *flags)


def post(client: httpx.Client, srv: ServerProcess, size: int, **extra: str) -> httpx.Response:
    return client.post(srv.url, headers={**TUS, "Upload-Length": str(size),
                                         "Upload-Metadata": f"filename {b64('a.txt')}",
                                         **extra})


def location(srv: ServerProcess, r: httpx.Response) -> str:
    loc = r.headers["Location"]
    return srv.origin + loc if loc.startswith("/") else loc


def test_every_event_reaches_the_receiver_in_tusd_shape(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    srv = hooked(start_server, receiver.url)
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 5, **{"X-Custom": "yes"})
        assert r.status_code == 201
        url = location(srv, r)
        uid = url.rsplit("/", 1)[-1]
        r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                         content=b"hello")
        assert r.status_code == 204
        assert client.delete(url, headers=TUS).status_code == 204
    pre = receiver.wait_for("pre-create")
    assert pre["Event"]["Upload"]["ID"] is None  # 'Upload ID will be null for pre-create'
    assert pre["Event"]["Upload"]["Size"] == 5
    assert pre["Event"]["Upload"]["MetaData"] == {"filename": "a.txt"}
    assert pre["Event"]["HTTPRequest"]["Method"] == "POST"
    assert pre["Event"]["HTTPRequest"]["URI"] == "/files/"
    assert pre["Event"]["HTTPRequest"]["Header"]["X-Custom"] == ["yes"]
    assert pre["Event"]["HTTPRequest"]["Header"]["Tus-Resumable"] == ["1.0.0"]
    assert pre["Event"]["HTTPRequest"]["RemoteAddr"].startswith("127.0.0.1:")
    assert receiver.wait_for("post-create")["Event"]["Upload"]["ID"] == uid
    received = receiver.wait_for("post-receive")
    assert received["Event"]["Upload"]["Offset"] == 5
    assert received["Event"]["HTTPRequest"]["Method"] == "PATCH"
    assert receiver.wait_for("pre-finish")["Event"]["Upload"]["Offset"] == 5
    assert receiver.wait_for("pre-terminate")["Event"]["Upload"]["ID"] == uid
    assert receiver.wait_for("post-terminate")["Event"]["HTTPRequest"]["Method"] == "DELETE"
    assert receiver.types()[0] == "pre-create"  # 'pre-create will always be the first hook'


def test_pre_create_rejection_is_sent_as_the_hook_chose(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (200, {
        "RejectUpload": True,
        "HTTPResponse": {"StatusCode": 403, "Body": '{"message":"quota exceeded"}',
                         "Header": {"Content-Type": "application/json", "X-Quota": "0"}}})
    srv = hooked(start_server, receiver.url)
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 5)
    assert r.status_code == 403
    assert r.json() == {"message": "quota exceeded"}
    assert r.headers["X-Quota"] == "0"
    assert r.headers["Content-Type"].startswith("application/json")
    assert "Location" not in r.headers
    assert not [p for p in files_under(srv.upload_dir) if "final" not in p.parts]
    assert "post-create" not in receiver.types()


def test_pre_create_changes_id_and_metadata(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (200, {"ChangeFileInfo": {
        "ID": "project-42_scan-7", "MetaData": {"filename": "renamed.tif", "owner": "ops"}}}
        if event["Type"] == "pre-create" else {})
    srv = hooked(start_server, receiver.url)
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 3)
        assert r.status_code == 201
        url = location(srv, r)
        assert url.endswith("/files/project-42_scan-7")
        h = client.head(url, headers=TUS)
        assert h.status_code == 200
        meta = dict(pair.split(" ") for pair in h.headers["Upload-Metadata"].split(","))
        assert meta == {"filename": b64("renamed.tif"), "owner": b64("ops")}
        # The same id again would collide: the server refuses rather than overwrite.
        r = post(client, srv, 3)
        assert r.status_code == 500
        assert "exists" in r.text


def test_pre_create_with_an_unsafe_id_is_refused(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (200, {"ChangeFileInfo": {"ID": "../../etc/passwd"}})
    srv = hooked(start_server, receiver.url)
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 3)
    assert r.status_code == 500
    assert_error_body(r)
    assert not (srv.upload_dir.parent / "etc").exists()


def test_a_hook_that_is_down_fails_creation_closed(
        start_server: Callable[..., ServerProcess]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hooks"
    srv = hooked(start_server, dead, "--hooks-http-retry", "1")
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 3)
    assert r.status_code == 500
    assert r.text.startswith("ERR_HOOK_FAILED: pre-create hook unreachable")
    assert_error_body(r)
    assert not [p for p in files_under(srv.upload_dir) if "final" not in p.parts]
    assert "hook.failed" in srv.log()


def test_a_4xx_answer_fails_creation_without_retries(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (403, {})
    srv = hooked(start_server, receiver.url, "--hooks-http-retry", "3", events="pre-create")
    with httpx.Client(timeout=10) as client:
        r = post(client, srv, 3)
    assert r.status_code == 500
    assert r.text.startswith("ERR_HOOK_FAILED: pre-create hook failed: pre-create hook "
                             "answered HTTP 403")
    assert len(receiver.calls) == 1
    assert_error_body(r)
    assert not [p for p in files_under(srv.upload_dir) if "final" not in p.parts]
    assert "hook.failed" in srv.log()


def test_5xx_answers_are_retried(start_server: Callable[..., ServerProcess],
                                 receiver: HookReceiver) -> None:
    attempts: list[int] = []

    def flaky(event: dict[str, Any]) -> Answer:
        attempts.append(1)
        return (503, {}) if len(attempts) < 3 else (200, {})

    receiver.respond = flaky
    srv = hooked(start_server, receiver.url, "--hooks-http-retry", "3",
                 events="pre-create")
    with httpx.Client(timeout=10) as client:
        assert post(client, srv, 3).status_code == 201
    assert len(attempts) == 3


def test_pre_finish_shapes_the_last_response(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (200, {"HTTPResponse": {
        "StatusCode": 200, "Body": '{"url":"https://cdn.example/x"}',
        "Header": {"Content-Type": "application/json"}}} if event["Type"] == "pre-finish"
        else {})
    srv = hooked(start_server, receiver.url, events="pre-finish")
    with httpx.Client(timeout=10) as client:
        url = location(srv, post(client, srv, 4))
        h = {**TUS, "Content-Type": OFFSET_CT}
        first = client.patch(url, headers={**h, "Upload-Offset": "0"}, content=b"ab")
        assert first.status_code == 204  # not finished yet: no pre-finish
        last = client.patch(url, headers={**h, "Upload-Offset": "2"}, content=b"cd")
    assert last.status_code == 200
    assert last.json() == {"url": "https://cdn.example/x"}
    assert last.headers["Upload-Offset"] == "4"
    assert receiver.types() == ["pre-finish"]


def test_pre_terminate_can_refuse_and_fails_closed(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    receiver.respond = lambda event: (200, {"RejectTermination": True, "HTTPResponse": {
        "StatusCode": 409, "Body": "ERR_KEEP: this upload is under legal hold"}})
    srv = hooked(start_server, receiver.url, events="pre-terminate")
    with httpx.Client(timeout=10) as client:
        url = location(srv, post(client, srv, 3))
        r = client.delete(url, headers=TUS)
        assert r.status_code == 409
        assert r.text == "ERR_KEEP: this upload is under legal hold"
        assert client.head(url, headers=TUS).status_code == 200
    dead = f"http://127.0.0.1:{free_port()}/hooks"
    srv2 = hooked(start_server, dead, "--hooks-http-retry", "0", events="pre-terminate")
    with httpx.Client(timeout=10) as client:
        url = location(srv2, post(client, srv2, 3))
        r = client.delete(url, headers=TUS)
        assert r.status_code == 500  # tusd answers a failed blocking hook with 500
        assert client.head(url, headers=TUS).status_code == 200


def test_only_enabled_events_are_sent(start_server: Callable[..., ServerProcess],
                                      receiver: HookReceiver) -> None:
    srv = hooked(start_server, receiver.url, events="post-terminate")
    with httpx.Client(timeout=10) as client:
        url = location(srv, post(client, srv, 2))
        client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                     content=b"ok")
        assert client.delete(url, headers=TUS).status_code == 204
    receiver.wait_for("post-terminate")
    # post-create and post-receive would have been queued before post-terminate.
    wait_for(lambda: "type=post-terminate" in srv.log())
    assert srv.log().count("hook.sent") == 1, srv.log()
    assert receiver.types() == ["post-terminate"]


def processed(srv: ServerProcess, client: httpx.Client, url: str) -> dict[str, Any]:
    """The upload's JSON once processing ended: waits on the server's log event."""
    uid = url.rsplit("/", 1)[-1]
    wait_for(lambda: f"processing.done upload_id={uid}" in srv.log(), timeout=30)
    doc: dict[str, Any] = client.get(f"{srv.origin}/api/uploads/{uid}").json()
    return doc


def upload_whole(client: httpx.Client, srv: ServerProcess, data: bytes) -> str:
    url = location(srv, post(client, srv, len(data)))
    r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                     content=data)
    assert r.status_code == 204
    return url


def test_with_processing_a_disabled_post_finish_is_never_sent(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    """The completion worker uses the process's one hook sender and its event set
    (it once built its own sender that sent post-finish whatever was enabled)."""
    srv = start_server("--hooks-http", receiver.url, "--hooks-enabled-events",
                       "pre-create,post-terminate")
    with httpx.Client(timeout=10) as client:
        url = upload_whole(client, srv, b"finished bytes")
        assert processed(srv, client, url)["state"] == "processed"
        assert client.delete(url, headers=TUS).status_code == 204
    receiver.wait_for("post-terminate")  # the marker: a later event has arrived
    assert receiver.types() == ["pre-create", "post-terminate"]
    assert "type=post-finish" not in srv.log()


def test_with_processing_post_finish_is_retried_as_configured(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    attempts: list[str] = []

    def flaky(event: dict[str, Any]) -> Answer:
        attempts.append(event["Type"])
        return (503, {}) if len(attempts) < 3 else (200, {})

    receiver.respond = flaky
    srv = start_server("--hooks-http", receiver.url, "--hooks-enabled-events", "post-finish",
                       "--hooks-http-retry", "2", "--hooks-http-backoff", "0.05")
    with httpx.Client(timeout=10) as client:
        url = upload_whole(client, srv, b"finished bytes")
        assert processed(srv, client, url)["state"] == "processed"
    finish = receiver.wait_for("post-finish", count=3)
    assert attempts == ["post-finish"] * 3  # the first try and --hooks-http-retry 2
    assert finish["TusdPy"]["state"] == "processed"
    assert finish["Event"]["Upload"]["Storage"]["Type"] == "filestore"

    receiver.calls.clear()
    attempts.clear()
    receiver.respond = lambda event: (attempts.append(event["Type"]) or (503, {}))  # type: ignore[func-returns-value]
    srv2 = start_server("--hooks-http", receiver.url, "--hooks-enabled-events", "post-finish",
                        "--hooks-http-retry", "1", "--hooks-http-backoff", "0.05")
    with httpx.Client(timeout=10) as client:
        url = upload_whole(client, srv2, b"other bytes")
        processed(srv2, client, url)
    wait_for(lambda: "hook.gave_up" in srv2.log(), timeout=10)
    assert attempts == ["post-finish"] * 2


def test_unknown_hook_event_refuses_to_start(tmp_path: Path) -> None:
    proc = serve_refusing(tmp_path, "--hooks-http", "http://127.0.0.1:9/",
                          "--hooks-enabled-events", "pre-create,bogus")
    assert proc.returncode == 2
    assert "unknown hook events: bogus" in proc.stderr


def test_post_receive_reports_progress_during_one_patch(
        start_server: Callable[..., ServerProcess], receiver: HookReceiver) -> None:
    srv = hooked(start_server, receiver.url, events="post-receive")

    chunk = (1 << 20) + 1  # over the 1 MiB write buffer: each one is written at once
    total = 4 * chunk

    def slow_body() -> Iterator[bytes]:
        for _ in range(4):
            yield b"p" * chunk
            time.sleep(1.2)  # past the 2 s checkpoint interval mid-body

    with httpx.Client(timeout=20) as client:
        url = location(srv, post(client, srv, total))
        r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                         content=slow_body())
        assert r.status_code == 204
    receiver.wait_until(lambda calls: [c["Event"]["Upload"]["Offset"] for c in calls][-1:]
                        == [total])
    offsets = [c["Event"]["Upload"]["Offset"] for c in receiver.calls]
    assert offsets == sorted(offsets) and 0 < offsets[0] < total, offsets
    assert all(c["Event"]["HTTPRequest"]["Method"] == "PATCH" for c in receiver.calls)
