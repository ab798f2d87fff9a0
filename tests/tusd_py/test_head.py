"""HEAD (offset retrieval): checklist 1.3 H1-H7, 1.1 C2, 1.13 X6."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import TUS, create, head, patch, raw_request, upload_id


def test_head_200_headers(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 42)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "42"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert "no-store" in r.headers["Cache-Control"]
    assert "Upload-Defer-Length" not in r.headers
    assert r.content == b""


def test_head_has_no_body_on_the_wire(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 42)
    req = (
        f"HEAD /files/{upload_id(loc)} HTTP/1.1\r\nHost: 127.0.0.1:{mserver.port}\r\n"
        "Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"
    ).encode()
    data = b""
    with socket.create_connection(("127.0.0.1", mserver.port), timeout=5) as sock:
        sock.sendall(req)
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200")
    assert b"\r\nupload-offset: 0" in head_part.lower()
    assert rest == b""


def test_head_reports_progress(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert patch(client, loc, 0, b"1234").status_code == 204
    r = head(client, loc)
    assert r.headers["Upload-Offset"] == "4"
    assert r.headers["Upload-Length"] == "10"


def test_head_complete_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "3"
    assert r.headers["Upload-Length"] == "3"
    assert "no-store" in r.headers["Cache-Control"]


def test_head_deferred_length(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in r.headers
    assert r.headers["Upload-Offset"] == "0"


def test_head_unknown_upload_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = head(client, mserver.url + "0" * 32)
    assert r.status_code == 404
    assert "Upload-Offset" not in r.headers
    assert r.headers["Tus-Resumable"] == "1.0.0"


def test_head_unknown_nonhex_id_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = head(client, mserver.url + "does-not-exist")
    assert r.status_code == 404
    assert "Upload-Offset" not in r.headers


def test_head_without_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = client.head(loc)
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert "Upload-Offset" not in r.headers


def test_head_wrong_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    r = client.head(loc, headers={"Tus-Resumable": "0.2.2"})
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"


def test_head_terminated_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5)
    assert client.delete(loc, headers=TUS).status_code == 204
    r = head(client, loc)
    assert r.status_code == 410
    assert "Upload-Offset" not in r.headers


def test_head_with_metadata(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 5, metadata="filename Zm9vLnR4dA==")
    assert head(client, loc).headers["Upload-Metadata"] == "filename Zm9vLnR4dA=="


def test_head_is_not_cached_twice(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 4)
    assert head(client, loc).headers["Upload-Offset"] == "0"
    assert patch(client, loc, 0, b"ab").status_code == 204
    assert head(client, loc).headers["Upload-Offset"] == "2"


@pytest.mark.parametrize(
    "target",
    [
        "/files/../etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2e%2e",
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/files/..",
        "/files/%00",
        "/files/abc%00def",
        "/files/..%5c..%5cetc",
        "/files/%252e%252e%252fetc",
        "/files/" + "a" * 31 + "%2Fx",
        "/files/" + "a" * 31 + "%2F..%2F..%2Fetc",
        "/files/" + "A" * 32,
    ],
)
def test_head_bad_ids_404(mserver: ServerProcess, target: str) -> None:
    raw = raw_request(mserver, "HEAD", target, headers=TUS)
    assert raw.status == 404, (target, raw.status)
    assert "upload-offset" not in raw.headers


def test_head_traversal_to_existing_file_outside_dir(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    outside: Path = mserver.upload_dir.parent / "victim.info"
    outside.write_text('{"size": 1, "offset": 1}')
    for target in ("/files/..%2Fvictim", "/files/..%2Fvictim.info", "/files/%2e%2e%2fvictim"):
        raw = raw_request(mserver, "HEAD", target, headers=TUS)
        assert raw.status == 404, (target, raw.status)
        assert "upload-offset" not in raw.headers
    assert outside.exists()
