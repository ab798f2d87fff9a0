"""PATCH (append): checklist 1.4 P1-P11, 1.7 D3-D5, 1.1 C2/C7."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import wait_delivered
from tests.tusd_py.helpers import (
    OFFSET_CT,
    TUS,
    LogWatch,
    assert_error_body,
    create,
    event_re,
    head,
    now_utc,
    offset_of,
    parse_http_date,
    patch,
    raw_request,
    read_response,
    upload_id,
    wait_log,
)


@pytest.fixture(scope="module")
def mserver(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """The shared default, logging at debug level: `upload.patch` marks a PATCH that holds
    its upload (the event a test waits for before interfering with it)."""
    return server_factory("--network-timeout", "3", "--log-level", "debug")


@pytest.fixture(scope="module")
def max_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--max-size", "100", "--network-timeout", "3")


def chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


# --- success --------------------------------------------------------------------------------


def test_patch_204_with_offset(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 11)
    r = patch(client, loc, 0, b"hello")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "5"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.content == b""


def test_patch_multiple_chunks_then_get(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 11)
    assert patch(client, loc, 0, b"hello").headers["Upload-Offset"] == "5"
    assert patch(client, loc, 5, b" ").headers["Upload-Offset"] == "6"
    r = patch(client, loc, 6, b"world")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "11"
    assert client.get(loc).content == b"hello world"


def test_patch_many_small_chunks(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(1000)
    loc = create(client, mserver, len(data))
    for off in range(0, len(data), 97):
        r = patch(client, loc, off, data[off : off + 97])
        assert r.status_code == 204, (off, r.status_code)
    assert offset_of(client, loc) == len(data)
    assert client.get(loc).content == data


def test_patch_large_body(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    loc = create(client, mserver, len(data))
    r = patch(client, loc, 0, data)
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(len(data))
    assert client.get(loc).content == data


def test_patch_empty_body_keeps_offset(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = patch(client, loc, 0, b"")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "0"


def test_patch_has_upload_expires_when_unfinished(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 10)
    r = patch(client, loc, 0, b"12")
    assert r.status_code == 204
    assert parse_http_date(r.headers["Upload-Expires"]) > now_utc()


def test_patch_chunked_transfer_encoding(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 9)
    r = patch(client, loc, 0, chunks(b"abc", b"def", b"ghi"))
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "9"
    assert client.get(loc).content == b"abcdefghi"


# --- Content-Type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype", ["application/octet-stream", "text/plain", "application/offset+octet-streamx"]
)
def test_patch_wrong_content_type_415(
    mserver: ServerProcess, client: httpx.Client, ctype: str
) -> None:
    loc = create(client, mserver, 5)
    r = patch(client, loc, 0, b"abc", headers={"Content-Type": ctype})
    assert r.status_code == 415
    assert_error_body(r)
    assert offset_of(client, loc) == 0


def test_patch_missing_content_type_415(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = client.patch(loc, headers={**TUS, "Upload-Offset": "0"}, content=b"abc")
    assert r.status_code == 415
    assert offset_of(client, loc) == 0


# --- Upload-Offset --------------------------------------------------------------------------


def test_patch_missing_offset_400(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = client.patch(loc, headers={**TUS, "Content-Type": OFFSET_CT}, content=b"abc")
    assert r.status_code == 400
    assert_error_body(r)
    assert offset_of(client, loc) == 0


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "+0", "", "0x0", "1e0"])
def test_patch_invalid_offset_400(mserver: ServerProcess, client: httpx.Client, value: str) -> None:
    loc = create(client, mserver, 5)
    r = patch(client, loc, 0, b"abc", headers={"Upload-Offset": value})
    assert r.status_code == 400, (value, r.status_code)
    assert offset_of(client, loc) == 0


@pytest.mark.parametrize("value", ["\u0660", "\uff10"])
def test_patch_non_ascii_digit_offset_400(
    mserver: ServerProcess, client: httpx.Client, value: str
) -> None:
    loc = create(client, mserver, 5)
    wire = value.encode("utf-8").decode("latin-1")
    raw = raw_request(
        mserver,
        "PATCH",
        "/files/" + upload_id(loc),
        headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": wire},
        body=b"abc",
    )
    assert raw.status == 400
    assert offset_of(client, loc) == 0


def test_patch_offset_mismatch_409(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert patch(client, loc, 0, b"abc").status_code == 204
    for wrong in (0, 2, 4, 10):
        r = patch(client, loc, wrong, b"zz")
        assert r.status_code == 409, wrong
        assert r.headers["Upload-Offset"] == "3"
        assert r.headers["Tus-Resumable"] == "1.0.0"
        assert_error_body(r)
    assert offset_of(client, loc) == 3
    assert patch(client, loc, 3, b"defghij").status_code == 204
    assert client.get(loc).content == b"abcdefghij"


def test_patch_replay_of_same_chunk_409(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 4)
    assert patch(client, loc, 0, b"ab").status_code == 204
    r = patch(client, loc, 0, b"ab")
    assert r.status_code == 409
    assert r.headers["Upload-Offset"] == "2"


# --- Tus-Resumable ----------------------------------------------------------------------------


def test_patch_without_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = client.patch(loc, headers={"Content-Type": OFFSET_CT, "Upload-Offset": "0"}, content=b"abc")
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert offset_of(client, loc) == 0


def test_patch_unsupported_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = patch(client, loc, 0, b"abc", headers={"Tus-Resumable": "0.2.2"})
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert offset_of(client, loc) == 0


# --- size limits ------------------------------------------------------------------------------


def test_patch_past_length_413(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = patch(client, loc, 0, b"0123456789")
    assert r.status_code == 413
    assert_error_body(r)
    h = head(client, loc)
    assert int(h.headers["Upload-Offset"]) <= 5
    assert h.headers["Upload-Length"] == "5"


def test_patch_past_length_after_progress_413(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = patch(client, loc, 3, b"defg")
    assert r.status_code == 413
    off = offset_of(client, loc)
    assert 3 <= off <= 5
    if off == 5:
        assert client.get(loc).content == b"abcde"


def test_patch_chunked_past_length_413(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = patch(client, loc, 0, chunks(b"abc", b"def", b"ghi" * 1000))
    assert r.status_code == 413
    off = offset_of(client, loc)
    assert off <= 5
    if off == 5:
        assert client.get(loc).content == b"abcde"


def test_patch_content_length_over_remaining_413_before_body(mserver: ServerProcess) -> None:
    with httpx.Client(timeout=10) as c:
        loc = create(c, mserver, 10)
    uid = upload_id(loc)
    req = (
        f"PATCH /files/{uid} HTTP/1.1\r\nHost: 127.0.0.1:{mserver.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: {OFFSET_CT}\r\nUpload-Offset: 0\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=2.0) as sock:
        sock.sendall(req)
        started = time.monotonic()
        resp = read_response(sock)  # no body sent: the answer must not wait for it
    assert resp.status == 413
    assert time.monotonic() - started < 2.0
    with httpx.Client(timeout=10) as c:
        assert offset_of(c, loc) == 0


def test_patch_finished_upload_empty_body_204(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = patch(client, loc, 3, b"")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "3"
    assert client.get(loc).content == b"abc"


def test_patch_finished_upload_with_data_413(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = patch(client, loc, 3, b"d")
    assert r.status_code == 413
    assert offset_of(client, loc) == 3
    assert client.get(loc).content == b"abc"


def test_patch_unknown_upload_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = patch(client, mserver.url + "f" * 32, 0, b"abc")
    assert r.status_code == 404
    assert "Upload-Offset" not in r.headers
    assert_error_body(r)


def test_patch_traversal_id_404(mserver: ServerProcess, client: httpx.Client) -> None:
    victim = mserver.upload_dir.parent / "victim-patch"
    victim.write_bytes(b"keep")
    for target in ("..%2Fvictim-patch", "%2e%2e%2fvictim-patch", "..%5cvictim-patch"):
        r = patch(client, mserver.url + target, 0, b"evil")
        assert r.status_code == 404, (target, r.status_code)
    assert victim.read_bytes() == b"keep"


# --- deferred length --------------------------------------------------------------------------


def test_deferred_patch_without_length(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    r = patch(client, loc, 0, b"abc")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "3"
    h = head(client, loc)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in h.headers


def test_deferred_declare_length_in_patch(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"abc", headers={"Upload-Length": "6"}).status_code == 204
    h = head(client, loc)
    assert h.headers["Upload-Length"] == "6"
    assert "Upload-Defer-Length" not in h.headers
    assert h.headers["Upload-Offset"] == "3"
    assert patch(client, loc, 3, b"def").status_code == 204
    assert client.get(loc).content == b"abcdef"


def test_deferred_declare_on_final_chunk_completes(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = patch(client, loc, 3, b"def", headers={"Upload-Length": "6"})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "6"
    h = head(client, loc)
    assert h.headers["Upload-Length"] == "6"
    assert h.headers["Upload-Offset"] == "6"
    assert client.get(loc).content == b"abcdef"


def test_deferred_declare_after_final_chunk_empty_patch(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"abcdef").status_code == 204
    r = patch(client, loc, 6, b"", headers={"Upload-Length": "6"})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "6"
    assert head(client, loc).headers["Upload-Length"] == "6"
    assert client.get(loc).content == b"abcdef"


def test_deferred_length_cannot_change(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"ab", headers={"Upload-Length": "10"}).status_code == 204
    r = patch(client, loc, 2, b"cd", headers={"Upload-Length": "11"})
    assert r.status_code == 400
    h = head(client, loc)
    assert h.headers["Upload-Length"] == "10"
    assert h.headers["Upload-Offset"] == "2"


def test_upload_length_on_fixed_upload_cannot_change(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 10)
    r = patch(client, loc, 0, b"ab", headers={"Upload-Length": "11"})
    assert r.status_code == 400
    assert head(client, loc).headers["Upload-Length"] == "10"
    assert offset_of(client, loc) == 0


def test_deferred_length_below_offset_400(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"abcd").status_code == 204
    r = patch(client, loc, 4, b"", headers={"Upload-Length": "3"})
    assert r.status_code == 400
    h = head(client, loc)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert h.headers["Upload-Offset"] == "4"


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_deferred_invalid_length_400(
    mserver: ServerProcess, client: httpx.Client, value: str
) -> None:
    loc = create(client, mserver, defer=True)
    r = patch(client, loc, 0, b"ab", headers={"Upload-Length": value})
    assert r.status_code == 400
    assert head(client, loc).headers["Upload-Defer-Length"] == "1"


def test_deferred_body_over_declared_length_413(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, defer=True)
    r = patch(client, loc, 0, b"abcdef", headers={"Upload-Length": "4"})
    assert r.status_code == 413  # the length is declared, then the body exceeds it
    assert offset_of(client, loc) == 0


def test_deferred_length_over_max_413(max_server: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, max_server, defer=True)
    r = patch(client, loc, 0, b"ab", headers={"Upload-Length": "101"})
    assert r.status_code == 413
    h = head(client, loc)
    assert h.headers["Upload-Defer-Length"] == "1"
    assert h.headers["Upload-Offset"] == "0"


def test_deferred_body_over_max_413(max_server: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, max_server, defer=True)
    r = patch(client, loc, 0, b"x" * 150)
    assert r.status_code == 413
    assert offset_of(client, loc) <= 100


def test_deferred_chunked_body_over_max_413(
    max_server: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, max_server, defer=True)
    r = patch(client, loc, 0, chunks(b"x" * 60, b"y" * 60, b"z" * 60))
    assert r.status_code == 413
    assert offset_of(client, loc) <= 100


def test_fixed_body_with_max_size(max_server: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, max_server, 100)
    r = patch(client, loc, 0, b"x" * 100)
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "100"


# --- Expect: 100-continue and interrupted bodies ----------------------------------------------


def _patch_head(srv: ServerProcess, uid: str, offset: int, length: int, extra: str = "") -> bytes:
    return (
        f"PATCH /files/{uid} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: {OFFSET_CT}\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_patch_expect_continue_conflict_answers_without_100(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 1_000_000)
    uid = upload_id(loc)
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=2.0) as sock:
        sock.sendall(_patch_head(mserver, uid, 5, 1_000_000, "Expect: 100-continue\r\n"))
        resp = read_response(sock)
    assert resp.status == 409
    assert resp.headers["upload-offset"] == "0"


def test_patch_expect_continue_success(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    uid = upload_id(loc)
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=5.0) as sock:
        sock.sendall(_patch_head(mserver, uid, 0, 5, "Expect: 100-continue\r\n"))
        first = read_response(sock, head_only=True)
        assert first.status == 100
        sock.sendall(b"hello")
        final = read_response(sock)
    assert final.status == 204
    assert final.headers["upload-offset"] == "5"


def test_patch_interrupted_body_keeps_received_bytes(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    data = os.urandom(1_000_000)
    sent = 300_000
    loc = create(client, mserver, len(data))
    uid = upload_id(loc)
    log = LogWatch(mserver)
    sock = socket.create_connection(("127.0.0.1", mserver.port), timeout=5.0)
    sock.sendall(_patch_head(mserver, uid, 0, len(data)) + data[:sent])
    # A client that dies mid-body, once the server has read what it sent. (A chunk the
    # server has buffered but not yet handed on when the peer goes is dropped: hence 90%.)
    wait_delivered(sock)
    sock.close()
    log.wait_event("upload.interrupted", uid)
    off = offset_of(client, loc)
    assert int(sent * 0.9) <= off <= sent
    r = patch(client, loc, off, data[off:])
    assert r.status_code == 204
    assert client.get(loc).content == data


def test_patch_stalled_body_times_out_and_keeps_bytes(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    """mserver runs with --network-timeout 3."""
    data = os.urandom(200_000)
    sent = 50_000
    loc = create(client, mserver, len(data))
    uid = upload_id(loc)
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=10.0) as sock:
        sock.sendall(_patch_head(mserver, uid, 0, len(data)) + data[:sent])
        started = time.monotonic()
        try:
            resp = read_response(sock)
            assert resp.status != 204
        except (ConnectionError, OSError):
            pass
        assert 2.0 < time.monotonic() - started < 9.0
    wait_log(mserver, event_re("upload.interrupted", uid))  # it has saved what it received
    assert offset_of(client, loc) == sent
    assert patch(client, loc, sent, data[sent:]).status_code == 204
    assert client.get(loc).content == data


def test_head_during_stalled_patch_is_prompt(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(200_000)
    sent = 50_000
    loc = create(client, mserver, len(data))
    uid = upload_id(loc)
    log = LogWatch(mserver)
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=10.0) as sock:
        sock.sendall(_patch_head(mserver, uid, 0, len(data)) + data[:sent])
        log.wait_event("upload.patch", uid)  # the stalled PATCH holds the upload now
        started = time.monotonic()
        r = head(client, loc)
        assert time.monotonic() - started < 2.5
        assert r.status_code == 200
        off = int(r.headers["Upload-Offset"])
        assert 0 <= off <= sent
    # The HEAD took the lock, so the stalled PATCH saved its bytes and let go: once it has
    # ended, the offset announced by HEAD must be accepted by the next PATCH.
    log.wait(rf"\srequest\.done\s(?=.*\bupload_id={uid}\b).*\bmethod=PATCH\b")
    r = patch(client, loc, off, data[off:])
    assert r.status_code == 204, (r.status_code, r.text)
    assert client.get(loc).content == data
