"""OPTIONS discovery (checklist 1.1 C1-C5, 1.2 O1-O3, 1.9 S1)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import ALL_EXTENSIONS, csv_set


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
