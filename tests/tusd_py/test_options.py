"""OPTIONS discovery (checklist 1.1 C1-C5, 1.2 O1-O3, 1.9 S1)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import ALL_EXTENSIONS, TUS, assert_error_body, csv_set, patch


def test_options_204_with_tus_version(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url)
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.content == b""


def test_options_advertises_all_extensions(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url)
    assert csv_set(r.headers.get("Tus-Extension")) == ALL_EXTENSIONS


def test_options_does_not_advertise_checksum_trailer(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.options(mserver.url)
    assert "checksum-trailer" not in csv_set(r.headers.get("Tus-Extension"))


def test_options_checksum_algorithms(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url)
    raw = r.headers["Tus-Checksum-Algorithm"]
    algos = {a.strip() for a in raw.split(",")}
    assert {"sha1", "md5", "sha256", "sha512"} <= algos
    assert all(a == a.lower() for a in algos), raw


def test_options_no_max_size_when_unlimited(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url)
    assert "Tus-Max-Size" not in r.headers


def test_options_ignores_missing_tus_resumable(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.options(mserver.url, headers={})
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"


def test_options_ignores_unsupported_tus_resumable(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    r = client.options(mserver.url, headers={"Tus-Resumable": "0.0.1"})
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert csv_set(r.headers.get("Tus-Extension")) == ALL_EXTENSIONS


def test_options_needs_no_authorization(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url, headers={"Authorization": "Bearer bogus"})
    assert r.status_code == 204


def test_options_tus_resumable_value_if_sent(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.options(mserver.url)
    assert r.headers.get("Tus-Resumable", "1.0.0") == "1.0.0"


def test_options_with_max_size(
    server_factory: Callable[..., ServerProcess], client: httpx.Client
) -> None:
    srv = server_factory("--max-size", "1048576")
    r = client.options(srv.url)
    assert r.status_code == 204
    assert r.headers["Tus-Max-Size"] == "1048576"


def test_options_max_size_zero_means_unlimited(
    server_factory: Callable[..., ServerProcess], client: httpx.Client
) -> None:
    srv = server_factory("--max-size", "0")
    r = client.options(srv.url)
    assert "Tus-Max-Size" not in r.headers


def test_options_without_expiration(
    server_factory: Callable[..., ServerProcess], client: httpx.Client
) -> None:
    srv = server_factory("--expiration", "0")
    r = client.options(srv.url)
    assert csv_set(r.headers.get("Tus-Extension")) == ALL_EXTENSIONS - {"expiration"}


# --- cross-cutting: Tus-Resumable and error bodies on every kind of response ------------------


def _responses(srv: ServerProcess, c: httpx.Client) -> dict[str, httpx.Response]:
    """One response of each status the protocol produces, keyed by a label."""
    out: dict[str, httpx.Response] = {}
    out["201"] = c.post(srv.url, headers={**TUS, "Upload-Length": "3"})
    loc = out["201"].headers["Location"]
    out["200 HEAD"] = c.head(loc, headers=TUS)
    out["409"] = patch(c, loc, 1, b"x")
    out["415"] = patch(c, loc, 0, b"x", headers={"Content-Type": "text/plain"})
    out["400"] = c.post(srv.url, headers=TUS)
    out["412"] = c.post(srv.url, headers={"Upload-Length": "3"})
    out["404"] = patch(c, srv.url + "0" * 32, 0, b"x")
    out["460"] = patch(
        c, loc, 0, b"abc", headers={"Upload-Checksum": "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    )
    out["413"] = patch(c, loc, 0, b"abcd")
    out["204 PATCH"] = patch(c, loc, 0, b"abc")
    part = c.post(srv.url, headers={**TUS, "Upload-Length": "1", "Upload-Concat": "partial"})
    fin = c.post(srv.url, headers={**TUS, "Upload-Concat": "final;" + part.headers["Location"]})
    out["403"] = patch(c, fin.headers["Location"], 0, b"x")
    out["204 DELETE"] = c.delete(loc, headers=TUS)
    out["410"] = c.head(loc, headers=TUS)
    return out


def test_tus_resumable_on_every_response(mserver: ServerProcess, client: httpx.Client) -> None:
    for label, r in _responses(mserver, client).items():
        assert r.status_code == int(label.split()[0]), (label, r.status_code, r.text)
        assert r.headers.get("Tus-Resumable") == "1.0.0", label


def test_error_bodies_are_one_line_plain_text(mserver: ServerProcess, client: httpx.Client) -> None:
    for r in _responses(mserver, client).values():
        if r.status_code >= 400 and r.request.method != "HEAD":
            assert_error_body(r)
