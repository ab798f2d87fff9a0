"""Browser CORS: checklist 1.13 X1-X4 (tus-js-client / Uppy requirements)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import OFFSET_CT, TUS, create, csv_set, patch

ORIGIN = "https://app.example"
ALLOW_METHODS = {"post", "head", "patch", "delete", "get", "options"}
ALLOW_HEADERS = {
    "upload-offset",
    "upload-length",
    "tus-resumable",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-checksum",
    "content-type",
    "x-http-method-override",
    "x-requested-with",
    "authorization",
}
EXPOSE_HEADERS = {
    "upload-offset",
    "location",
    "upload-length",
    "tus-version",
    "tus-resumable",
    "tus-max-size",
    "tus-extension",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
}


@pytest.fixture(scope="module")
def list_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--cors-origins", "https://a.example,https://b.example")


@pytest.fixture(scope="module")
def regex_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--cors-origins", r"re:https://.*\.example\.com")


def preflight(
    client: httpx.Client, url: str, origin: str = ORIGIN, method: str = "PATCH"
) -> httpx.Response:
    return client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type",
        },
    )


def assert_cors_actual(r: httpx.Response, origin: str = ORIGIN) -> None:
    assert r.headers.get("Access-Control-Allow-Origin") in (origin, "*"), r.headers
    assert csv_set(r.headers.get("Access-Control-Expose-Headers")) >= EXPOSE_HEADERS, r.headers


# --- preflight --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PATCH", "HEAD", "DELETE", "GET"])
def test_preflight_collection_and_resource(
    mserver: ServerProcess, client: httpx.Client, method: str
) -> None:
    for url in (mserver.url, mserver.url + "0" * 32):
        r = preflight(client, url, method=method)
        assert r.status_code == 200, (url, r.status_code)
        assert r.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
        assert csv_set(r.headers.get("Access-Control-Allow-Methods")) >= ALLOW_METHODS
        assert csv_set(r.headers.get("Access-Control-Allow-Headers")) >= ALLOW_HEADERS
        assert int(r.headers["Access-Control-Max-Age"]) > 0


def test_preflight_needs_no_tus_resumable_or_auth(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = preflight(client, mserver.url)
    assert r.status_code == 200  # a preflight


def test_preflight_on_existing_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = preflight(client, loc, method="PATCH")
    assert r.status_code == 200  # a preflight
    assert r.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


# --- actual requests ---------------------------------------------------------------------------


def test_cors_on_post(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "5", "Origin": ORIGIN})
    assert r.status_code == 201
    assert_cors_actual(r)


def test_cors_on_head_patch_get_delete(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    o = {"Origin": ORIGIN}
    r = client.head(loc, headers={**TUS, **o})
    assert r.status_code == 200
    assert_cors_actual(r)
    r = patch(client, loc, 0, b"abc", headers=o)
    assert r.status_code == 204
    assert_cors_actual(r)
    r = client.get(loc, headers=o)
    assert r.status_code == 200
    assert_cors_actual(r)
    r = client.delete(loc, headers={**TUS, **o})
    assert r.status_code == 204
    assert_cors_actual(r)


def test_cors_on_plain_options(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url, headers={"Origin": ORIGIN})
    assert r.status_code == 204  # not a preflight: the tus OPTIONS answer
    assert r.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


def test_cors_on_409(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = patch(client, loc, 5, b"abc", headers={"Origin": ORIGIN})
    assert r.status_code == 409
    assert_cors_actual(r)


def test_cors_on_412(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={"Upload-Length": "5", "Origin": ORIGIN})
    assert r.status_code == 412
    assert_cors_actual(r)


def test_cors_on_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.head(mserver.url + "0" * 32, headers={**TUS, "Origin": ORIGIN})
    assert r.status_code == 404
    assert_cors_actual(r)


def test_cors_on_400_and_415(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.post(mserver.url, headers={**TUS, "Origin": ORIGIN})
    assert r.status_code == 400
    assert_cors_actual(r)
    loc = create(client, mserver, 10)
    r = client.patch(
        loc,
        headers={**TUS, "Origin": ORIGIN, "Upload-Offset": "0", "Content-Type": "text/plain"},
        content=b"x",
    )
    assert r.status_code == 415
    assert_cors_actual(r)


def test_cors_on_413(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 2)
    r = client.patch(
        loc,
        headers={**TUS, "Origin": ORIGIN, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
        content=b"toolong",
    )
    assert r.status_code == 413
    assert_cors_actual(r)


def test_no_cors_headers_without_origin_needed(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(mserver.url, headers={**TUS, "Upload-Length": "5"})
    assert r.status_code == 201
    assert r.headers.get("Access-Control-Allow-Origin") in (None, "*")


# --- origin allow-list ---------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://a.example", "https://b.example"])
def test_list_allowed_origin_echoed(
    list_server: ServerProcess, client: httpx.Client, origin: str
) -> None:
    r = client.post(list_server.url, headers={**TUS, "Upload-Length": "1", "Origin": origin})
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "origin" in csv_set(r.headers.get("Vary"))
    assert csv_set(r.headers.get("Access-Control-Expose-Headers")) >= EXPOSE_HEADERS


def test_list_allowed_origin_preflight(list_server: ServerProcess, client: httpx.Client) -> None:
    r = preflight(client, list_server.url, origin="https://b.example")
    assert r.status_code == 200  # a preflight
    assert r.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "origin" in csv_set(r.headers.get("Vary"))
    assert csv_set(r.headers.get("Access-Control-Allow-Headers")) >= ALLOW_HEADERS


@pytest.mark.parametrize(
    "origin",
    ["https://c.example", "http://a.example", "https://a.example.evil", "null", "https://example"],
)
def test_list_disallowed_origin(
    list_server: ServerProcess, client: httpx.Client, origin: str
) -> None:
    r = preflight(client, list_server.url, origin=origin)
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.post(list_server.url, headers={**TUS, "Upload-Length": "1", "Origin": origin})
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://x.y.example.com"])
def test_regex_allowed_origin(
    regex_server: ServerProcess, client: httpx.Client, origin: str
) -> None:
    r = preflight(client, regex_server.url, origin=origin)
    assert r.status_code == 200  # a preflight
    assert r.headers["Access-Control-Allow-Origin"] == origin
    r = client.post(regex_server.url, headers={**TUS, "Upload-Length": "1", "Origin": origin})
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "origin" in csv_set(r.headers.get("Vary"))


@pytest.mark.parametrize(
    "origin",
    ["http://app.example.com", "https://example.com.evil.org", "https://app.example.com.evil"],
)
def test_regex_disallowed_origin(
    regex_server: ServerProcess, client: httpx.Client, origin: str
) -> None:
    r = preflight(client, regex_server.url, origin=origin)
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.post(regex_server.url, headers={**TUS, "Upload-Length": "1", "Origin": origin})
    assert "Access-Control-Allow-Origin" not in r.headers
