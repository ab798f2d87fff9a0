"""IETF "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) on the tus
endpoint, interop versions 3..8, against a real `python -m tusd_py serve` over raw
sockets (so the 104 interim response is read before the final response).

Section names below are the draft's; "-01" etc. name the draft revision whose text a
test follows (interop version 3 = -01, 4 = -02, 5 = -03, 6 = -04/-05, 7 = -06..-08,
8 = -09..editor's copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port, wait_listening
from tests.e2e.rawhttp import Pattern, RawConn, Response, download_sha256, wait_state
from tusd_py.ietf.headers import parse_dictionary

VERSIONS = [3, 4, 5, 6, 7, 8]
PROBLEM = "https://iana.org/assignments/http-problem-types#"
LOCATION_RE = re.compile(r"^http://127\.0\.0\.1:\d+/files/[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default server for the whole module (tests use fresh uploads, never state)."""
    proc = ServerProcess(upload_dir=tmp_path_factory.mktemp("ietf") / "data",
                         args=["--network-timeout", "3"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def server(shared: ServerProcess) -> ServerProcess:
    return shared


# ------------------------------------------------------------------ draft requests


def completeness(v: int, complete: bool) -> dict[str, str]:
    """-01 (v3): `Upload-Incomplete: ?1` = more to come; -02+: `Upload-Complete: ?1` = last."""
    if v == 3:
        return {"Upload-Incomplete": "?0" if complete else "?1"}
    return {"Upload-Complete": "?1" if complete else "?0"}


def is_complete(v: int, r: Response) -> bool:
    if v == 3:
        assert r.headers["upload-incomplete"] in ("?0", "?1"), r.headers
        return r.headers["upload-incomplete"] == "?0"
    assert r.headers["upload-complete"] in ("?0", "?1"), r.headers
    return r.headers["upload-complete"] == "?1"


def draft(v: int, **extra: str) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(v), **extra}


def append_headers(v: int, offset: int, length: int, complete: bool) -> dict[str, str]:
    headers = {**draft(v), "Upload-Offset": str(offset), "Content-Length": str(length),
               **completeness(v, complete)}
    if v >= 6:  # -04: 'Require application/partial-upload for appending to uploads.'
        headers["Content-Type"] = "application/partial-upload"
    return headers


def request(url: str, method: str, headers: dict[str, str], body: bytes = b"") -> Response:
    conn = RawConn(url)
    try:
        if body or method in ("POST", "PUT", "PATCH"):
            headers = {"Content-Length": str(len(body)), **headers}
        conn.send_head(method, headers)
        conn.send_chunks([body])
        r = conn.read_response(head=method == "HEAD")
        while r.status == 104:
            r = conn.read_response(head=method == "HEAD")
        return r
    finally:
        conn.close()


def create_empty(server: ServerProcess, v: int, **extra: str) -> str:
    """'Careful Upload Creation': no content, `Upload-Complete: ?0` -> 201 + Location."""
    r = request(server.url, "POST", {**draft(v), **completeness(v, False), **extra})
    assert r.status == 201, (r.status, r.headers, r.body)
    assert LOCATION_RE.match(r.headers["location"])
    assert not is_complete(v, r)
    return r.headers["location"]


def head(url: str, v: int, **extra: str) -> Response:
    return request(url, "HEAD", {**draft(v), **extra})


def check_limit(v: int, r: Response, max_size: int | None = None,
                expiration: int | None = None) -> None:
    """-04 adds `Upload-Limit`; -06 renames `expires` to `max-age`; -09+: a server
    without limits MUST still send `min-size=0`."""
    if v < 6:
        assert "upload-limit" not in r.headers
        return
    limit = parse_dictionary(r.headers["upload-limit"])
    assert limit.get("min-size") == 0
    if max_size is not None:
        assert limit["max-size"] == max_size
    age_key = "expires" if v == 6 else "max-age"
    assert ("max-age" if v == 6 else "expires") not in limit
    if expiration is not None:
        assert 0 < limit[age_key] <= expiration


def assert_stored(server: ServerProcess, url: str, data: bytes) -> None:
    """Draft uploads are first-class: listed by the API, processed, downloadable."""
    info = wait_state(server, url, {"processed"})
    assert info["size"] == len(data)
    sha, size = download_sha256(url)
    assert size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    listed = httpx.get(f"{server.origin}/api/uploads", timeout=10).json()
    assert url.rsplit("/", 1)[1] in json.dumps(listed)


# ------------------------------------------------------------------------- creation


@pytest.mark.parametrize("v", VERSIONS)
def test_creation_with_full_body_sends_104_before_the_body(server: ServerProcess, v: int) -> None:
    """'Upload Creation' / Server Behavior: 'the server SHOULD announce the upload
    resource by sending an interim response with the 104 (Upload Resumption Supported)
    status code'; 'it MUST include Location'; 'Draft Version Identification': 'MUST also
    send ... Upload-Draft-Interop-Version'. The 104 arrives before any byte of content
    was sent (the body is still unsent when we read it)."""
    data = b"resumable upload body " * 500
    conn = RawConn(server.url)
    try:
        conn.send_head("POST", {**draft(v), **completeness(v, True),
                                "Content-Length": str(len(data)),
                                "Content-Disposition": 'inline; filename="notes.txt"'})
        interim = conn.read_response(timeout=5)
        assert interim.status == 104
        assert LOCATION_RE.match(interim.headers["location"])
        assert interim.headers["upload-draft-interop-version"] == str(v)
        check_limit(v, interim, expiration=24 * 3600)
        conn.send_chunks([data])
        final = conn.read_response()
    finally:
        conn.close()
    # -01: 'The server MUST include the Upload-Offset header in the response'.
    assert final.status == 201, (final.status, final.headers, final.body)
    assert final.headers["location"] == interim.headers["location"]
    assert int(final.headers["upload-offset"]) == len(data)
    assert is_complete(v, final)
    assert "tus-resumable" not in final.headers
    assert_stored(server, interim.headers["location"], data)
    info = httpx.get(f"{server.origin}/api/uploads/"
                     f"{interim.headers['location'].rsplit('/', 1)[1]}", timeout=10).json()
    assert "notes.txt" in json.dumps(info)


@pytest.mark.parametrize("v", VERSIONS)
def test_empty_incomplete_creation_then_appends(server: ServerProcess, v: int) -> None:
    """'Example 2: Upload as a series of parts': POST `Upload-Complete: ?0` -> 201 +
    Location; PATCH parts with ?0, the last with ?1 (-01: no `Upload-Incomplete`)."""
    url = create_empty(server, v)
    data = bytes(range(256)) * 40
    r = request(url, "PATCH", append_headers(v, 0, 4000, False), data[:4000])
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == 4000
    assert not is_complete(v, r)
    r = request(url, "PATCH", append_headers(v, 4000, len(data) - 4000, True), data[4000:])
    assert r.status == 204, (r.status, r.headers, r.body)
    assert is_complete(v, r)
    r = head(url, v)
    assert r.status == 204
    assert int(r.headers["upload-offset"]) == len(data)
    assert is_complete(v, r)
    assert int(r.headers["upload-length"]) == len(data)
    assert_stored(server, url, data)


@pytest.mark.parametrize("v", VERSIONS)
def test_interrupted_creation_is_resumed_with_head_and_patch(
        server: ServerProcess, v: int) -> None:
    """'Example 1': the creation is interrupted after the 104; the client retrieves the
    offset ('Offset Retrieval': 204, `Upload-Offset`, completeness, `Upload-Length`,
    `Upload-Limit`, `Cache-Control: no-store`) and appends the rest ('Upload Append').
    The server 'SHOULD append as much of the request content as possible'."""
    data = Pattern(3 << 20, f"ietf-{v}").read()
    conn = RawConn(server.url)
    conn.send_head("POST", {**draft(v), **completeness(v, True),
                            "Content-Length": str(len(data))})
    interim = conn.read_response(timeout=5)
    assert interim.status == 104
    url = interim.headers["location"]
    sent = conn.send_chunks([data[: 1 << 20]])
    conn.wait_delivered()  # the server has read what was sent; then the connection is cut
    conn.abort()

    r = head(url, v)
    assert r.status == 204, (r.status, r.headers)
    assert r.headers["cache-control"] == "no-store"
    offset = int(r.headers["upload-offset"])
    assert 0 <= offset <= sent
    assert not is_complete(v, r)
    # 'Upload-Complete: ?1' with Content-Length indicated the length (Section 'Length').
    assert int(r.headers["upload-length"]) == len(data)
    check_limit(v, r, expiration=24 * 3600)

    r = request(url, "PATCH", append_headers(v, offset, len(data) - offset, True),
                data[offset:])
    assert r.status == 204, (r.status, r.headers, r.body)
    assert is_complete(v, r)
    assert int(r.headers["upload-offset"]) == len(data)
    assert_stored(server, url, data)


@pytest.mark.parametrize("v", [3, 6, 8])
def test_put_creates_too(server: ServerProcess, v: int) -> None:
    """'A client can start a resumable upload from any request that can carry content
    ... such as POST, PUT, and PATCH.'"""
    data = b"put body"
    r = request(server.url, "PUT", {**draft(v), **completeness(v, True)}, data)
    assert r.status == 201, (r.status, r.headers, r.body)
    assert is_complete(v, r)
    assert_stored(server, r.headers["location"], data)


@pytest.mark.parametrize("v", [4, 8])
def test_empty_complete_creation_is_an_empty_upload(server: ServerProcess, v: int) -> None:
    """'The request content can be empty. If the Upload-Complete header field is then set
    to true, the client intends to upload an empty representation.'"""
    r = request(server.url, "POST", {**draft(v), **completeness(v, True)})
    assert r.status == 201, (r.status, r.headers, r.body)
    assert is_complete(v, r)
    assert r.headers["upload-offset"] == "0"
    assert_stored(server, r.headers["location"], b"")


# ---------------------------------------------------------------- offsets and errors


@pytest.mark.parametrize("v", VERSIONS)
def test_offset_mismatch_is_409_with_the_correct_offset(server: ServerProcess, v: int) -> None:
    """'Upload Append': 'If the Upload-Offset request header field value does not match
    the current offset, the server MUST reject the request with a 409 (Conflict) status
    code. The response MUST include the correct offset in the Upload-Offset header
    field.' -04+: problem type mismatching-upload-offset with expected-offset and
    provided-offset."""
    url = create_empty(server, v)
    r = request(url, "PATCH", append_headers(v, 0, 5, False), b"12345")
    assert r.status == 204
    r = request(url, "PATCH", append_headers(v, 3, 5, False), b"67890")
    assert r.status == 409, (r.status, r.headers, r.body)
    assert r.headers["upload-offset"] == "5"
    assert not is_complete(v, r)
    if v >= 6:
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = json.loads(r.body)
        assert problem["type"] == PROBLEM + "mismatching-upload-offset"
        assert problem["expected-offset"] == 5
        assert problem["provided-offset"] == 3
    assert int(head(url, v).headers["upload-offset"]) == 5


@pytest.mark.parametrize("v", VERSIONS)
def test_cancellation(server: ServerProcess, v: int) -> None:
    """'Upload Cancellation': DELETE -> 204 (-01..-08 required 204); the resource is gone."""
    url = create_empty(server, v)
    r = request(url, "DELETE", draft(v))
    assert r.status == 204
    assert head(url, v).status == 410  # a tombstone is kept
    info = httpx.get(f"{server.origin}/api/uploads/{url.rsplit('/', 1)[1]}", timeout=10)
    assert info.status_code == 200
    assert info.json()["state"] == "terminated"


@pytest.mark.parametrize("v", VERSIONS)
def test_unknown_upload_is_404(server: ServerProcess, v: int) -> None:
    """-01 'Offset Retrieving Procedure': an unknown upload resource -> 404."""
    assert head(server.url + "0" * 32, v).status == 404
    r = request(server.url + "0" * 32, "PATCH", append_headers(v, 0, 1, True), b"x")
    assert r.status == 404


@pytest.mark.parametrize("v", [3, 4, 5, 6, 7])
def test_head_with_offset_or_completeness_is_400(server: ServerProcess, v: int) -> None:
    """-01..-08 'Offset Retrieval': 'The request MUST NOT include an Upload-Offset or
    Upload-Incomplete [Upload-Complete] header field. The server MUST reject requests
    with either of these fields by responding with a 400 (Bad Request) status code.'"""
    url = create_empty(server, v)
    assert head(url, v, **{"Upload-Offset": "0"}).status == 400
    assert head(url, v, **completeness(v, False)).status == 400
    assert head(url, v).status == 204


@pytest.mark.parametrize("v", [6, 7, 8])
def test_append_needs_partial_upload_media_type(server: ServerProcess, v: int) -> None:
    """-04 'Upload Append': 'sending a PATCH request with the application/partial-upload
    media type'; anything else is not an append -> 415 Unsupported Media Type."""
    url = create_empty(server, v)
    headers = {**append_headers(v, 0, 3, True), "Content-Type": "application/octet-stream"}
    r = request(url, "PATCH", headers, b"abc")
    assert r.status == 415
    assert head(url, v).headers["upload-offset"] == "0"


@pytest.mark.parametrize("v", [3, 4, 5])
def test_append_before_v6_needs_no_media_type(server: ServerProcess, v: int) -> None:
    """-01..-03 define no media type for appends (URLSession iOS 17 / 18.0 send none)."""
    url = create_empty(server, v)
    r = request(url, "PATCH", append_headers(v, 0, 3, True), b"abc")
    assert r.status == 204, (r.status, r.headers, r.body)
    assert is_complete(v, r)


@pytest.mark.parametrize("v", [6, 7, 8])
def test_inconsistent_length(server: ServerProcess, v: int) -> None:
    """'Length': 'If indicators (1) and (2) are both present in the same request, their
    indicated lengths MUST match'; -06+: problem type inconsistent-upload-length."""
    r = request(server.url, "POST", {**draft(v), **completeness(v, True),
                                     "Upload-Length": "10"}, b"12345")
    assert r.status == 400, (r.status, r.headers, r.body)
    if v >= 7:
        assert json.loads(r.body)["type"] == PROBLEM + "inconsistent-upload-length"
    # A later request indicating another length than the recorded one.
    url = create_empty(server, v, **{"Upload-Length": "10"})
    r = request(url, "PATCH", {**append_headers(v, 0, 5, True)}, b"12345")
    assert r.status == 400, (r.status, r.headers, r.body)
    if v >= 7:
        assert json.loads(r.body)["type"] == PROBLEM + "inconsistent-upload-length"


@pytest.mark.parametrize("v", [6, 7, 8])
def test_appending_to_a_completed_upload_is_rejected(server: ServerProcess, v: int) -> None:
    """'If the upload is already complete, the server MUST NOT modify the upload resource
    and MUST reject the request' - content is 'an inconsistent length failure'."""
    r = request(server.url, "POST", {**draft(v), **completeness(v, True)}, b"done")
    url = r.headers["location"]
    r = request(url, "PATCH", append_headers(v, 4, 3, True), b"abc")
    assert r.status == 400
    assert head(url, v).headers["upload-offset"] == "4"


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("v", [6, 7, 8])
def test_limits_are_announced_and_enforced(
        start_server: Callable[..., ServerProcess], v: int) -> None:
    """'Limits': max-size from --max-size, the lifetime from --expiration (`expires` in
    -04/-05, `max-age` from -06), min-size=0 ('MUST announce', -09+); OPTIONS answers
    `Accept-Patch: application/partial-upload` and `Upload-Limit`; 'A server responding
    with a 413 ... as a result of its upload limits MUST include the Upload-Limit
    header'."""
    server = start_server("--max-size", "1000", "--expiration", "600")
    r = request(server.url, "OPTIONS", draft(v))
    assert r.status == 204
    assert "application/partial-upload" in r.headers["accept-patch"]
    check_limit(v, r, max_size=1000, expiration=600)

    url = create_empty(server, v)
    check_limit(v, head(url, v), max_size=1000, expiration=600)

    r = request(server.url, "POST", {**draft(v), **completeness(v, True),
                                     "Upload-Length": "2000", "Content-Length": "2000"})
    assert r.status == 413
    check_limit(v, r, max_size=1000)


# ------------------------------------------------------------------ version handling


def test_tus_and_draft_headers_together_are_400(server: ServerProcess) -> None:
    """A request is either tus (Tus-Resumable) or the draft, never both."""
    r = request(server.url, "POST", {**draft(8), **completeness(8, True),
                                     "Tus-Resumable": "1.0.0", "Upload-Length": "3"}, b"abc")
    assert r.status == 400
    assert b"Tus-Resumable" in r.body and b"Upload-Draft-Interop-Version" in r.body


def test_tus_requests_are_untouched(server: ServerProcess) -> None:
    """A tus upload on the same endpoint still speaks tus (and draft clients can read it)."""
    r = request(server.url, "POST", {"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
    assert r.status == 201 and r.headers["tus-resumable"] == "1.0.0"
    url = r.headers["location"]
    r = head(url, 8)
    assert r.status == 204 and r.headers["upload-offset"] == "0"
    assert "tus-resumable" not in r.headers
    assert request(server.url, "PUT", {"Tus-Resumable": "1.0.0"}).status == 405


def test_unknown_future_version_gets_no_104(server: ServerProcess) -> None:
    """'Draft Version Identification': 'Server implementations of draft versions of the
    protocol MUST NOT send a 104 (Upload Resumption Supported) informational response
    when the interop version ... is missing or mismatching.' The upload still succeeds
    as a plain one ('Upgrading To Resumable Uploads': the fallback)."""
    conn = RawConn(server.url)
    try:
        conn.send_head("POST", {**draft(99), "Upload-Complete": "?1", "Content-Length": "3"})
        conn.send_chunks([b"abc"])
        r = conn.read_response()
    finally:
        conn.close()
    assert r.status == 201  # the first response is final: no 104
    assert r.headers["upload-complete"] == "?1"


def test_pre_3_version_is_refused(server: ServerProcess) -> None:
    r = request(server.url, "POST", {**draft(2), "Upload-Incomplete": "?0"}, b"abc")
    assert r.status == 400
    assert b"3..8" in r.body


def test_104_precedes_100_continue(server: ServerProcess) -> None:
    """'Status Code 104': 'the server MUST NOT omit the 100 (Continue) response because
    it has sent an interim response with the 104 status code.'"""
    conn = RawConn(server.url)
    try:
        conn.send_head("POST", {**draft(8), "Upload-Complete": "?1", "Content-Length": "3",
                                "Expect": "100-continue"})
        first = conn.read_response(timeout=5)
        second = conn.read_response(timeout=5)
        assert (first.status, second.status) == (104, 100)
        conn.send_chunks([b"abc"])
        assert conn.read_response().status == 201
    finally:
        conn.close()


# ------------------------------------------------------------- URLSession-like flows


@pytest.mark.parametrize(("v", "ios"), [(3, "17"), (6, "18.1"), (8, "26")])
def test_urlsession_flow_with_lock_takeover(server: ServerProcess, v: int, ios: str) -> None:
    """What URLSession does (research §2.3): an 'optimistic upload creation' of the whole
    file (iOS 17: `Upload-Incomplete: ?0`; 18.1+: `Upload-Complete: ?1`; 26:
    plus `Upload-Length`), the network stalls without the server noticing, the client
    retrieves the offset and appends the rest. 'Concurrency': 'the server SHOULD ...
    terminate the previous request before processing the new request' and 'MUST NOT send
    outdated information in responses when retrieving the offset' - the stalled creation
    is made to save and let go, and the HEAD reports the saved offset."""
    data = Pattern(2 << 20, f"urlsession-{ios}").read()
    headers = {**draft(v), **completeness(v, True), "Content-Length": str(len(data)),
               "User-Agent": f"CFNetwork iOS/{ios}"}
    if v >= 8:
        headers["Upload-Length"] = str(len(data))
    stalled = RawConn(server.url)
    stalled.send_head("POST", headers)
    interim = stalled.read_response(timeout=5)
    assert interim.status == 104
    assert interim.headers["upload-draft-interop-version"] == str(v)
    url = interim.headers["location"]
    sent = stalled.send_chunks([data[: 1 << 20]])
    stalled.wait_delivered()  # the server has the first MiB; the connection stays open

    started = time.monotonic()
    r = head(url, v)
    assert time.monotonic() - started < 3, "HEAD waited for the stalled request's timeout"
    assert r.status == 204
    offset = int(r.headers["upload-offset"])
    assert 0 < offset <= sent
    assert not is_complete(v, r)
    # The stalled request ended (the server answered or closed it), it never writes again.
    with contextlib.suppress(OSError):
        stalled.wait_end(5)
    stalled.abort()

    r = request(url, "PATCH", append_headers(v, offset, len(data) - offset, True),
                data[offset:])
    assert r.status == 204, (r.status, r.headers, r.body)
    assert is_complete(v, r)
    assert_stored(server, url, data)


@pytest.mark.parametrize("protocol_v", [5, 6])
def test_tus_js_client_ietf_modes(server: ServerProcess, protocol_v: int) -> None:
    """tus-js-client 5 `protocol: 'ietf-draft-03'` sends interop version 5,
    `'ietf-draft-05'` sends 6: POST with `Upload-Length`, `Upload-Metadata`,
    `Upload-Complete: ?0`; PATCH with `Upload-Offset` (and, for 6,
    `Content-Type: application/partial-upload`); HEAD expects `Upload-Offset` and
    `Upload-Length`."""
    data = b"tus-js-client in ietf mode"
    url = create_empty(server, protocol_v, **{"Upload-Length": str(len(data)),
                                               "Upload-Metadata": "filename bm90ZS50eHQ="})
    r = head(url, protocol_v)
    assert (r.headers["upload-offset"], r.headers["upload-length"]) == ("0", str(len(data)))
    r = request(url, "PATCH", append_headers(protocol_v, 0, len(data), True), data)
    assert r.status == 204 and is_complete(protocol_v, r)
    assert_stored(server, url, data)


APP_SCRIPT = """
import sys, uvicorn
from tusd_py.app import create_app
from tusd_py.config import Settings
from pathlib import Path
http = sys.argv[3]
if http == "informational-h11":
    from tusd_py.http.informational import InformationalH11Protocol as http
uvicorn.run(create_app(Settings(upload_dir=Path(sys.argv[1]), dashboard=False)),
            host="127.0.0.1", port=int(sys.argv[2]), http=http, log_level="warning")
"""


@pytest.mark.parametrize(("http", "expect_104"), [
    ("httptools", False), ("h11", False), ("informational-h11", True)])
def test_104_depends_on_the_server_protocol(tmp_path: Path, http: str,
                                            expect_104: bool) -> None:
    """The app under stock uvicorn (no `tusd_py.informational` extension) still creates
    uploads, just without the 104 - the clean fallback; the h11 protocol subclass sends
    it like the httptools one `tusd-py serve` uses."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", APP_SCRIPT, str(tmp_path / "d"), str(port),
                             http])
    try:
        assert wait_listening(port, proc)
        conn = RawConn(f"http://127.0.0.1:{port}/files/")
        try:
            conn.send_head("POST", {**draft(8), "Upload-Complete": "?1",
                                    "Content-Length": "3"})
            conn.send_chunks([b"abc"])
            first = conn.read_response()
            final = conn.read_response() if first.status == 104 else first
        finally:
            conn.close()
        assert (first.status == 104) is expect_104
        if expect_104:
            assert first.headers["location"] == final.headers["location"]
            assert first.headers["upload-draft-interop-version"] == "8"
        assert final.status == 201
        assert (final.headers["upload-complete"], final.headers["upload-offset"]) == ("?1", "3")
    finally:
        proc.terminate()
        proc.wait(10)
