"""Concatenation / concatenation-unfinished: checklist 1.11 N1-N10, 1.13 X6, P19."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import (
    LOCATION_RE,
    OFFSET_CT,
    TUS,
    assert_error_body,
    b64,
    create,
    event_re,
    head,
    patch,
    upload_id,
    wait_log,
)


@pytest.fixture(scope="module")
def max_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--max-size", "10")


def partial(
    client: httpx.Client,
    srv: ServerProcess,
    data: bytes,
    *,
    finish: bool = True,
    metadata: str | None = None,
) -> str:
    loc = create(client, srv, len(data), headers={"Upload-Concat": "partial"}, metadata=metadata)
    if finish and data:
        assert patch(client, loc, 0, data).status_code == 204
    return loc


def final(
    client: httpx.Client, srv: ServerProcess, urls: list[str], **extra: str
) -> httpx.Response:
    h = {**TUS, "Upload-Concat": "final;" + " ".join(urls), **extra}
    return client.post(srv.url, headers=h)


def rel(loc: str) -> str:
    return "/files/" + upload_id(loc)


def test_partial_created(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "5", "Upload-Concat": "partial"})
    assert r.status_code == 201
    assert LOCATION_RE.match(r.headers["Location"])


def test_partial_head(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = partial(client, mserver, b"abc", finish=False)
    r = head(client, loc)
    assert r.status_code == 200
    assert r.headers["Upload-Concat"] == "partial"
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "3"
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = head(client, loc)
    assert r.headers["Upload-Concat"] == "partial"
    assert r.headers["Upload-Offset"] == "3"


def test_final_over_finished_partials(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"hello ")
    b = partial(client, mserver, b"world")
    r = final(client, mserver, [a, b])
    assert r.status_code == 201
    loc = r.headers["Location"]
    assert LOCATION_RE.match(loc)
    assert loc not in (a, b)
    h = head(client, loc)
    assert h.status_code == 200
    assert h.headers["Upload-Offset"] == "11"
    assert h.headers["Upload-Length"] == "11"
    assert h.headers["Upload-Concat"].startswith("final;")
    assert upload_id(a) in h.headers["Upload-Concat"]
    assert upload_id(b) in h.headers["Upload-Concat"]
    g = client.get(loc)
    assert g.status_code == 200
    assert g.content == b"hello world"


def test_final_head_concat_lists_urls_in_order(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    a = partial(client, mserver, b"1")
    b = partial(client, mserver, b"2")
    loc = final(client, mserver, [b, a]).headers["Location"]
    value = head(client, loc).headers["Upload-Concat"]
    urls = value.split(";", 1)[1].split()
    assert [u.rstrip("/").rsplit("/", 1)[-1] for u in urls] == [upload_id(b), upload_id(a)]
    assert client.get(loc).content == b"21"


def test_final_with_relative_urls(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    b = partial(client, mserver, b"def")
    r = final(client, mserver, [rel(a), rel(b)])
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).content == b"abcdef"


def test_final_with_mixed_urls(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    b = partial(client, mserver, b"def")
    r = final(client, mserver, [a, rel(b)])
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).content == b"abcdef"


def test_partial_used_twice_in_same_final(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"ab")
    b = partial(client, mserver, b"-")
    r = final(client, mserver, [a, b, a])
    assert r.status_code == 201
    loc = r.headers["Location"]
    h = head(client, loc)
    assert h.headers["Upload-Length"] == "5"
    assert h.headers["Upload-Offset"] == "5"
    assert client.get(loc).content == b"ab-ab"


def test_partial_used_in_two_finals(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"x")
    b = partial(client, mserver, b"y")
    f1 = final(client, mserver, [a, b])
    f2 = final(client, mserver, [b, a])
    assert f1.status_code == f2.status_code == 201
    assert client.get(f1.headers["Location"]).content == b"xy"
    assert client.get(f2.headers["Location"]).content == b"yx"


def test_final_single_partial(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"solo")
    r = final(client, mserver, [a])
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).content == b"solo"


def test_final_with_empty_partial(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"")
    b = partial(client, mserver, b"data")
    r = final(client, mserver, [a, b])
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).content == b"data"


def test_final_unknown_partial(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    r = final(client, mserver, [a, mserver.url + "0" * 32])
    assert r.status_code == 404
    assert "Location" not in r.headers


@pytest.mark.parametrize("value", ["final;", "final;,", "foo", "final", "partial;x", "FINAL;x"])
def test_invalid_upload_concat_400(
    mserver: ServerProcess, client: httpx.Client, value: str
) -> None:
    h = {**TUS, "Upload-Concat": value}
    if value.startswith("partial"):
        h["Upload-Length"] = "3"
    r = client.post(mserver.url, headers=h)
    assert r.status_code == 400, (value, r.status_code)
    assert "Location" not in r.headers
    assert_error_body(r)


def test_final_url_outside_base_path_400(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    uid = upload_id(a)
    for bad in (f"/other/{uid}", f"{mserver.origin}/other/{uid}", f"/api/uploads/{uid}"):
        r = final(client, mserver, [bad])
        assert r.status_code == 400, (bad, r.status_code)
        assert "Location" not in r.headers


@pytest.mark.parametrize(
    "bad",
    [
        "/files/../../etc/passwd",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "../../etc/passwd",
        "/files/%2e%2e",
        "/etc/passwd",
    ],
)
def test_final_traversal_rejected(mserver: ServerProcess, client: httpx.Client, bad: str) -> None:
    r = final(client, mserver, [bad])
    assert r.status_code == 400, (bad, r.status_code)  # not an upload URL of this server
    assert "Location" not in r.headers


def test_final_over_non_partial_upload_rejected(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    plain = create(client, mserver, 3)
    assert patch(client, plain, 0, b"abc").status_code == 204
    r = final(client, mserver, [plain])
    assert r.status_code == 400
    assert "Location" not in r.headers


def test_patch_final_403(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    loc = final(client, mserver, [a]).headers["Location"]
    r = patch(client, loc, 3, b"more")
    assert r.status_code == 403
    assert_error_body(r)
    r = patch(client, loc, 0, b"x")
    assert r.status_code == 403
    assert client.get(loc).content == b"abc"
    assert client.get(a).content == b"abc"


def test_partial_metadata_not_copied(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc", metadata=f"filename {b64('part.bin')}")
    loc = final(client, mserver, [a]).headers["Location"]
    assert "Upload-Metadata" not in head(client, loc).headers


def test_final_own_metadata(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc", metadata=f"filename {b64('part.bin')}")
    meta = f"filename {b64('whole.bin')}"
    loc = final(client, mserver, [a], **{"Upload-Metadata": meta}).headers["Location"]
    assert head(client, loc).headers["Upload-Metadata"] == meta


def test_final_over_max_size_413(max_server: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, max_server, b"123456")
    b = partial(client, max_server, b"789012")
    r = final(client, max_server, [a, b])
    assert r.status_code == 413
    assert "Location" not in r.headers


def test_final_at_max_size_ok(max_server: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, max_server, b"12345")
    b = partial(client, max_server, b"67890")
    r = final(client, max_server, [a, b])
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).content == b"1234567890"


# --- concatenation-unfinished -----------------------------------------------------------------


def test_final_over_unfinished_partials(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc", finish=False)
    b = partial(client, mserver, b"def", finish=False)
    r = final(client, mserver, [a, b])
    assert r.status_code == 201
    loc = r.headers["Location"]
    h = head(client, loc)
    assert h.status_code == 200
    assert h.headers["Upload-Concat"].startswith("final;")
    assert "Upload-Offset" not in h.headers
    assert client.get(loc).status_code == 404

    assert patch(client, a, 0, b"abc").status_code == 204
    h = head(client, loc)
    assert "Upload-Offset" not in h.headers

    assert patch(client, b, 0, b"def").status_code == 204
    wait_log(mserver, event_re("upload.concatenated", upload_id(loc)))
    h = head(client, loc)
    assert h.headers["Upload-Offset"] == "6"
    assert h.headers["Upload-Length"] == "6"
    assert client.get(loc).content == b"abcdef"


def test_final_over_unfinished_in_chunks(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"12", finish=True)
    b = partial(client, mserver, b"3456", finish=False)
    loc = final(client, mserver, [a, b, a]).headers["Location"]
    assert patch(client, b, 0, b"34").status_code == 204
    assert "Upload-Offset" not in head(client, loc).headers
    assert patch(client, b, 2, b"56").status_code == 204
    wait_log(mserver, event_re("upload.concatenated", upload_id(loc)))
    assert head(client, loc).headers.get("Upload-Offset") == "8"
    assert client.get(loc).content == b"12345612"


def test_patch_unfinished_final_403(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc", finish=False)
    loc = final(client, mserver, [a]).headers["Location"]
    r = patch(client, loc, 0, b"abc")
    assert r.status_code == 403
    assert "Upload-Offset" not in head(client, loc).headers


def test_final_with_body_403(mserver: ServerProcess, client: httpx.Client) -> None:
    a = partial(client, mserver, b"abc")
    r = client.post(
        mserver.url,
        headers={**TUS, "Upload-Concat": f"final;{a}", "Content-Type": OFFSET_CT},
        content=b"zzz",
    )
    assert r.status_code == 403
    assert "Location" not in r.headers


def test_delete_partial_of_finished_final_keeps_final(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    a = partial(client, mserver, b"abc")
    loc = final(client, mserver, [a]).headers["Location"]
    assert client.delete(a, headers=TUS).status_code == 204
    assert client.get(loc).content == b"abc"
