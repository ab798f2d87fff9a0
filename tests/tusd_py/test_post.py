"""Creation (POST): checklist 1.1 C1/C2/C7, 1.5 K1-K8, 1.6 W1-W4, 1.7 D2, 1.12 M1-M4."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import (
    LOCATION_RE,
    OFFSET_CT,
    TUS,
    api_state,
    assert_error_body,
    b64,
    create,
    event_re,
    files_under,
    head,
    now_utc,
    parse_http_date,
    raw_request,
    read_response,
    upload_id,
    wait_log,
)


@pytest.fixture(scope="module")
def max_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--max-size", "100")


# --- Tus-Resumable -----------------------------------------------------------------------


def test_post_without_tus_resumable_is_412(mserver: ServerProcess, client: httpx.Client) -> None:
    before = files_under(mserver.upload_dir)
    r = client.post(mserver.url, headers={"Upload-Length": "10"})
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert "Location" not in r.headers
    assert files_under(mserver.upload_dir) == before


@pytest.mark.parametrize("version", ["0.2.2", "1.0", "2.0.0", "foo", ""])
def test_post_with_unsupported_tus_resumable_is_412(
    mserver: ServerProcess, client: httpx.Client, version: str
) -> None:
    before = files_under(mserver.upload_dir)
    r = client.post(mserver.url, headers={"Tus-Resumable": version, "Upload-Length": "10"})
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert "Location" not in r.headers
    assert files_under(mserver.upload_dir) == before


def test_412_has_tus_resumable_and_error_body(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={"Upload-Length": "10"})
    assert r.status_code == 412
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert_error_body(r)


# --- success ---------------------------------------------------------------------------


def test_post_201_location(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    assert r.headers["Tus-Resumable"] == "1.0.0"
    m = LOCATION_RE.match(r.headers["Location"])
    assert m, r.headers["Location"]
    assert r.headers["Location"].startswith(mserver.url)


def test_post_location_uses_host_header(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url, headers={**TUS, "Upload-Length": "10", "Host": "uploads.example:8080"}
    )
    assert r.status_code == 201
    loc = r.headers["Location"]
    assert loc.startswith("http://uploads.example:8080/files/"), loc
    upload_id(loc)


def test_post_locations_are_unique(mserver: ServerProcess, client: httpx.Client) -> None:
    locs = {create(client, mserver, 1) for _ in range(5)}
    assert len(locs) == 5


def test_post_new_upload_has_offset_zero(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "10"


def test_post_upload_expires_imf_fixdate(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    expires = parse_http_date(r.headers["Upload-Expires"])
    assert expires > now_utc()


def test_post_ignores_non_tus_content_type_without_body(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
        r = client.post(
            mserver.url,
            headers={**TUS, "Upload-Length": "10", "Content-Type": ctype, "Content-Length": "0"},
        )
        assert r.status_code == 201, (ctype, r.status_code, r.text)
        assert head(client, r.headers["Location"]).headers["Upload-Offset"] == "0"


def test_post_zero_length_is_complete_immediately(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 0)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "0"
    uid = upload_id(loc)
    # Complete with its creation (its processing may have begun, or ended).
    assert api_state(client, mserver, uid) in {"completed", "processing", "processed"}
    wait_log(mserver, event_re("processing.done", uid))
    assert api_state(client, mserver, uid) == "processed"


def test_post_zero_length_get_is_empty(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 0)
    r = client.get(loc)
    assert r.status_code == 200
    assert r.content == b""


# --- Upload-Length / Upload-Defer-Length validation ---------------------------------------


def test_post_neither_length_nor_defer_is_400(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers=TUS)
    assert r.status_code == 400
    assert "Location" not in r.headers
    assert_error_body(r)


def test_post_both_length_and_defer_is_400(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "10", "Upload-Defer-Length": "1"})
    assert r.status_code == 400
    assert "Location" not in r.headers


@pytest.mark.parametrize("value", ["0", "2", "true", "yes", "-1", ""])
def test_post_invalid_defer_length_is_400(
    mserver: ServerProcess, client: httpx.Client, value: str
) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Defer-Length": value})
    assert r.status_code == 400
    assert "Location" not in r.headers


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "+5", "", "0x10", "1e3", "10 10"])
def test_post_invalid_upload_length_is_400(
    mserver: ServerProcess, client: httpx.Client, value: str
) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": value})
    assert r.status_code == 400, (value, r.status_code)
    assert "Location" not in r.headers
    assert_error_body(r)


@pytest.mark.parametrize("value", ["\u0661\u0662", "\uff11\uff12", "\u00b2"])
def test_post_non_ascii_digits_upload_length_400(mserver: ServerProcess, value: str) -> None:
    wire = value.encode("utf-8").decode("latin-1")
    raw = raw_request(mserver, "POST", "/files/", headers={**TUS, "Upload-Length": wire})
    assert raw.status == 400
    assert "location" not in raw.headers


def test_post_defer_length_201(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in r.headers
    assert r.headers["Upload-Offset"] == "0"


def test_post_huge_upload_length_without_limit(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 2**62)
    assert head(client, loc).headers["Upload-Length"] == str(2**62)


# --- max size ----------------------------------------------------------------------------


def test_post_at_max_size_is_201(max_server: ServerProcess, client: httpx.Client) -> None:
    r = client.post(max_server.url, headers={**TUS, "Upload-Length": "100"})
    assert r.status_code == 201


def test_post_over_max_size_is_413(max_server: ServerProcess, client: httpx.Client) -> None:
    before = files_under(max_server.upload_dir)
    r = client.post(max_server.url, headers={**TUS, "Upload-Length": "101"})
    assert r.status_code == 413
    assert "Location" not in r.headers
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert_error_body(r)
    assert files_under(max_server.upload_dir) == before


def test_post_way_over_max_size_is_413(max_server: ServerProcess, client: httpx.Client) -> None:
    r = client.post(max_server.url, headers={**TUS, "Upload-Length": str(2**70)})
    assert r.status_code == 400  # more than 19 digits is no valid Upload-Length at all


# --- creation-with-upload -----------------------------------------------------------------


def test_creation_with_upload_partial_body(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "10", "Content-Type": OFFSET_CT},
        content=b"hello",
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "5"
    loc = r.headers["Location"]
    assert LOCATION_RE.match(loc)
    h = head(client, loc)
    assert h.headers["Upload-Offset"] == "5"
    assert h.headers["Upload-Length"] == "10"


def test_creation_with_upload_complete_body(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "11", "Content-Type": OFFSET_CT},
        content=b"hello world",
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "11"
    g = client.get(r.headers["Location"])
    assert g.status_code == 200
    assert g.content == b"hello world"


def test_creation_with_upload_empty_body(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "10", "Content-Type": OFFSET_CT},
        content=b"",
    )
    assert r.status_code == 201
    assert r.headers.get("Upload-Offset", "0") == "0"


def test_creation_with_upload_body_too_big_is_413(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "3", "Content-Type": OFFSET_CT},
        content=b"too long",
    )
    assert r.status_code == 413


def test_creation_with_upload_deferred(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Defer-Length": "1", "Content-Type": OFFSET_CT},
        content=b"abc",
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "3"
    h = head(client, r.headers["Location"])
    assert h.headers["Upload-Offset"] == "3"
    assert h.headers["Upload-Defer-Length"] == "1"


def test_creation_with_upload_chunked_body(mserver: ServerProcess, client: httpx.Client) -> None:
    def gen() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "6", "Content-Type": OFFSET_CT},
        content=gen(),
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "6"
    assert client.get(r.headers["Location"]).content == b"abcdef"


# --- Upload-Metadata -----------------------------------------------------------------------


def _meta_roundtrip(client: httpx.Client, srv: ServerProcess, meta: str) -> str | None:
    loc = create(client, srv, 1, metadata=meta)
    r = head(client, loc)
    assert r.status_code == 200
    value: str | None = r.headers.get("Upload-Metadata")
    return value


def _parse_meta(value: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        out[parts[0]] = parts[1] if len(parts) > 1 else None
    return out


def test_metadata_echoed_byte_exact(mserver: ServerProcess, client: httpx.Client) -> None:
    meta = f"filename {b64('world_domination_plan.pdf')},is_confidential"
    assert _meta_roundtrip(client, mserver, meta) == meta


def test_metadata_unicode_roundtrip(mserver: ServerProcess, client: httpx.Client) -> None:
    meta = f"filename {b64('słońce.pdf')},title {b64('日本語 🎉')}"
    assert _meta_roundtrip(client, mserver, meta) == meta


def test_metadata_non_utf8_value_roundtrip(mserver: ServerProcess, client: httpx.Client) -> None:
    blob = bytes([0xFF, 0xFE, 0x00, 0x80])
    meta = f"blob {b64(blob)},x {b64(bytes([0xC3]))}"
    assert _meta_roundtrip(client, mserver, meta) == meta


def test_metadata_key_only_stays_key_only(mserver: ServerProcess, client: httpx.Client) -> None:
    echoed = _meta_roundtrip(client, mserver, "flag")
    assert echoed == "flag"


def test_metadata_single_pair(mserver: ServerProcess, client: httpx.Client) -> None:
    meta = f"filetype {b64('image/png')}"
    assert _meta_roundtrip(client, mserver, meta) == meta


def test_metadata_ows_around_commas_accepted(mserver: ServerProcess, client: httpx.Client) -> None:
    meta = f"a {b64('1')} , b {b64('2')},  c"
    echoed = _meta_roundtrip(client, mserver, meta)
    assert echoed is not None
    assert _parse_meta(echoed) == {"a": b64("1"), "b": b64("2"), "c": None}


def test_metadata_empty_header_accepted(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "1", "Upload-Metadata": ""})
    assert r.status_code == 201
    h = head(client, r.headers["Location"])
    assert h.status_code == 200
    assert h.headers.get("Upload-Metadata", "") == ""


def test_metadata_absent_means_no_header(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 1)
    assert "Upload-Metadata" not in head(client, loc).headers


@pytest.mark.parametrize(
    "meta",
    [
        "name !!!!",
        "name Zm9v!",
        "name Zm9v Zm9v",
        f"name {b64('a')},name {b64('b')}",
        "name,name",
    ],
)
def test_metadata_invalid_is_400(mserver: ServerProcess, client: httpx.Client, meta: str) -> None:
    before = files_under(mserver.upload_dir)
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "1", "Upload-Metadata": meta})
    assert r.status_code == 400, (meta, r.status_code)
    assert "Location" not in r.headers
    assert_error_body(r)
    assert files_under(mserver.upload_dir) == before


def test_metadata_empty_value_with_key(mserver: ServerProcess, client: httpx.Client) -> None:
    echoed = _meta_roundtrip(client, mserver, f"empty,full {b64('x')}")
    assert echoed is not None
    assert _parse_meta(echoed) == {"empty": None, "full": b64("x")}


def test_post_response_has_no_upload_offset_without_body(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "5"})
    assert r.status_code == 201
    assert r.headers.get("Upload-Offset", "0") == "0"


def test_creation_with_upload_deferred_over_max_413(
    max_server: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(
        max_server.url,
        headers={**TUS, "Upload-Defer-Length": "1", "Content-Type": OFFSET_CT},
        content=b"x" * 150,
    )
    assert r.status_code == 413


def test_post_expect_continue_rejected_before_body(max_server: ServerProcess) -> None:
    req = (
        f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{max_server.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Length: 1000\r\nContent-Type: {OFFSET_CT}\r\n"
        "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", max_server.port), timeout=2.0) as sock:
        sock.sendall(req)
        resp = read_response(sock)
    assert resp.status == 413
    assert "location" not in resp.headers


def test_post_expect_continue_success(mserver: ServerProcess) -> None:
    req = (
        f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{mserver.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nUpload-Length: 5\r\nContent-Type: {OFFSET_CT}\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=5.0) as sock:
        sock.sendall(req)
        first = read_response(sock, head_only=True)
        assert first.status == 100
        sock.sendall(b"hello")
        resp = read_response(sock)
    assert resp.status == 201
    assert resp.headers["upload-offset"] == "5"


def test_completed_upload_api_state(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Length": "3", "Content-Type": OFFSET_CT},
        content=b"abc",
    )
    uid = upload_id(r.headers["Location"])
    # Complete before the 201 (its processing may have begun, or ended).
    assert api_state(client, mserver, uid) in {"completed", "processing", "processed"}
    wait_log(mserver, event_re("processing.done", uid))
    assert api_state(client, mserver, uid) == "processed"


# --- a small upload whose whole body comes with its creation --------------------------------
# Its bytes are stored before its record: the record is written once, already complete.


def _upload_files(srv: ServerProcess) -> list[str]:
    return [p.name for p in files_under(srv.upload_dir) if "final" not in p.parts]


def test_small_creation_with_upload_is_processed(
        mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "6", "Content-Type": OFFSET_CT,
                                          "Upload-Metadata": f"filename {b64('s.txt')}"},
                    content=b"small!")
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "6"
    assert "Upload-Expires" not in r.headers  # finished: it no longer expires
    uid = upload_id(r.headers["Location"])
    h = head(client, r.headers["Location"])
    assert (h.headers["Upload-Offset"], h.headers["Upload-Length"]) == ("6", "6")
    # The completion was queued with the record (Redis: in the same script): it is processed.
    wait_log(mserver, event_re("processing.done", uid), timeout=15)
    assert api_state(client, mserver, uid) == "processed"


def test_small_creation_with_bad_checksum_leaves_nothing(
        server_factory: Callable[..., ServerProcess], client: httpx.Client) -> None:
    srv = server_factory("--no-processing")
    r = client.post(srv.url, headers={**TUS, "Upload-Length": "5", "Content-Type": OFFSET_CT,
                                      "Upload-Checksum": f"sha1 {b64(b'0' * 20)}"},
                    content=b"bytes")
    assert r.status_code == 460
    assert "Location" not in r.headers
    assert_error_body(r)
    assert _upload_files(srv) == []


def test_small_creation_cut_mid_body_leaves_nothing(
        server_factory: Callable[..., ServerProcess], client: httpx.Client) -> None:
    srv = server_factory("--no-processing")
    head_lines = (f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Length: 1000\r\nContent-Type: {OFFSET_CT}\r\n"
                  f"Content-Length: 1000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(head_lines + b"x" * 400)
    # The server notices the disconnect and creates nothing: no Location was ever sent.
    wait_log(srv, "ERR_BODY_INCOMPLETE")
    assert _upload_files(srv) == []
    assert client.get(f"{srv.origin}/api/uploads").json()["uploads"] == []
