"""A tusd deployment moves over unchanged: tusd's command line, switches, metric names,
TLS and unix-socket listening - each shown with a real server process and real clients."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import ServerProcess, free_port
from tusd_py.cli import migration_table
from tusd_py.config import flag_table

from .helpers import OFFSET_CT, TUS, serve_refusing

ROOT = Path(__file__).resolve().parents[2]

# tusd 2.10's metrics (pkg/prometheuscollector, pkg/hooks, cmd/tusd/cli/metrics.go):
# name -> (type, labels). tusd's four upload counters carry no _total suffix.
TUSD_METRICS = {
    "tusd_requests_total": ("counter", {"method"}),
    "tusd_errors_total": ("counter", {"status", "code"}),
    "tusd_bytes_received": ("counter", set()),
    "tusd_uploads_created": ("counter", set()),
    "tusd_uploads_finished": ("counter", set()),
    "tusd_uploads_terminated": ("counter", set()),
    "tusd_connections_open": ("gauge", set()),
    "tusd_hook_errors_total": ("counter", {"hooktype"}),
    "tusd_hook_invocations_total": ("counter", {"hooktype"}),
}


def exposition(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (TYPE, label names seen on its samples)."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            labels.setdefault(name, set())
        elif line and not line.startswith("#"):
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
            assert match, line
            for sample_name in labels:
                if match[1] in (sample_name, f"{sample_name}_total"):
                    labels[sample_name] |= set(re.findall(r'(\w+)="', match[3] or ""))
    return {name: (kind, labels[name]) for name, kind in types.items()}


def upload(url: str, data: bytes, client: httpx.Client) -> str:
    r = client.post(url, headers={**TUS, "Upload-Length": str(len(data))})
    assert r.status_code == 201, r.text
    location = str(httpx.URL(url).join(r.headers["Location"]))
    r = client.patch(location, headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
                     content=data)
    assert r.status_code == 204, r.text
    return location


def test_metrics_carry_tusds_names_types_and_labels(server: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        upload(server.url, b"counted", client)
        client.head(server.url + "missing", headers=TUS)
        text = client.get(server.origin + "/metrics").text
    seen = exposition(text)
    for name, (kind, labels) in TUSD_METRICS.items():
        family = name.removesuffix("_total") if name.endswith("_total") else name
        # prometheus_client names a counter's family without _total in its TYPE line.
        got = seen.get(name) or seen.get(family)
        assert got is not None, f"{name} missing from /metrics"
        assert got[0] == kind, (name, got)
        assert got[1] == labels, (name, got)
    assert re.search(r"^tusd_bytes_received 7(\.0)?$", text, re.M), text
    assert re.search(r"^tusd_uploads_created 1(\.0)?$", text, re.M)
    assert re.search(r'^tusd_hook_invocations_total\{hooktype="pre-create"\} 0', text, re.M)
    own = {n for n in seen if n.startswith("tusd_") and n.removesuffix("_total") not in
           {m.removesuffix("_total") for m in TUSD_METRICS}}
    assert all(n.startswith("tusd_py_") for n in own), own


def test_a_tusd_command_line_starts_the_server(tmp_path: Path) -> None:
    """Single-dash flags, Go durations and Go booleans, as a tusd unit file has them."""
    port = free_port()
    srv = ServerProcess(tmp_path / "data", [
        "-base-path", "/uploads/", "-max-size", "1000", "-behind-proxy",
        "-network-timeout=30s", "-hooks-enabled-events", "pre-create", "-expose-metrics=false",
        "-disable-download", "-cors-expose-headers", "X-Upload-Tag",
        "-cors-allow-origin", r"https://.*\.example", "-acquire-lock-timeout", "5s",
        "-enable-experimental-protocol", "-filelock-holder-poll-interval", "5s"], port=port)
    srv.start()
    try:
        with httpx.Client(timeout=10) as client:
            r = client.options(f"{srv.origin}/uploads/")
            assert r.status_code == 204
            assert r.headers["Tus-Max-Size"] == "1000"
            location = upload(f"{srv.origin}/uploads/", b"tusd", client)
            assert location.startswith(f"{srv.origin}/uploads/")
            r = client.post(f"{srv.origin}/uploads/",
                            headers={**TUS, "Upload-Length": "1", "X-Forwarded-Host": "cdn.ex",
                                     "X-Forwarded-Proto": "https"})
            assert r.headers["Location"].startswith("https://cdn.ex/uploads/")  # -behind-proxy
            assert client.get(location).status_code == 501  # -disable-download
            assert client.get(srv.origin + "/metrics").status_code == 404
            r = client.post(f"{srv.origin}/uploads/", headers={
                **TUS, "Upload-Length": "1", "Origin": "https://app.example"})
            assert "x-upload-tag" in r.headers["Access-Control-Expose-Headers"].lower()
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            r = client.post(f"{srv.origin}/uploads/", headers={
                **TUS, "Upload-Length": "1", "Origin": "https://app.example.evil"})
            assert "Access-Control-Allow-Origin" not in r.headers  # tusd's regex, in full
    finally:
        srv.stop()
    log = srv.log()
    assert "server.tusd_flag_ignored flag=-enable-experimental-protocol" in log
    assert "server.tusd_flag_ignored flag=-filelock-holder-poll-interval" in log


def test_tusd_only_flags_name_their_equivalent(tmp_path: Path) -> None:
    proc = serve_refusing(tmp_path / "data", "-gcs-bucket", "b")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tusd-py: tusd's -gcs-bucket has no tusd-py flag: Google Cloud Storage is not "
        "supported; use --s3-bucket (GCS speaks S3)"]
    assert not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def switched(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--disable-termination", "--disable-concatenation",
                          "--metrics-path", "/internal/metrics")


def test_disable_switches_refuse_and_leave_the_advertised_extensions(
        switched: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client:
        extensions = client.options(switched.url).headers["Tus-Extension"].split(",")
        assert "termination" not in extensions
        assert "concatenation" not in extensions
        assert "concatenation-unfinished" not in extensions
        assert {"creation", "creation-with-upload", "checksum"} <= set(extensions)
        location = upload(switched.url, b"keep me", client)
        r = client.delete(location, headers=TUS)
        assert r.status_code == 501
        assert r.text.startswith("ERR_NOT_IMPLEMENTED: termination is disabled")
        assert client.head(location, headers=TUS).status_code == 200
        r = client.post(switched.url, headers={**TUS, "Upload-Length": "3",
                                               "Upload-Concat": "partial"})
        assert r.status_code == 501
        # The IETF draft's DELETE goes through the same upload service.
        r = client.delete(location, headers={"Upload-Draft-Interop-Version": "8"})
        assert r.status_code == 501
        assert client.get(location).content == b"keep me"
        assert client.get(switched.origin + "/metrics").status_code == 404
        assert "tusd_uploads_created" in client.get(switched.origin + "/internal/metrics").text


def test_a_busy_port_is_one_line_and_touches_nothing(server: ServerProcess,
                                                     tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tusd_py", "serve", "--upload-dir", str(tmp_path / "fresh"),
         "--port", str(server.port)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"tusd-py: cannot listen on 127.0.0.1:{server.port}: Address already "
                     "in use"], proc.stderr
    assert "server.listening" not in proc.stdout + proc.stderr
    assert not (tmp_path / "fresh").exists()


def test_start_up_prints_one_line_with_the_upload_url(server: ServerProcess) -> None:
    log = server.log()
    assert f"server.listening url=http://127.0.0.1:{server.port}/files/" in log
    assert "Uvicorn running" not in log


def test_version() -> None:
    for flag in ("--version", "-version"):
        proc = subprocess.run([sys.executable, "-m", "tusd_py", flag], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0
        assert proc.stdout.strip() == "tusd-py 0.1.0"


def readme_part(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    assert start in readme and end in readme
    return readme.split(start, 1)[1].split(end, 1)[0]


def test_the_readme_flag_table_is_generated_from_the_settings() -> None:
    assert readme_part("flags") == flag_table(), "regenerate it: python -m tusd_py.config"


# Every flag of tusd 2.x (cmd/tusd/cli/flags.go, and the ones issue #19 names from 2.10).
TUSD_FLAGS = (
    "host", "port", "unix-sock", "base-path", "behind-proxy", "tls-certificate", "tls-key",
    "tls-mode", "enable-experimental-protocol", "disable-download", "disable-termination",
    "disable-concatenation", "max-size", "disable-cors", "cors-allow-origin",
    "cors-allow-credentials", "cors-allow-methods", "cors-allow-headers", "cors-max-age",
    "cors-expose-headers", "upload-dir", "dir-perms", "file-perms",
    "filelock-holder-poll-interval", "filelock-acquirer-poll-interval", "s3-bucket",
    "s3-object-prefix", "s3-endpoint", "s3-part-size", "s3-max-buffered-parts",
    "s3-disable-content-hashes", "s3-disable-ssl", "s3-concurrent-part-uploads",
    "s3-transfer-acceleration", "s3-log-api-calls", "gcs-bucket", "gcs-object-prefix",
    "azure-storage", "azure-container-access-type", "azure-blob-access-tier",
    "azure-object-prefix", "azure-endpoint", "hooks-enabled-events", "progress-hooks-interval",
    "hooks-dir", "hooks-http", "hooks-http-forward-headers", "hooks-http-retry",
    "hooks-http-backoff", "hooks-grpc", "hooks-grpc-retry", "hooks-grpc-backoff",
    "hooks-grpc-secure", "hooks-grpc-server-tls-certificate", "hooks-grpc-client-tls-certificate",
    "hooks-grpc-client-tls-key", "hooks-plugin", "expose-metrics", "metrics-path", "expose-pprof",
    "pprof-path", "pprof-block-profile-rate", "pprof-mutex-profile-rate", "show-greeting",
    "version", "verbose", "log-format", "network-timeout", "shutdown-timeout",
    "acquire-lock-timeout", "request-completion-timeout",
)


def test_every_tusd_flag_is_in_the_migration_table() -> None:
    table = readme_part("tusd-flags")
    assert table == migration_table(), "regenerate it (see the README)"
    listed = set(re.findall(r"^\| `-([a-z0-9-]+)` \|", table, re.M))
    assert set(TUSD_FLAGS) - listed == set()


# --- unix socket -----------------------------------------------------------------------
def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    sock = tmp_path / "tusd.sock"
    log = tmp_path / "unix.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tusd_py", "serve", "-unix-sock", str(sock),
             "--upload-dir", str(tmp_path / "data"), "--no-processing"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not accepts(sock):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # waiting for another process to start accepting
        yield sock, log
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not sock.exists()  # removed at exit


def test_a_unix_socket_server_is_reached_with_curl(unix_server: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    sock, log = unix_server
    data = os.urandom(200_000)
    (tmp_path / "body").write_bytes(data)
    curl = ["curl", "-sS", "--unix-socket", str(sock)]
    out = subprocess.run([*curl, "-i", "-X", "POST", "-H", "Tus-Resumable: 1.0.0",
                          "-H", f"Upload-Length: {len(data)}", "http://tusd/files/"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.startswith("HTTP/1.1 201")
    location = re.search(r"(?im)^location: (\S+)", out)[1]  # type: ignore[index]
    path = httpx.URL(location).path
    out = subprocess.run([*curl, "-i", "-X", "PATCH", "-H", "Tus-Resumable: 1.0.0",
                          "-H", f"Content-Type: {OFFSET_CT}", "-H", "Upload-Offset: 0",
                          "--data-binary", f"@{tmp_path / 'body'}", f"http://tusd{path}"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.startswith("HTTP/1.1 204")
    stored = subprocess.run([*curl, f"http://tusd{path}"], capture_output=True, check=True,
                            timeout=30).stdout
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    assert f"server.listening url=\"unix:{sock} /files/\"" in log.read_text()


# --- TLS ---------------------------------------------------------------------------------
def make_ca_and_server_cert(where: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tusd-py test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = where / "ca.pem", where / "cert.pem", where / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    where = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_server_cert(where)
    srv = ServerProcess(where / "data", ["-tls-certificate", str(cert), "-tls-key", str(key),
                                         "-tls-mode", "tls12", "--no-processing"])
    srv.start()
    yield srv, ca
    srv.stop()


def test_tuspy_uploads_over_tls(tls_server: tuple[ServerProcess, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    srv, ca = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # tuspy sends with requests
    data = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    endpoint = f"https://localhost:{srv.port}/files/"
    uploader = tus_client.TusClient(endpoint).uploader(str(tmp_path / "f.bin"),
                                                       chunk_size=1 << 20)
    uploader.upload()
    assert uploader.url is not None and uploader.url.startswith(endpoint)
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
        assert hashlib.sha256(client.get(uploader.url).content).digest() == \
            hashlib.sha256(data).digest()
    assert f"server.listening url=https://127.0.0.1:{srv.port}/files/" in srv.log()


def test_tus_js_client_uploads_over_tls(tls_server: tuple[ServerProcess, Path],
                                        tmp_path: Path) -> None:
    srv, ca = tls_server
    data = os.urandom(2 << 20)
    (tmp_path / "g.bin").write_bytes(data)
    scenario = {"endpoint": f"https://localhost:{srv.port}/files/",
                "file": str(tmp_path / "g.bin"), "options": {"chunkSize": 1 << 20}}
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.run([node, str(ROOT / "tests/js/upload.mjs"), json.dumps(scenario)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca)})
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == "success", report
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
        assert client.get(report["url"]).content == data


def test_tls13_mode_refuses_tls12_clients(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    srv = ServerProcess(tmp_path / "data", ["-tls-certificate", str(cert), "-tls-key",
                                            str(key), "-tls-mode", "tls13", "--no-processing"])
    srv.start()
    try:
        old = ssl.create_default_context(cafile=str(ca))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError), httpx.Client(verify=old) as client:
            client.options(f"https://localhost:{srv.port}/files/")
        new = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(verify=new) as client:
            assert client.options(f"https://localhost:{srv.port}/files/").status_code == 204
    finally:
        srv.stop()


def test_relative_locations_resolve_for_tus_clients(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """@tus/server's relativeLocation: Location is a path; tuspy resolves it."""
    srv = start_server("--relative-location", "--no-processing")
    with httpx.Client(timeout=10) as client:
        r = client.post(srv.url, headers={**TUS, "Upload-Length": "3"})
        assert r.status_code == 201
        assert re.fullmatch(r"/files/[0-9a-f]{32}", r.headers["Location"])
    data = os.urandom(100_000)
    (tmp_path / "r.bin").write_bytes(data)
    uploader = tus_client.TusClient(srv.url).uploader(str(tmp_path / "r.bin"),
                                                     chunk_size=40_000)
    uploader.upload()
    assert uploader.url is not None
    assert httpx.get(str(httpx.URL(srv.url).join(uploader.url)), timeout=10).content == data
