"""Location generation behind reverse proxies: checklist 1.5 K8, 1.13 X5."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import ID_RE, TUS


@pytest.fixture(scope="module")
def proxy_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--behind-proxy")


def location(client: httpx.Client, srv: ServerProcess, **extra: str) -> str:
    headers = {**TUS, "Upload-Length": "1", **{k.replace("_", "-"): v for k, v in extra.items()}}
    r = client.post(srv.url, headers=headers)
    assert r.status_code == 201, r.text
    loc = r.headers["Location"]
    assert ID_RE.match(loc.rsplit("/", 1)[-1]), loc
    return loc.rsplit("/", 1)[0] + "/"


@pytest.mark.parametrize(
    "headers",
    [
        {"X_Forwarded_Host": "evil.example", "X_Forwarded_Proto": "https"},
        {"Forwarded": "host=evil.example;proto=https"},
        {"X_Forwarded_Host": "evil.example"},
    ],
)
def test_forwarded_ignored_by_default(
    mserver: ServerProcess, client: httpx.Client, headers: dict[str, str]
) -> None:
    assert location(client, mserver, **headers) == mserver.url


def test_x_forwarded_host_and_proto(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(
        client, proxy_server, X_Forwarded_Host="tus.example.org", X_Forwarded_Proto="https"
    )
    assert base == "https://tus.example.org/files/"


def test_x_forwarded_host_only(proxy_server: ServerProcess, client: httpx.Client) -> None:
    assert location(client, proxy_server, X_Forwarded_Host="tus.example.org") == (
        "http://tus.example.org/files/"
    )


def test_x_forwarded_proto_only(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(client, proxy_server, X_Forwarded_Proto="https")
    assert base == f"https://127.0.0.1:{proxy_server.port}/files/"


def test_x_forwarded_host_with_port(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(
        client, proxy_server, X_Forwarded_Host="tus.example.org:8443", X_Forwarded_Proto="https"
    )
    assert base == "https://tus.example.org:8443/files/"


def test_forwarded_header(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(client, proxy_server, Forwarded="host=tus.example.org;proto=https")
    assert base == "https://tus.example.org/files/"


def test_forwarded_header_quoted(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(
        client, proxy_server, Forwarded='for=192.0.2.1;host="tus.example.org";proto="https"'
    )
    assert base == "https://tus.example.org/files/"


def test_forwarded_header_case_and_spaces(
    proxy_server: ServerProcess, client: httpx.Client
) -> None:
    base = location(client, proxy_server, Forwarded="Proto=https; Host=tus.example.org")
    assert base == "https://tus.example.org/files/"


def test_forwarded_first_element_wins(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(
        client,
        proxy_server,
        Forwarded="host=first.example;proto=https, host=second.example;proto=http",
    )
    assert base == "https://first.example/files/"


def test_forwarded_beats_x_forwarded(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(
        client,
        proxy_server,
        Forwarded="host=fwd.example;proto=https",
        X_Forwarded_Host="xfh.example",
        X_Forwarded_Proto="http",
    )
    assert base == "https://fwd.example/files/"


@pytest.mark.parametrize("proto", ["aaa", "ftp", "javascript"])
def test_bad_x_forwarded_proto_ignored(
    proxy_server: ServerProcess, client: httpx.Client, proto: str
) -> None:
    base = location(
        client, proxy_server, X_Forwarded_Host="tus.example.org", X_Forwarded_Proto=proto
    )
    assert base == "http://tus.example.org/files/"


def test_bad_forwarded_proto_ignored(proxy_server: ServerProcess, client: httpx.Client) -> None:
    base = location(client, proxy_server, Forwarded="host=tus.example.org;proto=aaa")
    assert base == "http://tus.example.org/files/"


@pytest.mark.parametrize(
    ("host", "proto", "expected"),
    [
        ("tus.example.org:443", "https", "https://tus.example.org/files/"),
        ("tus.example.org:80", "http", "http://tus.example.org/files/"),
        ("tus.example.org:80", "https", "https://tus.example.org:80/files/"),
        ("tus.example.org:443", "http", "http://tus.example.org:443/files/"),
    ],
)
def test_default_ports_stripped(
    proxy_server: ServerProcess, client: httpx.Client, host: str, proto: str, expected: str
) -> None:
    assert location(client, proxy_server, X_Forwarded_Host=host, X_Forwarded_Proto=proto) == (
        expected
    )
    assert location(client, proxy_server, Forwarded=f"host={host};proto={proto}") == expected


def test_no_forwarded_headers_behind_proxy(
    proxy_server: ServerProcess, client: httpx.Client
) -> None:
    assert location(client, proxy_server) == proxy_server.url


def test_created_location_is_usable_via_real_url(
    proxy_server: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(
        proxy_server.url,
        headers={**TUS, "Upload-Length": "1", "X-Forwarded-Host": "tus.example.org"},
    )
    uid = r.headers["Location"].rsplit("/", 1)[-1]
    h = client.head(proxy_server.url + uid, headers=TUS)
    assert h.status_code == 200
    assert h.headers["Upload-Offset"] == "0"
