"""Download (GET) of finished uploads: not in tus 1.0, but part of the server contract.

Checklist 1.12 M3 (header smuggling through metadata) and pain point P12 (RFC 5987 names).
"""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import b64, create, patch, raw_request, upload_id


def _finished(
    client: httpx.Client, srv: ServerProcess, data: bytes, metadata: str | None = None
) -> str:
    loc = create(client, srv, len(data), metadata=metadata)
    if data:
        assert patch(client, loc, 0, data).status_code == 204
    return loc


def test_get_finished_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(70_000)
    loc = _finished(client, mserver, data)
    r = client.get(loc)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Type"].startswith("application/octet-stream")


def test_get_does_not_need_tus_resumable(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"abc")
    r = client.get(loc, headers={})
    assert r.status_code == 200
    assert r.content == b"abc"


def test_get_response_has_tus_resumable(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"abc")
    assert client.get(loc).headers["Tus-Resumable"] == "1.0.0"


def test_get_content_type_from_filetype(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"\x89PNG", metadata=f"filetype {b64('image/png')}")
    r = client.get(loc)
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0].strip() == "image/png"


def test_get_ascii_filename_disposition(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"abc", metadata=f"filename {b64('report.pdf')}")
    cd = client.get(loc).headers["Content-Disposition"]
    assert "report.pdf" in cd


@pytest.mark.parametrize("name", ["słońce.pdf", "日本語.txt", "emoji 🎉.png"])
def test_get_unicode_filename_rfc5987(
    mserver: ServerProcess, client: httpx.Client, name: str
) -> None:
    loc = _finished(client, mserver, b"abc", metadata=f"filename {b64(name)}")
    r = client.get(loc)
    assert r.status_code == 200
    cd = r.headers["Content-Disposition"]
    assert "filename*=UTF-8''" + quote(name, safe="") in cd, cd


def test_get_filename_with_quotes_and_crlf_is_safe(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    name = 'a"b\r\nX-Evil: 1\r\n.txt'
    loc = _finished(client, mserver, b"abc", metadata=f"filename {b64(name)}")
    raw = raw_request(mserver, "GET", "/files/" + upload_id(loc))
    assert raw.status == 200
    assert "x-evil" not in raw.headers
    assert raw.body == b"abc"


def test_get_filetype_header_injection_is_safe(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    ftype = "text/html\r\nX-Evil: 1"
    loc = _finished(client, mserver, b"abc", metadata=f"filetype {b64(ftype)}")
    raw = raw_request(mserver, "GET", "/files/" + upload_id(loc))
    assert raw.status == 200
    assert "x-evil" not in raw.headers
    assert "\r" not in raw.headers.get("content-type", "")


def test_get_range(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"0123456789")
    r = client.get(loc, headers={"Range": "bytes=2-5"})
    assert r.status_code == 206
    assert r.content == b"2345"
    assert r.headers["Content-Range"] == "bytes 2-5/10"
    assert r.headers["Content-Length"] == "4"


def test_get_range_open_ended(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"0123456789")
    r = client.get(loc, headers={"Range": "bytes=7-"})
    assert r.status_code == 206
    assert r.content == b"789"
    assert r.headers["Content-Range"] == "bytes 7-9/10"


def test_get_range_suffix(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"0123456789")
    r = client.get(loc, headers={"Range": "bytes=-3"})
    assert r.status_code == 206
    assert r.content == b"789"
    assert r.headers["Content-Range"] == "bytes 7-9/10"


def test_get_range_end_past_size_is_clamped(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"0123456789")
    r = client.get(loc, headers={"Range": "bytes=8-100"})
    assert r.status_code == 206
    assert r.content == b"89"
    assert r.headers["Content-Range"] == "bytes 8-9/10"


def test_get_range_unsatisfiable_416(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = _finished(client, mserver, b"0123456789")
    r = client.get(loc, headers={"Range": "bytes=20-30"})
    assert r.status_code == 416
    assert b"0123" not in r.content


def test_get_unfinished_upload_404(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert patch(client, loc, 0, b"secret").status_code == 204
    r = client.get(loc)
    assert r.status_code == 404
    assert b"secret" not in r.content


def test_get_deferred_upload_404(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    assert patch(client, loc, 0, b"secret").status_code == 204
    r = client.get(loc)
    assert r.status_code == 404
    assert b"secret" not in r.content


def test_get_unknown_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.get(mserver.url + "d" * 32)
    assert r.status_code == 404


def test_get_empty_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 0)
    r = client.get(loc)
    assert r.status_code == 200
    assert r.content == b""


@pytest.mark.parametrize(
    "target", ["/files/..%2F..%2Fetc%2Fpasswd", "/files/%2e%2e", "/files/..%5c..%5cetc%5cpasswd"]
)
def test_get_traversal_404(mserver: ServerProcess, target: str) -> None:
    raw = raw_request(mserver, "GET", target)
    assert raw.status == 404
    assert b"root:" not in raw.body


def test_get_traversal_to_file_outside_dir(mserver: ServerProcess) -> None:
    victim = mserver.upload_dir.parent / "victim-get"
    victim.write_bytes(b"TOPSECRET")
    for target in ("/files/..%2Fvictim-get", "/files/%2e%2e%2fvictim-get"):
        raw = raw_request(mserver, "GET", target)
        assert raw.status == 404
        assert b"TOPSECRET" not in raw.body
