"""The shipped deployment, for real: Debian's nginx running deploy/nginx.conf in front of three
`tusd-py serve --redis-url ... --behind-proxy` instances sharing one redis-server and one
upload directory (the docker-compose.yml topology, on loopback ports).

deploy/nginx.conf is used as shipped; only its upstream addresses and its listen port are
substituted (and the substitution fails loudly when the file no longer has that shape). nginx
must be installed (`apt-get install nginx`): a missing binary fails these tests.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port, wait_listening
from tests.e2e.rawhttp import (
    CHECKPOINT,
    SLACK,
    TUS,
    MiB,
    Pattern,
    RawConn,
    download_sha256,
    head_offset,
    patch,
    upload_id,
    wait_state,
)
from tests.e2e.support import Start, assert_processed_once
from tests.e2e.test_tus_js_client import NodeRun, _js_env_problem, make_file
from tests.faultproxy import Faults, ProxyThread
from tests.tusd_py.helpers import LogWatch

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
SEED = int(os.environ.get("FAULT_SEED", "18"))


@dataclass
class Nginx:
    port: int
    prefix: Path
    proc: subprocess.Popen[bytes]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/files/"

    @property
    def body_temp(self) -> Path:
        return self.prefix / "client_body_temp"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


def site_config(upstreams: list[int], listen: int) -> str:
    """deploy/nginx.conf with loopback ports for tusd1..3 and the listen port."""
    text = DEPLOY_CONF.read_text()
    for i, port in enumerate(upstreams, 1):
        text, n = re.subn(rf"server\s+tusd{i}:1080;", f"server 127.0.0.1:{port};", text)
        assert n == 1, f"deploy/nginx.conf has no `server tusd{i}:1080;` upstream"
    text, n = re.subn(r"listen\s+80;", f"listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx.conf has no `listen 80;`"
    return text


def start_nginx(prefix: Path, upstreams: list[int]) -> Nginx:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail("nginx is not installed: apt-get install -y nginx", pytrace=False)
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (prefix / "site.conf").write_text(site_config(upstreams, port))
    temps = {name: prefix / name for name in (
        "client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp")}
    for path in temps.values():
        path.mkdir(exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers may read our tmp dirs
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 2;\npid {prefix}/nginx.pid;\n{user}"
        f"error_log {prefix}/error.log info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  log_format up '$request_method $uri $status $upstream_addr $request_time';\n"
        f"  access_log {prefix}/access.log up;\n"
        f"  client_body_temp_path {temps['client_body_temp']};\n"
        f"  proxy_temp_path {temps['proxy_temp']};\n"
        f"  fastcgi_temp_path {temps['fastcgi_temp']};\n"
        f"  uwsgi_temp_path {temps['uwsgi_temp']};\n"
        f"  scgi_temp_path {temps['scgi_temp']};\n"
        f"  include {prefix}/site.conf;\n"
        "}\n")
    test = subprocess.run([binary, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"),
                           "-c", str(prefix / "nginx.conf")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert test.returncode == 0, f"nginx -t rejects deploy/nginx.conf:\n{test.stderr}"
    proc = subprocess.Popen([binary, "-p", str(prefix), "-e", str(prefix / "error.log"),
                             "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if not wait_listening(port, proc):
        proc.kill()
        pytest.fail(f"nginx did not start:\n{(prefix / 'error.log').read_text()}")
    return Nginx(port, prefix, proc)


@pytest.fixture
def deployment(start_server: Start, redis_url: str,
               tmp_path: Path) -> Iterator[tuple[Nginx, list[ServerProcess]]]:
    servers = [start_server("--redis-url", redis_url, "--behind-proxy",
                            "--network-timeout", "10", upload_dir=tmp_path / "shared")
               for _ in range(3)]
    nginx = start_nginx(tmp_path / "nginx", [s.port for s in servers])
    yield nginx, servers
    nginx.proc.terminate()
    try:
        nginx.proc.wait(10)
    except subprocess.TimeoutExpired:
        nginx.proc.kill()
        nginx.proc.wait()


def create(nginx: Nginx, size: int, **headers: str) -> str:
    r = httpx.post(nginx.url, headers={**TUS, "Upload-Length": str(size), **headers},
                   timeout=10)
    assert r.status_code == 201, (r.status_code, r.text, nginx.error_log()[-2000:])
    location = r.headers["Location"]
    assert re.fullmatch(re.escape(nginx.url) + r"[0-9a-f]{32}", location), location
    return location


def served_by(servers: list[ServerProcess], uid: str, method: str) -> list[int]:
    """Ports of the instances whose logs have a `request.done` of `method` for upload `uid`."""
    pattern = re.compile(rf"\srequest\.done\s.*\bupload_id={uid}\b.*\bmethod={method}\b")
    return [s.port for s in servers for line in s.log().splitlines() if pattern.search(line)]


# ----------------------------------------------------------------------------- the tests


def test_large_single_patch_streams_through_unbuffered(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    """200 MiB in one PATCH: the instances checkpoint while the client is still sending
    (nginx does not store the body first), nothing lands in nginx's body temp dir, and no
    body size cap answers 413."""
    nginx, servers = deployment
    data = Pattern(200 * MiB, seed="nginx-large")
    url = create(nginx, data.size)
    watch = LogWatch(*servers)

    conn = RawConn(url, timeout=60)
    conn.start_patch(0, data.size)
    assert conn.send_chunks(data.chunks(0, 100 * MiB)) == 100 * MiB
    # The client holds the other 100 MiB back until an instance has committed bytes: with
    # request buffering, nginx would pass nothing on before the whole body and this waits
    # in vain.
    line = watch.wait_event("upload.checkpoint", upload_id(url), timeout=30)
    committed = int(re.search(r"\boffset=(\d+)", line).group(1))  # type: ignore[union-attr]
    print(f"checkpoint at {committed / MiB:.0f} MiB while the client had sent 100 of 200 MiB")
    assert 0 < committed <= 100 * MiB
    assert not any(nginx.body_temp.rglob("*")), "nginx buffered the body to disk"
    assert conn.send_chunks(data.chunks(100 * MiB)) == 100 * MiB
    r = conn.read_response(timeout=120)
    conn.close()
    assert r.status == 204, (r.status, r.headers, r.body, nginx.error_log()[-2000:])
    assert int(r.headers["upload-offset"]) == data.size
    assert not any(nginx.body_temp.rglob("*")), "nginx buffered the body to disk"
    assert download_sha256(url, timeout=120) == (data.sha256(), data.size)
    wait_state(servers[0], f"{servers[0].url}{upload_id(url)}", {"processed"}, timeout=60)
    assert_processed_once(servers, url)
    assert "buffered to a temporary file" not in nginx.error_log()


def test_locations_name_the_proxy_host_and_scheme(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    nginx, servers = deployment
    # The client's Host (a public name) comes back in Location, not the instance's address.
    r = httpx.post(nginx.url, headers={**TUS, "Upload-Length": "5",
                                       "Host": "uploads.example.test:8443"}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    assert re.fullmatch(r"http://uploads\.example\.test:8443/files/[0-9a-f]{32}",
                        r.headers["Location"]), r.headers["Location"]
    # nginx sets X-Forwarded-Proto itself: a client cannot make Location say https.
    r = httpx.post(nginx.url, headers={**TUS, "Upload-Length": "5",
                                       "X-Forwarded-Proto": "https",
                                       "X-Forwarded-Host": "evil.example"}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Location"].startswith(nginx.url), r.headers["Location"]
    # Each instance, asked directly, names itself: --behind-proxy only trusts the headers.
    assert all(f"127.0.0.1:{s.port}" not in r.headers["Location"] for s in servers)


def test_large_metadata_passes_both_ways(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    """Upload-Metadata up to the server's limit (8 KiB) reaches the instances, and HEAD
    echoes it back through nginx (a response header bigger than nginx's default 4 KiB
    proxy buffer)."""
    nginx, _ = deployment
    value = base64.b64encode(os.urandom(6135)).decode()  # 8180 characters
    metadata = f"filename {value}"
    # 8189 bytes: the header line is over nginx's default 8k line buffer.
    assert 8 * 1024 - 4 < len(metadata) <= 8 * 1024
    url = create(nginx, 10, **{"Upload-Metadata": metadata})
    r = httpx.head(url, headers=TUS, timeout=10)
    assert r.status_code == 200, (r.status_code, nginx.error_log()[-2000:])
    assert r.headers["Upload-Metadata"] == metadata
    # Over the limit: the server's own 400 with its reason, not nginx's error page.
    too_big = httpx.post(nginx.url, timeout=10, headers={
        **TUS, "Upload-Length": "10", "Upload-Metadata": f"filename {value}{value[:300]}"})
    assert too_big.status_code == 400, too_big.status_code
    assert too_big.text.startswith("ERR_INVALID_METADATA"), too_big.text[:300]


def test_client_cut_at_the_proxy_resumes_on_another_instance(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    nginx, servers = deployment
    data = Pattern(64 * MiB, seed="nginx-cut")
    url = create(nginx, data.size)
    uid = upload_id(url)
    watch = LogWatch(*servers)

    conn = RawConn(url, timeout=30)
    conn.start_patch(0, data.size)
    sent = conn.send_chunks(data.chunks(0, 40 * MiB))
    assert sent == 40 * MiB
    watch.wait_event("upload.checkpoint", uid, timeout=30)  # the instance has bytes
    conn.abort()  # RST to nginx; nginx closes its upstream connection
    watch.wait_event("upload.interrupted", uid, timeout=30)
    watch.wait_event("request.done", uid, timeout=30)  # logged after upload.interrupted
    [cut_on] = served_by(servers, uid, "PATCH")

    offset = head_offset(url)
    print(f"cut after {sent / MiB:.0f} MiB on :{cut_on}; resume from {offset / MiB:.1f} MiB")
    assert sent - CHECKPOINT - SLACK <= offset <= sent, (offset, sent)
    r = patch(url, offset, data.chunks(offset), data.size - offset, timeout=60)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == data.size
    patched_on = served_by(servers, uid, "PATCH")
    assert len(patched_on) == 2 and patched_on[1] != cut_on, (
        f"the resume was not served by another instance: {patched_on}")
    assert download_sha256(url) == (data.sha256(), data.size)
    wait_state(servers[0], f"{servers[0].url}{uid}", {"processed"}, timeout=30)
    assert_processed_once(servers, url)


def test_tus_js_client_through_faults_and_nginx(
    deployment: tuple[Nginx, list[ServerProcess]], tmp_path: Path,
) -> None:
    """tus-js-client (one PATCH per attempt) -> faultproxy (cuts every ~12 MiB) -> nginx -> 3
    instances: it resumes after every cut, on whichever instance nginx picks."""
    problem = _js_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    nginx, servers = deployment
    path = tmp_path / "through.bin"
    size = 60 * MiB + 7
    sha = make_file(path, size)
    with ProxyThread(nginx.port, Faults(rst=1, fin=1, every=12 * MiB, min_bytes=MiB,
                                        max_faults=8), seed=SEED) as proxy:
        res = NodeRun({"endpoint": f"http://127.0.0.1:{proxy.port}/files/",
                       "file": str(path), "progressEvents": False, "timeoutMs": 110_000,
                       "options": {"retryDelays": [0, 200, 500, 1000, 2000, 3000]}}
                      ).result(120)
        stats = proxy.stats()
    assert res["status"] == "success", (SEED, res["error"], res["requests"][-6:])
    uid = upload_id(res["url"])
    print(f"seed {SEED}: {stats['faults']} cuts {stats['by_kind']}; PATCHes on "
          f"{served_by(servers, uid, 'PATCH')}")
    assert stats["faults"] >= 2, f"seed {SEED}: {stats}"
    assert len(set(served_by(servers, uid, "PATCH"))) >= 2
    direct = f"{servers[0].url}{uid}"
    assert download_sha256(direct) == (sha, size), f"seed {SEED}: stored bytes differ"
    wait_state(servers[0], direct, {"processed"}, timeout=30)
    assert_processed_once(servers, direct)
    statuses = re.findall(r" (\d{3}) ", nginx.access_log())
    assert not [s for s in statuses if s.startswith("5")], nginx.access_log()[-3000:]
