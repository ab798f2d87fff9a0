"""HTTP-level fuzz against a real server process, over raw sockets.

A few hundred random and malformed requests: methods, request targets (encoded
slashes, `..`, NUL, very long ids), every tus header with random values (huge, NUL
bytes, bad UTF-8, absurd numbers), random Content-Types, Upload-Concat lists and
bodies with right, wrong or garbage framing. Afterwards: no response was a 5xx, the
server is up, its log holds no traceback, and two control uploads made before the
fuzz (one half-done, one processed) still have their offset and bytes.

The seed is printed; rerun one with TUSD_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    TUS,
    KiB,
    Pattern,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    resume_and_check,
    upload_id,
    wait_state,
)

SEED = int(os.environ.get("TUSD_FUZZ_SEED", "8082026"))
REQUESTS = 320
ALGORITHMS = ["sha1", "md5", "sha256", "sha512", "crc32", "SHA256", "blake2b", ""]
TUS_HEADERS = [
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Defer-Length",
    "Upload-Metadata", "Upload-Concat", "Upload-Checksum", "Content-Type",
    "X-HTTP-Method-Override", "Upload-Draft-Interop-Version", "Upload-Complete",
    "Upload-Incomplete", "Range", "Origin", "Access-Control-Request-Method", "Forwarded",
    "X-Forwarded-Host", "X-Forwarded-Proto", "Content-Disposition", "Expect",
    "Authorization", "If-None-Match", "X-Request-ID", "Accept-Encoding",
]
ESCAPES = [
    "..", "../..", "%2e%2e", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "..%2F..%2Fuploads", "%2F",
    "a%00b", "%00", ".info", "%252e%252e", "..%5C..", "%ff%fe", "~", "*", "%20", "a/b",
]


@dataclass
class Outcome:
    status: int | None  # None: the server closed without answering
    code: str = ""  # the ERR_ code of an error answer


@dataclass
class Fuzzer:
    rng: random.Random
    server: ServerProcess
    ids: list[str] = field(default_factory=list)  # uploads the fuzz created itself

    # ------------------------------------------------------------------ values
    def number(self) -> str:
        rng = self.rng
        return rng.choice([
            "0", "0", "0", "1", str(rng.randrange(300)), str(rng.randrange(1 << 20)),
            str(rng.randrange(1 << 63)), "-1", "+5",
            "01", "1e3", "0x10", " 7 ", "\t7", "5,5", "9" * rng.choice([19, 20, 40, 5000]),
            "", "1.5", "NaN", str(1 << 64),
            "\u0665".encode().decode("latin-1"),  # a non-ASCII digit, as UTF-8 bytes
        ])

    def junk(self) -> str:
        rng = self.rng
        kind = rng.choice([0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5])
        n = rng.choice([0, 1, 8, 64, 512, 4096, 20_000, 60_000])
        if kind == 0:
            return "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(min(n, 600)))
        if kind == 1:  # latin-1 high bytes: invalid UTF-8 on the wire
            return "".join(chr(rng.randrange(0x80, 0x100)) for _ in range(min(n, 600)))
        if kind == 2:  # control characters and NUL (the parser refuses most)
            return "a" + "".join(chr(rng.choice([0, 1, 0x1C, 0x7F, 0x0B])) for _ in range(3))
        if kind == 3:
            return "x" * n
        if kind == 4:
            return base64.b64encode(rng.randbytes(min(n, 3000))).decode()
        return " ".join(self.rng.choice(["final;", "partial", ",", ";", "=", "?1", "?0"])
                        for _ in range(rng.randrange(1, 6)))

    def url(self) -> str:
        rng = self.rng
        uid = rng.choice(self.ids) if self.ids and rng.random() < 0.5 else os.urandom(16).hex()
        return rng.choice([
            f"/files/{uid}", f"http://127.0.0.1:{self.server.port}/files/{uid}",
            f"/files/{rng.choice(ESCAPES)}", "http://[::1/files/x", f"/other/{uid}",
            f"https://evil.example/files/{uid}", "/files/", "", f"/files/{uid}?x=1",
        ])

    def value(self, name: str, junk: bool) -> str:
        rng = self.rng
        if junk:
            return self.junk()
        if name in ("Upload-Length", "Upload-Offset", "Upload-Draft-Interop-Version"):
            return self.number()
        if name == "Tus-Resumable":
            return rng.choice(["1.0.0", "1.0.0", "0.2.2", "1.0.0 ", "", "1.0.0,1.0.0"])
        if name == "Upload-Defer-Length":
            return rng.choice(["1", "0", "2", "true", ""])
        if name == "Upload-Metadata":
            pairs = []
            for _ in range(rng.randrange(0, 6)):
                key = rng.choice(["filename", "filetype", "project", "a", "k,", "ä", "", "x y"])
                val = rng.choice([base64.b64encode(rng.randbytes(rng.randrange(0, 40))).decode(),
                                  "!!!", "YQ", "", "YQ==", "=" * 4, "\xff\xfe"])
                pairs.append(f"{key} {val}" if rng.random() < 0.8 else key)
            return rng.choice([",", ", ", " ,"]).join(pairs)
        if name == "Upload-Concat":
            if rng.random() < 0.3:
                return rng.choice(["partial", "Partial", "final", "final;", "final; ", ""])
            return "final;" + " ".join(self.url() for _ in range(rng.randrange(1, 6)))
        if name == "Upload-Checksum":
            digest = base64.b64encode(rng.randbytes(rng.choice([0, 4, 16, 20, 32, 64])))
            return f"{rng.choice(ALGORITHMS)} {digest.decode()}"
        if name == "Content-Type":
            return rng.choice(["application/offset+octet-stream",
                               "application/offset+octet-stream; charset=x",
                               "APPLICATION/OFFSET+OCTET-STREAM", "application/partial-upload",
                               "multipart/form-data; boundary=x", "text/plain", "",
                               "application/x-www-form-urlencoded", "image/tiff"])
        if name == "X-HTTP-Method-Override":
            return rng.choice(["PATCH", "DELETE", "HEAD", "GET", "OPTIONS", "PUT", "post",
                               "TRACE", "patch "])
        if name in ("Upload-Complete", "Upload-Incomplete"):
            return rng.choice(["?1", "?0", "?2", "1", "?1;x=y", ""])
        if name == "Range":
            return rng.choice(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=9-1",
                               f"bytes={self.number()}-{self.number()}", "bytes=0-1,3-4",
                               "items=0-1", "bytes=-0"])
        if name == "Expect":
            return rng.choice(["100-continue", "200-ok", "100-continue, x"])
        if name in ("Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto"):
            return rng.choice(['host="a:1";proto=https', "for=1.2.3.4", "https", "evil.example"])
        if name == "Content-Disposition":
            return rng.choice(['attachment; filename="a.txt"', "attachment; filename*=UTF-8''%ff",
                               "inline; filename=\"\\\"", "attachment; filename*=x''"])
        if name == "Origin":
            return rng.choice(["http://a.example", "null", "*", "http://127.0.0.1"])
        if name == "Access-Control-Request-Method":
            return rng.choice(["PATCH", "POST", "DELETE", "HEAD"])
        if name == "Authorization":
            return rng.choice(["Bearer x", "Basic YTpi", "Bearer"])
        return "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(1, 40)))

    # ---------------------------------------------------------------- requests
    def request(self) -> tuple[bytes, bool]:
        """One raw request; the flag says the client must half-close (its body is short)."""
        rng = self.rng
        method = rng.choice(["POST"] * 5 + ["PATCH"] * 6 + ["HEAD", "HEAD", "GET", "GET",
                            "DELETE", "OPTIONS", "PUT", "TRACE", "patch"])
        if rng.random() < 0.03:
            method = rng.choice(["\xffGET", "GET GET", "", "P\x00ST", "FOO", "M-SEARCH"])
        uid = rng.choice(self.ids) if self.ids and rng.random() < 0.8 else os.urandom(16).hex()
        resource = f"/files/{uid}"
        usual = "/files/" if method in ("POST", "PUT") else resource
        target = usual if rng.random() < 0.6 else rng.choice(
            ["/files/", "/files", resource] * 3 + [
                f"/files/{rng.choice(ESCAPES)}", f"/files/{uid}{rng.choice(ESCAPES)}",
                "/files/" + "i" * rng.choice([129, 1000, 10_000]),
                "/files/" + "".join(f"%{b:02x}" for b in rng.randbytes(rng.randrange(1, 40))),
                "/api/uploads", f"/api/uploads/{uid}", f"/api/uploads/{rng.choice(ESCAPES)}",
                f"/api/uploads?limit={self.number()}&state=processed,{rng.choice(['x', ''])}",
                f"/api/uploads?cursor={rng.choice(['1.5~x', '~', 'abc', 'inf~z', '1e999~a'])}",
                f"/api/uploads/{uid}/thumbnails/{rng.choice(['..', 'thumb-256.jpg', '%2e'])}",
                f"/api/uploads/{uid}/reprocess", "/healthz", "/", "/static/../../etc/passwd",
                "/static/%2e%2e/%2e%2e/etc/passwd", "*", f"http://x/files/{uid}", "//files//",
            ])
        headers: list[tuple[str, str]] = []
        if rng.random() < 0.95:
            headers.append(("Host", f"127.0.0.1:{self.server.port}"))
        # Mostly well-formed requests with one odd value, so that most of them get past
        # the HTTP parser and into the tus handlers; some with garbage everywhere.
        names = rng.sample(TUS_HEADERS, rng.randrange(0, 8))
        if method in ("PATCH", "POST") and rng.random() < 0.7:
            names += [n for n in ("Upload-Offset", "Content-Type", "Upload-Length")
                      if n not in names and rng.random() < 0.8]
        odd = rng.choice(names) if names and rng.random() < 0.3 else None
        garbage = rng.random() < 0.05
        for name in names:
            headers.append((name, self.value(name, junk=garbage or name == odd)))
        if rng.random() < 0.6 and not any(n == "Tus-Resumable" for n, _ in headers):
            headers.append(("Tus-Resumable", "1.0.0"))
        if rng.random() < 0.05:  # the same tus header twice
            headers.append(("Upload-Offset", self.number()))
            headers.append(("Upload-Offset", self.number()))
        headers.append(("Connection", "close"))
        body = rng.randbytes(rng.choice([0, 0, 1, 100, 4 * KiB, 64 * KiB]))
        short = False
        framing = rng.random()
        if framing < 0.8:
            if body or method in ("POST", "PATCH", "PUT"):
                headers.append(("Content-Length", str(len(body))))
        elif framing < 0.87:  # declared longer than sent: the client half-closes
            headers.append(("Content-Length", str(len(body) + rng.randrange(1, 1 << 20))))
            short = True
        elif framing < 0.91:
            headers.append(("Content-Length", rng.choice(["-1", "abc", "1e3", "9" * 30, ""])))
        elif framing < 0.98:
            headers.append(("Transfer-Encoding", "chunked"))
            if rng.random() < 0.7:
                body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body \
                    else b"0\r\n\r\n"
            else:
                body = b"zz\r\n" + body
                short = True
        else:
            headers.append(("Content-Length", str(len(body))))
            headers.append(("Content-Length", str(len(body) + 1)))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
        return head.encode("latin-1", errors="replace") + b"\r\n" + body, short

    def send(self, raw: bytes, short: bool) -> Outcome:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=20) as sock:
            try:
                sock.sendall(raw)
                if short:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:  # EPIPE, ECONNRESET, ENOTCONN
                pass  # the server answered early and closed; read what it said
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                raise AssertionError(
                    f"no answer and no close within 20 s for {raw[:300]!r}") from None
        status, head, body = final_response(answer)
        if status == 201:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"location:"):
                    self.ids.append(line.decode("latin-1").rstrip("/").rsplit("/", 1)[-1])
        code = body.split(b":", 1)[0].decode("latin-1")[:40] if status and status >= 400 else ""
        return Outcome(status, code)


def final_response(answer: bytes) -> tuple[int | None, bytes, bytes]:
    """Status, head and body of the final response (after any 1xx interim responses)."""
    while answer.startswith(b"HTTP/1."):
        head, _, rest = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status >= 200:
            return status, head, rest
        answer = rest
    return None, b"", b""


@pytest.fixture(params=["embedded", "redis"])
def fuzz_server(request: pytest.FixtureRequest,
                start_server: Callable[..., ServerProcess]) -> ServerProcess:
    flags = ["--network-timeout", "2", "--max-size", str(8 << 20), "--lock-timeout", "3"]
    if request.param == "redis":
        flags += ["--redis-url", request.getfixturevalue("redis_url")]
    return start_server(*flags)


def test_http_fuzz_no_5xx_no_crash_no_corruption(fuzz_server: ServerProcess) -> None:
    server = fuzz_server
    print(f"fuzz seed {SEED} (rerun with TUSD_FUZZ_SEED={SEED})")
    rng = random.Random(SEED)

    # Controls: one half-done upload, one finished and processed.
    half = Pattern(256 * KiB, seed="fuzz-half")
    half_url = create_upload(server, half.size)
    r = patch(half_url, 0, half.chunks(0, 100 * KiB), 100 * KiB)
    assert r.status == 204, r
    done = Pattern(64 * KiB, seed="fuzz-done")
    done_url = create_upload(server, done.size)
    assert patch(done_url, 0, done.chunks(), done.size).status == 204
    wait_state(server, done_url, {"processed"})
    done_doc = httpx.get(f"{server.origin}/api/uploads/{upload_id(done_url)}").json()

    fuzzer = Fuzzer(rng, server)
    statuses: dict[int | None, int] = {}
    codes: dict[str, int] = {}
    failures: list[str] = []
    for i in range(REQUESTS):
        if i % 40 == 0:  # keep real uploads in the pool for the fuzz to target
            r2 = httpx.post(server.url, headers={**TUS, "Upload-Length": str(rng.randrange(200)),
                                                 **({"Upload-Concat": "partial"}
                                                    if rng.random() < 0.5 else {})})
            assert r2.status_code == 201, r2.text
            fuzzer.ids.append(upload_id(r2.headers["Location"]))
        raw, short = fuzzer.request()
        outcome = fuzzer.send(raw, short)
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        codes[outcome.code] = codes.get(outcome.code, 0) + 1
        if outcome.status is not None and outcome.status >= 500:
            failures.append(f"#{i} -> {outcome.status}: {raw[:400]!r}")
        assert server.proc is not None and server.proc.poll() is None, (
            f"server died at request #{i}: {raw[:400]!r}\n{server.log()[-3000:]}")
    print("statuses:", dict(sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0]))))
    print("error codes:", dict(sorted(codes.items(), key=lambda kv: -kv[1])))
    log = server.log()
    assert not failures, "\n".join(failures) + "\n" + log[-4000:]
    assert "Traceback" not in log and "request.crashed" not in log, log[-6000:]
    assert httpx.get(f"{server.origin}/healthz").status_code == 200
    assert len(statuses) > 5, f"the fuzz reached too few code paths: {statuses}"

    # The controls are untouched: offset, stored bytes, processing result.
    assert head_offset(half_url) == 100 * KiB
    stored = (server.upload_dir / "uploads" / upload_id(half_url)).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(
        half.read(0, 100 * KiB)).hexdigest()
    assert download_sha256(done_url) == (done.sha256(), done.size)
    after = httpx.get(f"{server.origin}/api/uploads/{upload_id(done_url)}").json()
    assert after["state"] == "processed" and after["file"] == done_doc["file"], after
    resume_and_check(server, half_url, half, 100 * KiB)
