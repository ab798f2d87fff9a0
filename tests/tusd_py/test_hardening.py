"""Input hardening against a real server (both backends): ids that try to leave the
storage dir, oversized Upload-Metadata, oversized header sections, and --max-size on
creation, on a deferred length and on concatenation."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import (
    OFFSET_CT,
    TUS,
    assert_error_body,
    create,
    head,
    offset_of,
    patch,
    raw_request,
    upload_id,
)
from tusd_py.http.fields import MAX_METADATA_BYTES

MAX = 1000


@pytest.fixture(scope="module")
def hserver(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--max-size", str(MAX), "--network-timeout", "3")


def tree(root: Path) -> dict[str, int]:
    """Every file under root (but server logs) -> size."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if not name.startswith("server-"):
                out[str(path.relative_to(root))] = path.stat().st_size
    return out


# ------------------------------------------------------------------------- upload ids

ESCAPES = [
    "..", "../uploads", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%2E%2E%2F%2E%2E", "%2e%2e%2fuploads",
    ".%2e", "%2F", "%2Fetc%2Fpasswd", "a%00b", "%00", "{id}%00", "{id}%2F..", "{id}/..",
    "{id}.info", "..%5C..%5Cwindows", "%252e%252e", "{id}%2F..%2F{id}", "a" * 129,
    "b" * 8000, ".info", "~", "%7e", "{id}%20", "%20{id}", "{id}%0a",
]


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET", "POST"])
def test_ids_cannot_escape_the_storage_dir(hserver: ServerProcess, client: httpx.Client,
                                           method: str) -> None:
    victim = create(client, hserver, 10)
    assert patch(client, victim, 0, b"12345").status_code == 204
    vid = upload_id(victim)
    root = hserver.upload_dir.parent
    before = tree(root)
    for raw in ESCAPES:
        target = "/files/" + raw.replace("{id}", vid)
        headers = {**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "5"}
        if method == "POST":
            headers = {**TUS, "Upload-Length": "5", "X-HTTP-Method-Override": "DELETE"}
        r = raw_request(hserver, method, target, headers, b"abcde" if method != "HEAD" else b"")
        # POST is refused on a resource: 404 (unknown id) or 405 (no POST there).
        allowed = {404, 405} if method == "POST" else {404}
        if r.status == 307:
            # '/files/%2F' is '/files//': Starlette's redirect_slashes points at the
            # collection itself, which names no upload (harmless, but not a 404).
            assert r.headers["location"].rstrip("/").endswith("/files"), r.headers
            continue
        assert r.status in allowed, (method, target[:80], r.status, r.body[:200])
        if method != "HEAD" and r.status == 404 and r.body.startswith(b"ERR_"):
            assert r.body.count(b"\n") == 1, r.body
    # Nothing was created, changed or removed anywhere under the server's directory.
    after = tree(root)
    assert after == before, {k: (before.get(k), after.get(k))
                             for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert offset_of(client, victim) == 5


def test_raw_nul_and_control_bytes_in_the_path_are_refused(hserver: ServerProcess) -> None:
    for target in (b"/files/a\x00b", b"/files/\x01", b"/files/a b", b"/files/\xff\xfe"):
        with socket.create_connection(("127.0.0.1", hserver.port), timeout=5) as sock:
            sock.sendall(b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0"
                         b"\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        # A parser refusal (400) or a plain close; never an answer about a file.
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert status == 400, answer[:200]


def test_api_views_refuse_escaping_ids(hserver: ServerProcess) -> None:
    for target in ("/api/uploads/..", "/api/uploads/%2e%2e", "/api/uploads/a%00",
                   "/api/uploads/%2e%2e/thumbnails/x", "/api/uploads/x/thumbnails/..%2F..%2Fa",
                   "/api/uploads/" + "c" * 300):
        r = raw_request(hserver, "GET", target)
        assert r.status == 404, (target, r.status, r.body[:200])
    r = raw_request(hserver, "POST", "/api/uploads/%2e%2e/reprocess")
    assert r.status == 404, r.status


# ------------------------------------------------------------------------ metadata size


def test_metadata_over_the_bound_is_refused_with_a_reason(hserver: ServerProcess,
                                                          client: httpx.Client) -> None:
    value = "A" * MAX_METADATA_BYTES
    r = client.post(hserver.url, headers={**TUS, "Upload-Length": "1",
                                          "Upload-Metadata": f"filename {value}"})
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert_error_body(r)
    assert r.text.startswith("ERR_INVALID_METADATA: ") and str(MAX_METADATA_BYTES) in r.text
    assert len(r.text) < 300, "the reason must not echo the header"
    assert "Location" not in r.headers


def test_metadata_at_the_bound_is_stored_and_echoed(hserver: ServerProcess,
                                                    client: httpx.Client) -> None:
    raw = os.urandom(3 * ((MAX_METADATA_BYTES - len("blob ")) // 4))
    header = "blob " + base64.b64encode(raw).decode()
    assert len(header) <= MAX_METADATA_BYTES
    loc = create(client, hserver, 1, metadata=header)
    assert head(client, loc).headers["Upload-Metadata"] == header


# ------------------------------------------------------------------ header section size


def send_raw(server: ServerProcess, head_bytes: bytes, timeout: float = 20.0) -> int | None:
    """Send a request head; the status, or None when the server just closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head_bytes)
        answer = b""
        try:
            while b"\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        except ConnectionResetError:
            return None
    return int(answer.split(b" ", 2)[1]) if answer else None


@pytest.mark.parametrize("shape", ["one-100k-field", "1000-fields", "100k-metadata",
                                   "nul-and-high-bytes"])
def test_huge_header_sections_never_crash_the_server(hserver: ServerProcess,
                                                     client: httpx.Client, shape: str) -> None:
    """100 KB of headers: whatever the HTTP parser does (uvicorn/httptools), the answer is
    never a 5xx, the server stays up, and the request cannot create an upload."""
    start = (f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{hserver.port}\r\n"
             "Tus-Resumable: 1.0.0\r\nUpload-Length: 10\r\nConnection: close\r\n").encode()
    if shape == "one-100k-field":
        extra = b"X-Padding: " + b"p" * 100_000 + b"\r\n"
    elif shape == "1000-fields":
        extra = b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    elif shape == "100k-metadata":
        extra = b"Upload-Metadata: k " + b"QUFB" * 25_000 + b"\r\n"
    else:
        extra = b"X-Bytes: \xff\xfe\x80" + b"\x00" * 10 + b"\r\n"
    status = send_raw(hserver, start + extra + b"\r\n")
    print(f"{shape}: {status}")
    assert status is None or status < 500, status
    if shape in ("100k-metadata", "nul-and-high-bytes"):
        assert status is None or 400 <= status < 500, status
    assert "Traceback" not in hserver.log()
    assert head(client, create(client, hserver, 1)).status_code == 200  # still serving


@pytest.mark.parametrize("extra", [
    b"X-Padding: " + b"p" * (1 << 20) + b"\r\n",  # one 1 MiB field
    b"".join(b"X-F%d: v\r\n" % i for i in range(300)),  # many small fields
    b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)),  # 70 KiB in all
], ids=["1MiB-field", "300-fields", "70KiB-total"])
def test_header_section_over_a_limit_is_refused(hserver: ServerProcess, client: httpx.Client,
                                                extra: bytes) -> None:
    """A HEAD whose answer would be 200 gets 431 instead (tusd_py/informational.py bounds
    the header section), and the server goes on serving."""
    loc = create(client, hserver, 10)
    path = "/files/" + upload_id(loc)
    status = send_raw(hserver, (f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                                "Connection: close\r\n").encode() + extra + b"\r\n")
    assert status == 431, status
    assert head(client, loc).status_code == 200


# ------------------------------------------------------------------------- --max-size


def test_max_size_on_creation(hserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(hserver.url, headers=TUS)
    assert r.headers["Tus-Max-Size"] == str(MAX)
    r = client.post(hserver.url, headers={**TUS, "Upload-Length": str(MAX + 1)})
    assert r.status_code == 413 and "Location" not in r.headers, r.text
    assert_error_body(r)
    # Up to 19 digits is a number (over the limit: 413); more is no valid length (400).
    for absurd, status in (("9" * 19, 413), ("18446744073709551616", 400), ("9" * 100, 400)):
        r = client.post(hserver.url, headers={**TUS, "Upload-Length": absurd})
        assert r.status_code == status, (absurd, r.status_code)
    # creation-with-upload: a body longer than the limit is refused before it is read.
    r = client.post(hserver.url, headers={**TUS, "Upload-Defer-Length": "1",
                                          "Content-Type": OFFSET_CT},
                    content=b"x" * (MAX + 1))
    assert r.status_code == 413, (r.status_code, r.text)
    assert create(client, hserver, MAX)


def test_max_size_on_a_deferred_length(hserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, hserver, defer=True)
    assert patch(client, loc, 0, b"a" * 100).status_code == 204
    # The length declared later is held to the same limit.
    r = patch(client, loc, 100, b"", headers={"Upload-Length": str(MAX + 1)})
    assert r.status_code == 413, (r.status_code, r.text)
    assert head(client, loc).headers.get("Upload-Defer-Length") == "1"
    # Bytes past the limit are refused even while the length is still unknown.
    r = patch(client, loc, 100, b"b" * (MAX - 99))
    assert r.status_code == 413, (r.status_code, r.text)
    assert offset_of(client, loc) == 100
    r = patch(client, loc, 100, b"c" * (MAX - 100), headers={"Upload-Length": str(MAX)})
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.headers["Upload-Offset"] == str(MAX)


def _partial(client: httpx.Client, srv: ServerProcess, size: int | None,
             data: bytes | None = None) -> str:
    headers = {"Upload-Concat": "partial"}
    loc = create(client, srv, size, defer=size is None, headers=headers)
    if data is not None:
        extra = {"Upload-Length": str(len(data))} if size is None else {}
        assert patch(client, loc, 0, data, headers=extra).status_code == 204
    return loc


def test_max_size_on_concatenation(hserver: ServerProcess, client: httpx.Client) -> None:
    half = MAX // 2 + 1  # two of them are over the limit
    a = _partial(client, hserver, half, b"a" * half)
    b = _partial(client, hserver, half)  # unfinished, length known
    r = client.post(hserver.url, headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status_code == 413, (r.status_code, r.text)
    assert "Location" not in r.headers
    small = _partial(client, hserver, MAX - half, b"s" * (MAX - half))
    r = client.post(hserver.url, headers={**TUS, "Upload-Concat": f"final;{a} {small}"})
    assert r.status_code == 201, (r.status_code, r.text)
    assert offset_of(client, r.headers["Location"]) == MAX


def test_max_size_on_concatenation_of_deferred_partials(hserver: ServerProcess,
                                                        client: httpx.Client) -> None:
    """Lengths deferred at creation: the sum is known only when the partials finish, and
    the final must not become an upload larger than Tus-Max-Size."""
    half = MAX // 2 + 1
    a = _partial(client, hserver, None)
    b = _partial(client, hserver, None)
    r = client.post(hserver.url, headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status_code == 201, (r.status_code, r.text)
    final = r.headers["Location"]
    for loc, fill in ((a, b"a"), (b, b"b")):
        r = patch(client, loc, 0, fill * half, headers={"Upload-Length": str(half)})
        assert r.status_code == 204, (r.status_code, r.text)  # each partial is fine
    h = head(client, final)
    assert h.status_code == 200 and "Upload-Offset" not in h.headers, h.headers
    assert client.get(final).status_code == 404  # never finished, never downloadable
    assert f"upload.concat_failed upload_id={upload_id(final)}" in hserver.log()


def test_an_endless_header_line_is_cut_off(hserver: ServerProcess,
                                           client: httpx.Client) -> None:
    """A header line that never ends must not be buffered whole: 431 after the limit."""
    status = send_raw(hserver, b"HEAD /files/x HTTP/1.1\r\nHost: x\r\nX-Endless: "
                      + b"e" * (300 * 1024))
    assert status == 431
    assert client.options(hserver.url).status_code == 204  # still serving


def test_a_bad_range_never_answers_500(hserver: ServerProcess, client: httpx.Client) -> None:
    done = client.post(hserver.url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "0"})
    url = done.headers["Location"]
    assert client.get(url, headers={"Range": "bytes=-1"}).status_code == 416  # empty upload
    r = client.get(url, headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert r.status_code == 200  # not a byte range we understand: the whole (empty) body
