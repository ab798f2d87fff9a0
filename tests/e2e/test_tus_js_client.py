"""End-to-end: the real tus-js-client (npm, 4.x) in Node drives a real `tusd-py serve`.

Every test runs `node tests/js/upload.mjs '<scenario JSON>'` (see that script for the scenario
and result format) against a server started by the conftest fixtures, then checks the server
side: GET <upload url> returns exactly the uploaded bytes and GET /api/uploads/<id> describes
the upload.

Needs the JS dependencies installed first:  npm ci --prefix tests/js
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.rawhttp import download_sha256, upload_id
from tests.e2e.support import RssSampler
from tests.tusd_py.helpers import LogWatch, event_re, wait_log

if TYPE_CHECKING:
    from tests.conftest import RedisServer, ServerProcess

MiB = 1 << 20
JS_DIR = Path(__file__).resolve().parents[1] / "js"
UPLOAD_MJS = JS_DIR / "upload.mjs"
INSTALL_CMD = "npm ci --prefix tests/js"
UNICODE_NAME = "słońce 日本 🎉.pdf"


def _js_env_problem() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "`node` (Node.js >= 20) is not on PATH"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`node --version` failed: {exc}"
    if int(version.lstrip("v").split(".")[0]) < 20:
        return f"Node.js >= 20 required, found {version}"
    if not (JS_DIR / "node_modules" / "tus-js-client" / "package.json").is_file():
        return (
            f"tus-js-client is not installed in {JS_DIR}/node_modules; "
            f"run `{INSTALL_CMD}` from the repository root first"
        )
    return None


@pytest.fixture(autouse=True, scope="module")
def _require_js_env() -> None:
    """Fail (never skip) every test here when Node or the npm dependencies are missing."""
    problem = _js_env_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


# --------------------------------------------------------------------------------------------
# helpers


def make_file(path: Path, size: int) -> str:
    """Write `size` bytes of incompressible data; return its sha256.

    Each 1 MiB block is a fresh random block for small files; big files reuse one random block
    stamped with the block number, so a misplaced block still changes the hash.
    """
    digest = hashlib.sha256()
    base = os.urandom(MiB) if size > 64 * MiB else b""
    with path.open("wb") as f:
        written = 0
        index = 0
        while written < size:
            n = min(MiB, size - written)
            stamp = struct.pack(">QQ", index, size)
            block = (stamp + base[16:])[:n] if base else os.urandom(n)
            f.write(block)
            digest.update(block)
            written += n
            index += 1
    return digest.hexdigest()


class NodeRun:
    """One `node upload.mjs` process; stderr progress events are collected in a thread."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        scenario = {"progressEvents": True, **scenario}
        self.scenario = scenario
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["node", str(UPLOAD_MJS), json.dumps(scenario)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=JS_DIR,
        )
        self._stdout = bytearray()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read_stdout(self) -> None:
        pipe = self.proc.stdout
        assert pipe is not None
        while block := pipe.read1(65536):
            self._stdout += block

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict) and "event" in event:
                    self.events.append(event)
                else:
                    self.stderr_lines.append(line)
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until an event satisfies `predicate` (True) or timeout / process exit (False)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return True
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return False
                self._cond.wait(min(remaining, 0.2))

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"node upload.mjs did not exit within {timeout}s; last events: "
                f"{self.events[-5:]} stderr: {self.stderr_lines[-20:]}"
            ) from None
        finally:
            self._out_reader.join(10)
            self._reader.join(10)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        out = bytes(self._stdout)
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        try:
            res: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise AssertionError(
                f"node upload.mjs printed no JSON result (exit {self.proc.returncode}); "
                f"stdout={out[-2000:]!r} stderr={self.stderr_lines[-30:]}"
            ) from None
        res["exitCode"] = self.proc.returncode
        res["stderr"] = self.stderr_lines[-30:]
        return res


def run_upload(scenario: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Run one scenario to completion; the script's own deadline is a bit shorter than ours."""
    scenario = {"timeoutMs": int((timeout - 10) * 1000), **scenario}
    return NodeRun(scenario).result(timeout)


def explain(server: ServerProcess, res: dict[str, Any]) -> str:
    brief = {k: v for k, v in res.items() if k not in ("chunks",)}
    brief["requests"] = res.get("requests", [])[-12:]
    text = json.dumps(brief, indent=1, ensure_ascii=False)
    log = server.log()[-4000:]
    return f"\n--- node result ---\n{text[-6000:]}\n--- server log (tail) ---\n{log}"


def assert_success(server: ServerProcess, res: dict[str, Any]) -> str:
    assert res["status"] == "success" and res["exitCode"] == 0, explain(server, res)
    url = res["url"]
    assert isinstance(url, str) and url.startswith(server.url), explain(server, res)
    return url


def api_upload(server: ServerProcess, url: str) -> dict[str, Any]:
    resp = httpx.get(f"{server.origin}/api/uploads/{upload_id(url)}", timeout=30)
    assert resp.status_code == 200, f"/api/uploads -> {resp.status_code}: {resp.text[:500]}"
    info: dict[str, Any] = resp.json()
    for key in ("id", "size", "offset", "state", "metadata"):
        assert key in info, f"/api/uploads lacks {key!r}: {info}"
    assert info["id"] == upload_id(url), info
    return info


def assert_stored(server: ServerProcess, url: str, sha: str, size: int) -> dict[str, Any]:
    """The server serves exactly the source bytes and reports the upload as complete."""
    got_sha, got_size = download_sha256(url, timeout=120)
    assert got_size == size, f"downloaded {got_size} bytes, expected {size}"
    assert got_sha == sha, "downloaded content differs from the uploaded file"
    info = api_upload(server, url)
    assert info["size"] == size, info
    assert info["offset"] == size, info
    assert isinstance(info["metadata"], dict), info
    return info


def requests_of(res: dict[str, Any], method: str, url: str | None = None) -> list[dict[str, Any]]:
    return [
        r for r in res["requests"] if r["method"] == method and (url is None or r["url"] == url)
    ]


@pytest.fixture(scope="module")
def src20(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A 20 MiB random file shared by the module: (path, sha256, size)."""
    path = tmp_path_factory.mktemp("js-src") / "random-20MiB.bin"
    size = 20 * MiB
    return path, make_file(path, size), size


# --------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("source", ["file", "buffer"])
def test_plain_upload_single_patch(
    server: ServerProcess, src20: tuple[Path, str, int], source: str
) -> None:
    path, sha, size = src20
    res = run_upload(
        {
            "endpoint": server.url,
            "file": str(path),
            "source": source,
            "options": {"metadata": {"filename": "random.bin"}},
        }
    )
    url = assert_success(server, res)
    posts = requests_of(res, "POST")
    patches = requests_of(res, "PATCH")
    assert len(posts) == 1 and posts[0]["status"] == 201, explain(server, res)
    assert posts[0]["headers"]["upload-length"] == str(size)
    assert len(patches) == 1, f"default options must send one PATCH{explain(server, res)}"
    assert patches[0]["status"] == 204
    assert patches[0]["headers"]["upload-offset"] == "0"
    assert patches[0]["responseHeaders"]["upload-offset"] == str(size)
    assert res["bytesSent"] == size
    info = assert_stored(server, url, sha, size)
    assert info["metadata"].get("filename") == "random.bin", info


def test_chunked_upload_1mib(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "odd.bin"
    size = 20 * MiB + 123
    sha = make_file(path, size)
    res = run_upload({"endpoint": server.url, "file": str(path), "options": {"chunkSize": MiB}})
    url = assert_success(server, res)
    patches = requests_of(res, "PATCH", url)
    assert [p["headers"]["upload-offset"] for p in patches] == [str(i * MiB) for i in range(21)], (
        explain(server, res)
    )
    assert all(p["status"] == 204 for p in patches), explain(server, res)
    assert [c[1] for c in res["chunks"]] == [min((i + 1) * MiB, size) for i in range(21)]
    assert_stored(server, url, sha, size)


@pytest.mark.parametrize("chunk_size", [None, MiB], ids=["single-patch", "chunk-1MiB"])
def test_abort_then_resume(
    server: ServerProcess, src20: tuple[Path, str, int], tmp_path: Path, chunk_size: int | None
) -> None:
    path, sha, size = src20
    storage = tmp_path / "tus-url-storage.json"
    options: dict[str, Any] = {"metadata": {"filename": "resume.bin"}}
    if chunk_size:
        options["chunkSize"] = chunk_size
    base = {
        "endpoint": server.url,
        "file": str(path),
        "urlStorage": str(storage),
        "options": options,
    }

    # First run: fed at 10 MiB/s so that ~40 % is reached mid-request, then upload.abort().
    first = run_upload({**base, "abortAtFraction": 0.4, "throttleBytesPerSec": 10 * MiB})
    assert first["status"] == "aborted" and first["exitCode"] == 0, explain(server, first)
    assert first["abortedAtBytes"] < size
    url = first["url"]
    assert isinstance(url, str) and url.startswith(server.url), explain(server, first)
    stored = json.loads(storage.read_text())
    assert [v["uploadUrl"] for v in stored.values()] == [url], stored

    # Second run: a new process and a new Upload that finds the URL in the storage and resumes.
    second = run_upload({**base, "resume": True})
    assert_success(server, second)
    assert second["previousUploads"] == 1 and second["resumedFrom"] == url, explain(server, second)
    assert second["url"] == url, f"resumed upload went to a new URL{explain(server, second)}"
    assert not requests_of(second, "POST"), f"resume created a new upload{explain(server, second)}"
    heads = [r for r in requests_of(second, "HEAD", url) if r["status"] == 200]
    assert heads, explain(server, second)
    resume_offset = int(heads[0]["responseHeaders"]["upload-offset"])
    assert 0 < resume_offset <= first["bytesSent"], (
        f"server kept {resume_offset} of {first['bytesSent']} bytes sent before the abort"
        f"{explain(server, second)}"
    )
    patches = requests_of(second, "PATCH", url)
    assert patches and patches[0]["headers"]["upload-offset"] == str(resume_offset)
    assert second["bytesSent"] < size, f"upload restarted from 0{explain(server, second)}"
    info = assert_stored(server, url, sha, size)
    assert info["metadata"].get("filename") == "resume.bin", info


def test_abort_with_terminate_deletes_upload(
    server: ServerProcess, src20: tuple[Path, str, int]
) -> None:
    path, _, _ = src20
    res = run_upload(
        {
            "endpoint": server.url,
            "file": str(path),
            "abortAtFraction": 0.3,
            "terminate": True,
            "throttleBytesPerSec": 10 * MiB,
        }
    )
    assert res["status"] == "aborted" and res["exitCode"] == 0, explain(server, res)
    url = res["url"]
    deletes = requests_of(res, "DELETE", url)
    assert deletes and deletes[-1]["status"] == 204, explain(server, res)
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    assert head.status_code == 410, head  # the tombstone of a terminated upload
    get = httpx.get(url, timeout=30)
    assert get.status_code == 410, get
    api = httpx.get(f"{server.origin}/api/uploads/{upload_id(url)}", timeout=30)
    # The status API may forget a terminated upload or keep it as a tombstone.
    assert api.status_code == 404 or (
        api.status_code == 200 and api.json()["state"] == "terminated"
    ), api.text


def test_deferred_length_from_stream(server: ServerProcess, tmp_path: Path) -> None:
    # source "stream" = fs.createReadStream wrapped in Readable.from(), so tus-js-client uses
    # its generic StreamSource. (A bare fs.ReadStream is read as a sized FileSource, which with
    # uploadLengthDeferred declares a 1 MiB Content-Length for the short last chunk: a client
    # bug.) The size is not a multiple of chunkSize: tus-js-client 4.3.1 itself stalls on a
    # stream whose length is an exact multiple of chunkSize (tus/tus-js-client#779). Depending on
    # when the stream's end is seen, Upload-Length rides on the last data PATCH or on an extra
    # empty PATCH; the server must accept either.
    path = tmp_path / "stream.bin"
    size = 5 * MiB + 4321
    sha = make_file(path, size)
    res = run_upload(
        {
            "endpoint": server.url,
            "file": str(path),
            "source": "stream",
            "options": {
                "chunkSize": MiB,
                "uploadLengthDeferred": True,
                "metadata": {"filename": "stream.bin"},
            },
        }
    )
    url = assert_success(server, res)
    post = requests_of(res, "POST")[0]
    assert post["headers"].get("upload-defer-length") == "1", post
    assert "upload-length" not in post["headers"], post
    patches = requests_of(res, "PATCH", url)
    with_length = [p for p in patches if "upload-length" in p["headers"]]
    assert [p["headers"]["upload-length"] for p in with_length] == [str(size)], patches
    assert all(p["status"] == 204 for p in patches), explain(server, res)
    assert patches[-1]["responseHeaders"]["upload-offset"] == str(size)
    assert_stored(server, url, sha, size)


@pytest.mark.parametrize("chunk_size", [None, 4 * MiB], ids=["whole-file", "chunk-4MiB"])
def test_upload_data_during_creation(
    server: ServerProcess, src20: tuple[Path, str, int], chunk_size: int | None
) -> None:
    path, sha, size = src20
    options: dict[str, Any] = {"uploadDataDuringCreation": True}
    if chunk_size:
        options["chunkSize"] = chunk_size
    res = run_upload({"endpoint": server.url, "file": str(path), "options": options})
    url = assert_success(server, res)
    posts = requests_of(res, "POST")
    assert len(posts) == 1, explain(server, res)
    post = posts[0]
    assert post["status"] == 201, explain(server, res)
    assert post["headers"]["content-type"] == "application/offset+octet-stream"
    first = chunk_size or size
    assert post["bodySize"] == first
    assert post["responseHeaders"].get("upload-offset") == str(first), explain(server, res)
    patches = requests_of(res, "PATCH", url)
    assert len(patches) == (size - first + (chunk_size or 1) - 1) // (chunk_size or 1)
    assert_stored(server, url, sha, size)


def test_parallel_uploads_concatenation(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "parallel.bin"
    size = 20 * MiB + 3  # not divisible by 4: the last part is larger
    sha = make_file(path, size)
    res = run_upload(
        {
            "endpoint": server.url,
            "file": str(path),
            "options": {"parallelUploads": 4, "metadata": {"filename": "parallel.bin"}},
        }
    )
    url = assert_success(server, res)
    posts = requests_of(res, "POST")
    partial = [p for p in posts if p["headers"].get("upload-concat") == "partial"]
    final = [p for p in posts if p["headers"].get("upload-concat", "").startswith("final;")]
    assert len(partial) == 4 and len(final) == 1, explain(server, res)
    assert all(p["status"] == 201 for p in posts), explain(server, res)
    part_urls = final[0]["headers"]["upload-concat"][len("final;") :].split(" ")
    assert len(part_urls) == 4
    assert url not in part_urls
    info = assert_stored(server, url, sha, size)
    assert info["metadata"].get("filename") == "parallel.bin", info
    sizes = [api_upload(server, u)["size"] for u in part_urls]
    assert sum(sizes) == size, sizes


def test_unicode_filename_metadata_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "unicode.bin"
    size = 256 * 1024 + 7
    sha = make_file(path, size)
    metadata = {
        "filename": UNICODE_NAME,
        "filetype": "application/pdf",
        "note": "ünïcödé, commas, and spaces",
    }
    res = run_upload({"endpoint": server.url, "file": str(path), "options": {"metadata": metadata}})
    url = assert_success(server, res)
    info = assert_stored(server, url, sha, size)
    assert info["metadata"] == metadata, info


def test_override_patch_method(server: ServerProcess, src20: tuple[Path, str, int]) -> None:
    path, sha, size = src20
    res = run_upload(
        {
            "endpoint": server.url,
            "file": str(path),
            "options": {"overridePatchMethod": True, "chunkSize": 8 * MiB},
        }
    )
    url = assert_success(server, res)
    assert not requests_of(res, "PATCH"), explain(server, res)
    overrides = requests_of(res, "POST", url)
    assert len(overrides) == 3, explain(server, res)
    for i, req in enumerate(overrides):
        assert req["headers"]["x-http-method-override"] == "PATCH"
        assert req["headers"]["upload-offset"] == str(i * 8 * MiB)
        assert req["status"] == 204, explain(server, res)
    assert_stored(server, url, sha, size)


def test_cors_headers_usable_by_browser_client(
    server: ServerProcess, src20: tuple[Path, str, int]
) -> None:
    """A browser tus-js-client can only read Location/Upload-Offset if they are exposed."""
    path, sha, size = src20
    origin = "http://app.example"
    res = run_upload(
        {"endpoint": server.url, "file": str(path), "options": {"headers": {"Origin": origin}}}
    )
    url = assert_success(server, res)
    for req in res["requests"]:
        allow = req["responseHeaders"].get("access-control-allow-origin")
        assert allow in ("*", origin), req

    def exposed(req: dict[str, Any]) -> set[str]:
        value = req["responseHeaders"].get("access-control-expose-headers", "")
        return {h.strip().lower() for h in value.split(",")}

    post = requests_of(res, "POST")[0]
    patch = requests_of(res, "PATCH", url)[0]
    assert {"location", "upload-offset"} <= exposed(post), post
    assert "upload-offset" in exposed(patch), patch
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0", "Origin": origin}, timeout=30)
    assert head.status_code == 200
    head_exposed = {
        h.strip().lower() for h in head.headers.get("access-control-expose-headers", "").split(",")
    }
    assert {"upload-offset", "upload-length"} <= head_exposed, head.headers
    assert_stored(server, url, sha, size)


def test_retry_after_server_killed_mid_upload(
    start_server: Callable[..., ServerProcess], src20: tuple[Path, str, int]
) -> None:
    server = start_server("--network-timeout", "3")
    path, sha, size = src20
    run = NodeRun(
        {
            "endpoint": server.url,
            "file": str(path),
            "throttleBytesPerSec": 8 * MiB,
            "timeoutMs": 110_000,
            "options": {"retryDelays": [0, 500, 1000, 2000], "metadata": {"filename": "retry.bin"}},
        }
    )
    reached = run.wait_for(
        lambda e: e["event"] == "progress" and e["bytes"] >= 0.3 * size, timeout=60
    )
    assert reached, f"upload never reached 30 %: {run.events[-5:]} {run.stderr_lines[-10:]}"
    server.kill()
    server.start()  # same port, same upload dir
    res = run.result(timeout=120)
    url = assert_success(server, res)
    first_post = requests_of(res, "POST")[0]
    assert first_post["status"] == 201
    original = first_post["responseHeaders"]["location"]
    assert url.endswith(original), f"upload was re-created after the restart{explain(server, res)}"
    assert len(requests_of(res, "POST")) == 1, explain(server, res)
    failed = [r for r in res["requests"] if r["error"]]
    assert failed and failed[0]["method"] == "PATCH", explain(server, res)
    heads = [r for r in requests_of(res, "HEAD", url) if r["status"] == 200]
    assert heads, f"client never resumed via HEAD{explain(server, res)}"
    info = assert_stored(server, url, sha, size)
    assert info["metadata"].get("filename") == "retry.bin", info


@pytest.fixture
def big_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "big"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_large_2gib_single_patch_bounded_server_memory(
    start_server: Callable[..., ServerProcess], big_dir: Path
) -> None:
    size = 2 * 1024 * MiB
    upload_dir = big_dir / "data"
    server = start_server("--network-timeout", "3", upload_dir=upload_dir)
    try:
        path = big_dir / "big-2GiB.bin"
        sha = make_file(path, size)

        # Warm up: let the server import and allocate whatever it needs for a first upload.
        warm = big_dir / "warm.bin"
        make_file(warm, 4 * MiB)
        warm_url = assert_success(server, run_upload({"endpoint": server.url,
                                                      "file": str(warm)}))
        wait_log(server, event_re("processing.done", upload_id(warm_url)))  # idle again

        with RssSampler(server) as sampler:
            baseline = server.rss_bytes()
            sampler.reset()
            res = run_upload({"endpoint": server.url, "file": str(path)}, timeout=900)
            upload_peak, upload_samples = sampler.peak, len(sampler.samples)
            url = assert_success(server, res)
            assert len(requests_of(res, "PATCH", url)) == 1, explain(server, res)

            sampler.reset()
            got_sha, got_size = download_sha256(url, timeout=600)
            download_peak = sampler.peak

        growth = upload_peak - baseline
        print(
            f"RSS baseline {baseline / MiB:.1f} MiB, upload peak {upload_peak / MiB:.1f} MiB "
            f"({upload_samples} samples, {res['elapsedMs']} ms), "
            f"download peak {download_peak / MiB:.1f} MiB"
        )
        assert upload_samples > 10, upload_samples
        assert growth < 64 * MiB, (
            f"server RSS grew by {growth / MiB:.1f} MiB during a 2 GiB upload "
            f"(baseline {baseline / MiB:.1f} MiB, peak {upload_peak / MiB:.1f} MiB)"
            f"{explain(server, res)}"
        )
        assert got_size == size
        assert got_sha == sha, "downloaded content differs from the uploaded 2 GiB file"
        assert download_peak - baseline < 64 * MiB, (
            f"server RSS grew by {(download_peak - baseline) / MiB:.1f} MiB while serving "
            "the 2 GiB download"
        )
        info = api_upload(server, url)
        assert info["size"] == size and info["offset"] == size, info
    finally:
        server.stop()
        shutil.rmtree(upload_dir, ignore_errors=True)


def test_retry_after_503_while_redis_is_down(
    start_server: Callable[..., ServerProcess], redis_server: RedisServer, redis_url: str,
    src20: tuple[Path, str, int],
) -> None:
    """The server answers 503 while its state store is gone; tus-js-client retries 5xx."""
    server = start_server("--network-timeout", "3", "--redis-url", redis_url)
    path, sha, size = src20
    run = NodeRun({
        "endpoint": server.url, "file": str(path), "throttleBytesPerSec": 8 * MiB,
        "timeoutMs": 110_000,
        "options": {"retryDelays": [500, 1000, 1000, 1000, 2000, 2000, 2000, 4000],
                    "metadata": {"filename": "redis-blip.bin"}},
    })
    reached = run.wait_for(
        lambda e: e["event"] == "progress" and e["bytes"] >= 0.3 * size, timeout=60)
    assert reached, f"upload never reached 30 %: {run.events[-5:]} {run.stderr_lines[-10:]}"
    log = LogWatch(server)
    redis_server.stop()
    try:
        # The outage is seen: the PATCH's next checkpoint fails, a retry is refused.
        log.wait(r"\srequest\.done\s.*\bstatus=(423|503)\b", timeout=30)
    finally:
        redis_server.start()
    res = run.result(timeout=120)
    url = assert_success(server, res)
    # HEAD answers 423 during the outage (tus-js-client would start over after a 5xx HEAD),
    # PATCH and POST 503: either way the client retries the same upload.
    outage = [r["status"] for r in res["requests"] if r["status"] in (423, 503)]
    assert outage, explain(server, res)
    assert len(requests_of(res, "POST")) == 1, explain(server, res)
    info = assert_stored(server, url, sha, size)
    assert info["metadata"].get("filename") == "redis-blip.bin", info


def test_jpeg_from_tus_js_client_is_processed_with_thumbnails(
    server: ServerProcess, tmp_path: Path,
) -> None:
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.linear_gradient("L").resize((2400, 1600)).convert("RGB").save(photo, quality=85)
    res = run_upload({"endpoint": server.url, "file": str(photo),
                      "options": {"metadata": {"filename": "photo.jpg",
                                               "filetype": "image/jpeg"}}})
    url = assert_success(server, res)
    wait_log(server, rf"\sprocessing\.(done|failed(?=.*\bwill_retry=False\b))\s"
             rf".*\bupload_id={upload_id(url)}\b",
             timeout=60)
    doc = httpx.get(f"{server.origin}/api/uploads/{upload_id(url)}", timeout=10).json()
    assert doc["state"] == "processed", doc
    assert doc["image"]["format"].upper() == "JPEG"
    assert (doc["image"]["width"], doc["image"]["height"]) == (2400, 1600)
    assert {t["name"]: (t["width"], t["height"]) for t in doc["thumbnails"]} == {
        "thumb-256.jpg": (256, 171), "thumb-1024.jpg": (1024, 683)}
    assert doc["file"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).status_code == 200
