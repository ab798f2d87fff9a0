"""The other kinds of tusd hook, each through the one sender: a hooks dir of executables,
gRPC (tusd's hook.proto), an in-process Python object; post-receive's StopUpload and
--progress-hooks-interval; --hooks-http-forward-headers."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.conftest import ServerProcess
from tusd_py.hooks.proto import event_document, messages, response_message

from .helpers import OFFSET_CT, TUS, b64, files_under, serve_refusing, wait_for
from .test_hooks import ALL_EVENTS, location, post, running_receiver

PRE_CREATE = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    event = json.load(sys.stdin)
    meta = event["Event"]["Upload"]["MetaData"]
    print("checked", meta.get("filename"), file=sys.stderr)
    if meta.get("filename") == "virus.exe":
        print(json.dumps({{"RejectUpload": True}}))
    elif meta.get("filename") == "crash.txt":
        print("not today")
        sys.exit(3)
    elif meta.get("filename") == "quiet.txt":
        pass  # no output: no changes
    else:
        print(json.dumps({{"ChangeFileInfo": {{"MetaData": {{
            "filename": "renamed-" + meta["filename"], "size_seen": os.environ["TUS_SIZE"],
            "cwd": os.path.basename(os.getcwd())}}}}}}))
    """)


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hookscripts"
    folder.mkdir()
    script = folder / "pre-create"
    script.write_text(PRE_CREATE.format(python=sys.executable))
    script.chmod(0o755)
    return folder


def metadata_of(client: httpx.Client, url: str) -> dict[str, str]:
    h = client.head(url, headers=TUS)
    assert h.status_code == 200
    return dict(pair.split(" ") for pair in h.headers["Upload-Metadata"].split(","))


def create(client: httpx.Client, srv: ServerProcess, size: int, filename: str,
           **headers: str) -> httpx.Response:
    return client.post(srv.url, headers={**TUS, "Upload-Length": str(size),
                                         "Upload-Metadata": f"filename {b64(filename)}",
                                         **headers})


# --- file hooks ---------------------------------------------------------------------------
def test_hooks_dir_rejects_and_changes_creations(
        start_server: Callable[..., ServerProcess], hooks_dir: Path) -> None:
    srv = start_server("--hooks-dir", str(hooks_dir), "-hooks-enabled-events",
                       ALL_EVENTS, "--no-processing")
    with httpx.Client(timeout=10) as client:
        r = create(client, srv, 5, "virus.exe")
        # tusd's ErrUploadRejectedByServer, exactly.
        assert r.status_code == 400
        assert r.text == "ERR_UPLOAD_REJECTED: upload creation has been rejected by server\n"
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "Location" not in r.headers

        r = create(client, srv, 5, "report.pdf")
        assert r.status_code == 201
        url = location(srv, r)
        assert metadata_of(client, url) == {"filename": b64("renamed-report.pdf"),
                                            "size_seen": b64("5"), "cwd": b64("hookscripts")}
        # No executable for the other events: no hook for them, the upload goes on.
        r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                         content=b"hello")
        assert r.status_code == 204

        r = create(client, srv, 5, "quiet.txt")
        assert r.status_code == 201
        assert metadata_of(client, location(srv, r)) == {"filename": b64("quiet.txt")}

        r = create(client, srv, 5, "crash.txt")
        assert r.status_code == 500  # tusd: a failing blocking hook is a 500
        assert r.text.startswith("ERR_HOOK_FAILED: pre-create hook failed: ")
        assert "exited with status 3: not today" in r.text
    log = srv.log()
    assert "hook.stderr" in log and "checked report.pdf" in log and "checked crash.txt" in log
    uploads = [p for p in files_under(srv.upload_dir)
               if p.parent.name == "uploads" and not p.suffix]
    assert len(uploads) == 2  # report.pdf and quiet.txt


def test_a_file_hook_that_hangs_is_killed(start_server: Callable[..., ServerProcess],
                                          tmp_path: Path) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "pre-create").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    (folder / "pre-create").chmod(0o755)
    srv = start_server("--hooks-dir", str(folder), "--hooks-timeout", "0.5")
    with httpx.Client(timeout=10) as client:
        started = time.monotonic()
        r = create(client, srv, 5, "a.txt")
    assert r.status_code == 500
    assert "ran longer than 0.5s and was killed" in r.text
    assert time.monotonic() - started < 5


def test_several_kinds_of_hook_refuse_to_start(tmp_path: Path, hooks_dir: Path) -> None:
    proc = serve_refusing(tmp_path / "data", "--hooks-http", "http://127.0.0.1:9/",
                          "-hooks-dir", str(hooks_dir))
    assert proc.returncode == 2
    assert "one kind of hook at a time: --hooks-http and --hooks-dir were given" in proc.stderr
    proc = serve_refusing(tmp_path / "data", "--hooks-dir", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr


# --- gRPC hooks ---------------------------------------------------------------------------
class GrpcReceiver:
    """A gRPC HookHandler server (tusd's proto), recording events as tusd's JSON."""

    def __init__(self, respond: Callable[[dict[str, Any]], dict[str, Any]],
                 tls: tuple[bytes, bytes] | None = None) -> None:
        self.respond = respond
        self.calls: list[dict[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self.arrived = threading.Condition()
        proto = messages()

        def invoke(request: Any, context: grpc.ServicerContext) -> Any:
            event = event_document(request)
            answer = self.respond(event)
            with self.arrived:
                self.calls.append(event)
                self.metadata.append(dict(context.invocation_metadata()))
                self.arrived.notify_all()
            return response_message(answer)

        handler = grpc.method_handlers_generic_handler("proto.HookHandler", {
            "InvokeHook": grpc.unary_unary_rpc_method_handler(
                invoke, request_deserializer=proto.HookRequest.FromString,
                response_serializer=lambda m: m.SerializeToString())})
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((handler,))
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port(
                "127.0.0.1:0", grpc.ssl_server_credentials([(tls[1], tls[0])]))
        self.server.start()

    def wait_for(self, hook_type: str, timeout: float = 20.0) -> dict[str, Any]:
        with self.arrived:
            if not self.arrived.wait_for(
                    lambda: any(c["Type"] == hook_type for c in self.calls), timeout):
                raise AssertionError(f"received: {[c['Type'] for c in self.calls]}")
            return next(c for c in self.calls if c["Type"] == hook_type)


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver(lambda event: {})
    yield receiver
    receiver.server.stop(None)


def test_grpc_hooks_get_every_event_and_their_answers_count(
        start_server: Callable[..., ServerProcess], grpc_receiver: GrpcReceiver) -> None:
    def respond(event: dict[str, Any]) -> dict[str, Any]:
        if event["Type"] == "pre-create":
            return {"ChangeFileInfo": {"ID": "grpc-upload-1",
                                       "MetaData": {"filename": "from-grpc.txt"}},
                    "HTTPResponse": {"Header": {"X-Hooked": "grpc"}}}
        if event["Type"] == "pre-finish":
            return {"HTTPResponse": {"StatusCode": 200, "Body": '{"done":true}',
                                     "Header": {"Content-Type": "application/json"}}}
        return {}

    grpc_receiver.respond = respond
    srv = start_server("--hooks-grpc", f"127.0.0.1:{grpc_receiver.port}",
                       "--hooks-enabled-events", ALL_EVENTS,
                       "--hooks-grpc-forward-headers", "Authorization")
    with httpx.Client(timeout=10) as client:
        r = create(client, srv, 5, "a.txt", Authorization="Bearer abc")
        assert r.status_code == 201
        assert r.headers["X-Hooked"] == "grpc"
        url = location(srv, r)
        assert url.endswith("/files/grpc-upload-1")
        assert metadata_of(client, url) == {"filename": b64("from-grpc.txt")}
        r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                         content=b"hello")
        assert r.status_code == 200
        assert r.json() == {"done": True}
        grpc_receiver.wait_for("post-finish")  # after processing
        assert client.delete(url, headers=TUS).status_code == 204
    grpc_receiver.wait_for("post-terminate")
    assert {c["Type"] for c in grpc_receiver.calls} == set(ALL_EVENTS.split(","))
    pre = grpc_receiver.wait_for("pre-create")
    assert pre["Event"]["Upload"]["ID"] == ""  # the proto has no null
    assert pre["Event"]["Upload"]["Size"] == 5
    assert pre["Event"]["HTTPRequest"]["Header"]["Authorization"] == "Bearer abc"
    assert grpc_receiver.metadata[0]["authorization"] == "Bearer abc"  # forwarded
    created = grpc_receiver.wait_for("post-create")
    assert created["Event"]["Upload"]["Storage"] == {
        "Type": "filestore", "Path": str(srv.upload_dir.resolve() / "uploads" / "grpc-upload-1")}
    received = grpc_receiver.wait_for("post-receive")
    assert received["Event"]["Upload"]["Offset"] == 5
    assert received["Event"]["HTTPRequest"]["Method"] == "PATCH"


def test_grpc_unavailable_is_retried_then_fails_closed(
        start_server: Callable[..., ServerProcess], grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.server.stop(None)
    srv = start_server("--hooks-grpc", f"127.0.0.1:{grpc_receiver.port}",
                       "--hooks-grpc-retry", "2", "--hooks-grpc-backoff", "0.05",
                       "--hooks-enabled-events", "pre-create")
    with httpx.Client(timeout=20) as client:
        r = create(client, srv, 5, "a.txt")
    assert r.status_code == 500
    assert r.text.startswith("ERR_HOOK_FAILED: pre-create hook unreachable: gRPC UNAVAILABLE")
    assert srv.log().count("hook.failed") == 3


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_grpc_hooks_over_tls(start_server: Callable[..., ServerProcess],
                             tmp_path: Path) -> None:
    cert, key = self_signed()
    (tmp_path / "server.pem").write_bytes(cert)
    receiver = GrpcReceiver(lambda event: {"RejectUpload": True, "HTTPResponse": {
        "StatusCode": 403, "Body": "refused over TLS"}}, tls=(cert, key))
    try:
        srv = start_server("--hooks-grpc", f"127.0.0.1:{receiver.port}", "-hooks-grpc-secure",
                           "-hooks-grpc-server-tls-certificate", str(tmp_path / "server.pem"),
                           "--hooks-enabled-events", "pre-create")
        with httpx.Client(timeout=10) as client:
            r = create(client, srv, 5, "a.txt")
        assert r.status_code == 403
        assert r.text == "refused over TLS"
        assert receiver.wait_for("pre-create")["Event"]["Upload"]["Size"] == 5
    finally:
        receiver.server.stop(None)
    proc = serve_refusing(tmp_path / "data", "--hooks-grpc", "127.0.0.1:1",
                          "--hooks-grpc-secure")
    assert proc.returncode == 2
    assert "hooks-grpc-server-tls-certificate is missing" in proc.stderr


# --- Python hooks: StopUpload -------------------------------------------------------------
STOPPER = textwrap.dedent("""\
    class Stopper:
        async def post_receive(self, event):
            upload = event["Event"]["Upload"]
            if upload["MetaData"].get("filename") == "unpaid.bin" and upload["Offset"] > 0:
                return {"StopUpload": True, "HTTPResponse": {
                    "StatusCode": 402, "Body": "upload is stopped because you didn't pay",
                    "Header": {"X-Foo": "bar"}}}
            return None

        def pre_create(self, event):
            if event["Event"]["Upload"]["MetaData"].get("filename") == "boom.bin":
                raise RuntimeError("no such bucket")
            return None
    """)


@pytest.fixture
def python_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "pyhooks"
    folder.mkdir()
    (folder / "stopper_hooks.py").write_text(STOPPER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p))
    return "stopper_hooks:Stopper"


def raw_patch_start(srv: ServerProcess, path: str, total: int, first: bytes) -> socket.socket:
    """A PATCH announcing `total` bytes that sends only `first`, then waits."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Content-Type: {OFFSET_CT}\r\nUpload-Offset: 0\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode() + first)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_python_hook_stops_an_upload_mid_patch(
        start_server: Callable[..., ServerProcess], python_hooks: str) -> None:
    srv = start_server("--hooks-python", python_hooks, "--hooks-enabled-events",
                       "pre-create,post-receive,post-terminate",
                       "--progress-hooks-interval", "100ms", "--no-processing")
    with httpx.Client(timeout=10) as client:
        r = create(client, srv, 1 << 20, "unpaid.bin")
        assert r.status_code == 201
        url = location(srv, r)
        uid = url.rsplit("/", 1)[-1]
        sock = raw_patch_start(srv, f"/files/{uid}", 1 << 20, b"x" * 65536)
        with sock:
            # The body stalls; the progress timer reports 65536, the hook stops the upload.
            status, headers, body = read_response(sock)
        # tusd's answer: the hook's HTTPResponse over ERR_UPLOAD_STOPPED, no offset.
        assert status == 402
        assert body == b"upload is stopped because you didn't pay"
        assert headers["x-foo"] == "bar"
        assert "upload-offset" not in headers
        # Terminated, so it cannot be resumed (tusd: 404; here the tombstone's 410).
        assert client.head(url, headers=TUS).status_code == 410
        assert client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT,
                                          "Upload-Offset": "0"}, content=b"y").status_code == 410
        # Another upload is not stopped; a hook method that raises fails its request.
        r = create(client, srv, 3, "paid.bin")
        r = client.patch(location(srv, r), headers={**TUS, "Content-Type": OFFSET_CT,
                                                    "Upload-Offset": "0"}, content=b"abc")
        assert r.status_code == 204
        r = create(client, srv, 3, "boom.bin")
        assert r.status_code == 500
        assert "Stopper.pre_create raised RuntimeError: no such bucket" in r.text
    assert wait_for(lambda: f"upload.terminated upload_id={uid}" in srv.log())
    log = srv.log()
    assert "upload.stopped_by_hook" in log and "reason=stopped_by_hook" in log
    assert not (srv.upload_dir / "uploads" / uid).exists()


# --- progress interval, forwarded headers -------------------------------------------------
def test_progress_hooks_follow_the_interval(
        start_server: Callable[..., ServerProcess]) -> None:
    chunk, arrivals = 100_000, []
    with running_receiver() as receiver:
        def stamp(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            arrivals.append(time.monotonic())
            return 200, {}

        receiver.respond = stamp
        srv = start_server("--hooks-http", receiver.url, "--hooks-enabled-events",
                           "post-receive", "-progress-hooks-interval", "300ms")

        def body() -> Iterator[bytes]:
            for n in range(1, 4):
                yield b"p" * chunk
                # The next chunk waits until the timer has reported this one: no sleeps,
                # and the body stalls, which tusd's timer reports too.
                receiver.wait_until(lambda calls, n=n: any(
                    c["Event"]["Upload"]["Offset"] == n * chunk for c in calls))

        with httpx.Client(timeout=20) as client:
            url = location(srv, post(client, srv, 3 * chunk))
            r = client.patch(url, headers={**TUS, "Content-Type": OFFSET_CT,
                                           "Upload-Offset": "0"}, content=body())
            assert r.status_code == 204
        offsets = [c["Event"]["Upload"]["Offset"] for c in receiver.calls]
        assert offsets == sorted(set(offsets)) and offsets[-1] == 3 * chunk, offsets
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert all(gap > 0.2 for gap in gaps), gaps  # not more often than every 300 ms


def test_forwarded_headers_reach_the_http_receiver(
        start_server: Callable[..., ServerProcess]) -> None:
    with running_receiver() as receiver:
        srv = start_server("--hooks-http", receiver.url, "--hooks-enabled-events",
                           "pre-create", "-hooks-http-forward-headers", "cookie, X-Tenant")
        with httpx.Client(timeout=10) as client:
            r = create(client, srv, 3, "a.txt", Cookie="session=s3cr3t", **{
                "X-Tenant": "acme", "X-Other": "not forwarded"})
            assert r.status_code == 201
        hook_request = receiver.headers[0]
        assert hook_request["cookie"] == "session=s3cr3t"
        assert hook_request["x-tenant"] == "acme"
        assert "x-other" not in hook_request
        assert hook_request["content-type"] == "application/json"
        event = receiver.calls[0]
        assert event["Event"]["HTTPRequest"]["Header"]["X-Other"] == ["not forwarded"]
        assert json.dumps(event)  # still tusd's JSON
