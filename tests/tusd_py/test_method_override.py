"""X-HTTP-Method-Override on POST: checklist 1.1 C6 (tus-js-client overridePatchMethod)."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import OFFSET_CT, TUS, create, head, offset_of


def override(
    client: httpx.Client,
    url: str,
    method: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    return client.post(
        url, headers={**TUS, "X-HTTP-Method-Override": method, **(headers or {})}, content=content
    )


def test_override_patch(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    r = override(client, loc, "PATCH", {"Content-Type": OFFSET_CT, "Upload-Offset": "0"}, b"abc")
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "3"
    assert offset_of(client, loc) == 3
    r = override(client, loc, "PATCH", {"Content-Type": OFFSET_CT, "Upload-Offset": "3"}, b"def")
    assert r.status_code == 204
    assert client.get(loc).content == b"abcdef"


def test_override_patch_lowercase(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    r = override(client, loc, "patch", {"Content-Type": OFFSET_CT, "Upload-Offset": "0"}, b"abc")
    assert r.status_code == 204


def test_override_patch_conflict(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    r = override(client, loc, "PATCH", {"Content-Type": OFFSET_CT, "Upload-Offset": "2"}, b"abc")
    assert r.status_code == 409
    assert r.headers["Upload-Offset"] == "0"


def test_override_patch_needs_tus_resumable(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    r = client.post(
        loc,
        headers={
            "X-HTTP-Method-Override": "PATCH",
            "Content-Type": OFFSET_CT,
            "Upload-Offset": "0",
        },
        content=b"abc",
    )
    assert r.status_code == 412
    assert offset_of(client, loc) == 0


def test_override_delete(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    r = override(client, loc, "DELETE")
    assert r.status_code == 204
    assert head(client, loc).status_code == 410


def test_override_head(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    r = override(client, loc, "HEAD")
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "6"
    assert "no-store" in r.headers["Cache-Control"]


def test_override_on_collection_creates_nothing_odd(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = override(client, mserver.url, "POST", {"Upload-Length": "3"})
    assert r.status_code == 201
    assert "Location" in r.headers


def test_get_with_override_is_not_a_delete(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    client.get(loc, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert head(client, loc).status_code == 200
